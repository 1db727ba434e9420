// `kexo run` re-executes itself once, keeping its pid, with JavaScriptCore's heap sized for
// 192 MiB (BUN_JSC_forceRAMSize) so a draining worker stays small; an operator's value is kept.
import { afterAll, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { RAM_SIZE_ENV, WORKER_RAM_BYTES } from "../src/memory/heap-sizing.ts";
import { tempDir } from "./support/tmp.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const dir = tempDir("kexo-heap-");
const workers: WorkerProcess[] = [];
afterAll(() => {
  for (const w of workers) w.kill();
});

async function start(env: Record<string, string>): Promise<WorkerProcess> {
  await Bun.write(
    join(dir, "handlers", "noop.ts"),
    `import { defineHandler, v } from "kexo";
export default defineHandler({ topics: ["heap-in"], schema: v.object({}), async handle() {} });`,
  );
  // No broker is needed: the variable is set before the worker connects anywhere.
  const w = new WorkerProcess(runArgs("127.0.0.1:1", join(dir, "handlers"), join(dir, `${workers.length}.db`)), { env });
  workers.push(w);
  await w.httpAddress();
  return w;
}

const environOf = (pid: number) => readFileSync(`/proc/${pid}/environ`, "utf8").split("\0");

test("the worker that serves HTTP is the spawned pid, with the heap sized for 192 MiB", async () => {
  expect(process.env[RAM_SIZE_ENV]).toBeUndefined();
  const w = await start({});
  expect(environOf(w.proc.pid)).toContain(`${RAM_SIZE_ENV}=${WORKER_RAM_BYTES}`);
});

test("an operator's BUN_JSC_forceRAMSize is left as set", async () => {
  const w = await start({ [RAM_SIZE_ENV]: String(1024 * 2 ** 20) });
  expect(environOf(w.proc.pid)).toContain(`${RAM_SIZE_ENV}=${1024 * 2 ** 20}`);
});
