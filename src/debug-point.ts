// Named crash points for tests (as dbos's debugpoint): with KEXO_CRASH_AT=NAME the process kills
// itself with SIGKILL at its KEXO_CRASH_AFTER-th pass (default 1) through crashPoint(NAME), so a
// test can pin a failure window exactly. Costs one comparison when the variable is unset.
const target = process.env.KEXO_CRASH_AT;
const after = Number(process.env.KEXO_CRASH_AFTER ?? 1);
let hits = 0;

export function crashPoint(name: string): void {
  if (target !== name) return;
  if (++hits >= after) process.kill(process.pid, "SIGKILL");
}
