// Every error kexo raises on purpose: a code for scripts, an exit code for main.ts, and a message
// that says what failed, the ids involved, the cause, and what to do.

export const ExitCode = {
  ok: 0,
  bug: 1,
  usage: 64,
  unavailable: 69,
  invariant: 70,
  transient: 75,
  config: 78,
} as const;

export class KexoError extends Error {
  readonly code: string;
  readonly exitCode: number;
  /** Fields a `--json` answer carries beside `error` (`{"id":…,"found":false}` of an id not found). */
  readonly json?: Record<string, unknown>;
  constructor(code: string, message: string, opts: { exitCode?: number; cause?: unknown; json?: Record<string, unknown> } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = "KexoError";
    this.code = code;
    this.exitCode = opts.exitCode ?? ExitCode.bug;
    this.json = opts.json;
  }
}

/** One problem in config or a handler file, printed as `path: message`. */
export interface Problem {
  path: string;
  message: string;
}

/** Invalid config or handler definitions: every problem is listed, exit 78. */
export class ConfigError extends KexoError {
  readonly problems: Problem[];
  constructor(problems: Problem[]) {
    super("invalid_config", problems.map((p) => `${p.path}: ${p.message}`).join("\n"), {
      exitCode: ExitCode.config,
    });
    this.name = "ConfigError";
    this.problems = problems;
  }
}

export class UsageError extends KexoError {
  constructor(message: string, json?: Record<string, unknown>) {
    super("usage", message, { exitCode: ExitCode.usage, json });
    this.name = "UsageError";
  }
}

/** The handler says: do not retry, dead-letter now (reason `permanent`). */
export class PermanentError extends Error {
  constructor(message: string, opts?: { cause?: unknown }) {
    super(message, opts);
    this.name = "PermanentError";
  }
}

/** The message can't be decoded or validated for its handler (reason `poison`). */
export class PoisonError extends Error {
  constructor(message: string, opts?: { cause?: unknown }) {
    super(message, opts);
    this.name = "PoisonError";
  }
}

/**
 * `read()` as a string, or `fallback` when it throws or gives no string. A handler may throw
 * anything (a null-prototype object, an Error whose message getter throws, whose name is a
 * Symbol): describing it must never fail the worker.
 */
function described(read: () => unknown, fallback: string): string {
  try {
    const v = read();
    return typeof v === "string" ? v : fallback;
  } catch {
    return fallback;
  }
}

export function errorMessage(err: unknown): string {
  if (err instanceof Error) return described(() => err.message, "(an Error whose message is not a string)");
  return described(() => String(err), `(a thrown ${typeof err} that has no text)`);
}

/** `s` in at most `max` UTF-8 bytes, cut before a character (never inside one), "..." marking a cut. */
export function capBytes(s: string, max: number): string {
  if (s.length * 3 <= max) return s;
  const b = Buffer.from(s);
  if (b.length <= max) return s;
  let end = Math.max(0, max - 3);
  while (end > 0 && (b[end]! & 0xc0) === 0x80) end--;
  return `${b.subarray(0, end).toString()}...`;
}

export function errorType(err: unknown): string {
  if (err instanceof Error) return described(() => err.name || err.constructor?.name || "Error", "Error");
  return typeof err;
}

/** An Error's stack when it is a string (reading it may throw, or give anything). */
export function errorStack(err: unknown): string | undefined {
  if (!(err instanceof Error)) return undefined;
  const stack = described(() => err.stack, "");
  return stack === "" ? undefined : stack;
}
