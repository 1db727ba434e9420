// See abort-guard.c: a mock broker thread's abort() parks that thread instead of ending the test
// process. Installed once per test process by preload.ts.
import { cc } from "bun:ffi";
import { join } from "node:path";

let parked: (() => number) | undefined;

export function installAbortGuard(): void {
  if (parked) return;
  try {
    const { symbols } = cc({
      source: join(import.meta.dir, "abort-guard.c"),
      symbols: { guard_install: { args: [], returns: "int" }, guard_parked: { args: [], returns: "int" } },
    });
    if (symbols.guard_install() === 0) parked = () => symbols.guard_parked();
  } catch (err) {
    // No TinyCC for this platform: an abort ends the process, as it did before the guard.
    process.stderr.write(`tests: abort guard not installed (${(err as Error).message})\n`);
  }
}

/** A broker thread was parked: that broker cannot be closed (its destroy would wait for the thread forever). */
export function brokerThreadParked(): boolean {
  return (parked?.() ?? 0) > 0;
}
