// Temporary directories for tests, removed at process exit.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const made: string[] = [];
process.on("exit", () => {
  if (process.env.KEXO_KEEP_TMP) return;
  for (const d of made) rmSync(d, { recursive: true, force: true });
});

export function tempDir(prefix = "kexo-test-"): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  made.push(d);
  return d;
}

/** The records of a JSON-lines file (a log handlers append to), in order. */
export function readJsonLines<T>(path: string): T[] {
  return readFileSync(path, "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l) as T);
}
