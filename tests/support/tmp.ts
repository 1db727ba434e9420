// Temporary directories for tests, removed when the test file ends (tests/support/preload.ts;
// set KEXO_KEEP_TMP=1 to keep them for a look after a failure), or at exit in plain bun scripts.
// bun test fires no process "exit" event, so that hook alone never ran under it: each full run
// used to leave ~600 directories in /tmp.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const made: string[] = [];

/** Removes every directory tempDir made in this process so far, unless KEXO_KEEP_TMP is set. */
export function removeTempDirs(): void {
  if (process.env.KEXO_KEEP_TMP) return;
  for (const d of made.splice(0)) rmSync(d, { recursive: true, force: true });
}
// Plain bun scripts that use these helpers (bench/) do get an exit event.
process.on("exit", removeTempDirs);

export function tempDir(prefix = "kexo-test-"): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  made.push(d);
  return d;
}

/** The records of a JSON-lines file (a log handlers append to), in order. */
export function readJsonLines<T>(path: string): T[] {
  return readFileSync(path, "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l) as T);
}

/**
 * A fresh calls log in `dir`: test handlers append one JSON line per call to process.env.CALLS_LOG
 * (`env`, to pass to the worker). `calls(id)`: the lines so far, only those of `id` when given.
 */
export function callsLog<T extends { id: string } = { id: string; attempt: number }>(dir: string): { env: { CALLS_LOG: string }; calls(id?: string): T[] } {
  const path = join(dir, "calls.log");
  writeFileSync(path, "");
  return {
    env: { CALLS_LOG: path },
    calls: (id) => readJsonLines<T>(path).filter((c) => id === undefined || c.id === id),
  };
}
