// Sizes JavaScriptCore's heap for a small worker, not for the host: `kexo run` re-executes itself
// once (same pid, arguments and stdio) with BUN_JSC_forceRAMSize set, unless the operator set it.
//
// Why: JSC scales its heap growth to the RAM it sees. On a 24 GiB host, draining a backlog left
// RSS at ~145–155 MiB even with the GC pacer; told the host has 256 MiB, JSC collects earlier
// and RSS stayed at ~125–130 MiB with the same throughput (bench/memory.ts). At ≈ 70k msg/s
// (three times the allocation rate) 256 MiB peaked at 156 MiB; 192 MiB at 145 MiB. It is a sizing hint,
// not a limit: a handler that keeps 700 MiB of objects still gets them. JSC reads the variable
// once, before any JavaScript runs, so setting it from inside the process needs this re-exec.
export const RAM_SIZE_ENV = "BUN_JSC_forceRAMSize";
export const WORKER_RAM_BYTES = 192 * 2 ** 20;

/** The argv that starts this same program again: the binary, Bun's own flags and the script when run from sources. */
function selfArgv(): string[] {
  const script = process.argv[1] ?? "";
  // A compiled binary's script lives in Bun's embedded file system; the binary alone starts it.
  if (script.startsWith("/$bunfs/") || script.startsWith("B:/~BUN/")) return [process.execPath, ...process.argv.slice(2)];
  return [process.execPath, ...process.execArgv, ...process.argv.slice(1)];
}

/**
 * Replaces this process with itself, JSC sized for WORKER_RAM_BYTES, and never returns; returns
 * without doing anything when the variable is already set (by the operator, or by the re-exec)
 * or outside Bun (Deno runs the sources; it has no such knob).
 */
export function execWithWorkerHeap(): void {
  const bun = (globalThis as { Bun?: unknown }).Bun;
  const execve = (process as { execve?: (file: string, args: string[], env: Record<string, string | undefined>) => never }).execve;
  if (!bun || !execve || process.env[RAM_SIZE_ENV] !== undefined) return;
  const argv = selfArgv();
  execve(argv[0]!, argv, { ...process.env, [RAM_SIZE_ENV]: String(WORKER_RAM_BYTES) });
}
