// Human and script output on stdout (logs go to stderr as JSON lines).
import { ConfigError, errorMessage, ExitCode, KexoError } from "../errors.ts";

export function printLine(line: string): void {
  process.stdout.write(line + "\n");
}

export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value, (_k, v) => (typeof v === "bigint" ? v.toString() : v)) + "\n");
}

export function table(rows: Record<string, unknown>[], columns: string[]): string {
  const widths = columns.map((c) => Math.max(c.length, ...rows.map((r) => String(r[c] ?? "").length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd();
  return [line(columns.map((c) => c.toUpperCase())), ...rows.map((r) => line(columns.map((c) => String(r[c] ?? ""))))].join("\n");
}

/** `1 dead letter`, `3 dead letters`. */
export function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

/**
 * The one object a `--json` command prints on stdout when it fails:
 * `{"error":{"exitCode","code","message","problems"?}}`, beside the error's own fields (such as
 * `"found":false`), so a script reading stdout learns why too.
 */
export function printJsonError(err: unknown, bug: string): void {
  const known = err instanceof KexoError;
  const error = {
    exitCode: known ? err.exitCode : ExitCode.bug,
    code: known ? err.code : "bug",
    message: known ? err.message : `${bug}: ${errorMessage(err)}`,
    problems: err instanceof ConfigError ? err.problems : undefined,
  };
  printJson({ ...(known ? err.json : undefined), error });
}
