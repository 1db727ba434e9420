// One stop request delivered twice (GNU timeout and npm forward a signal their process group got
// too) drains as one: the repeat of the same signal within a moment is not the "second signal"
// that exits at once. tests/stuck-handler pins that a later second signal still exits at once.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { callsLog } from "./support/tmp.ts";
import { waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "sr-in";
let broker: TestBroker;
let dir: string;

const HANDLER = `
import { defineHandler } from "kexo";
import { appendFileSync } from "node:fs";
export default defineHandler({
  topics: ["${TOPIC}"],
  async handle(value, ctx) {
    appendFileSync(process.env.CALLS_LOG, JSON.stringify({ id: "started-" + value, attempt: ctx.attempt }) + "\\n");
    await new Promise((r) => setTimeout(r, 1500));
    appendFileSync(process.env.CALLS_LOG, JSON.stringify({ id: "finished-" + value, attempt: ctx.attempt }) + "\\n");
  },
});
`;

withBroker({ [TOPIC]: 1 }, { "sr.ts": HANDLER }, (f) => ({ broker, dir } = f));

test.each(["SIGINT", "SIGTERM"] as const)("%s delivered twice at once drains the message in flight and exits 0", async (sig) => {
  const { env, calls } = callsLog(dir);
  const w = new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), join(dir, `${sig}.db`)), { env });
  await w.waitJoined();
  await broker.produce(TOPIC, [{ value: sig }]);
  await waitUntil("the handler running", () => calls(`started-${sig}`).length > 0 || undefined);
  w.kill(sig);
  w.kill(sig);
  expect(await w.exited()).toBe(0);
  expect(calls(`finished-${sig}`).length).toBeGreaterThan(0);
  expect(w.find((l) => l.msg === "second signal; exiting now")).toBeUndefined();
  expect(w.find((l) => l.msg === "drained; exiting")).toBeDefined();
}, 60_000);
