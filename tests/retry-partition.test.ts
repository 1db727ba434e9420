// While a message waits for its next try, only its own partition waits: messages of the other
// partitions keep flowing, later messages of its partition keep their order behind it, and the
// consumer keeps its group membership (no rejoin) and stays ready.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { callsLog } from "./support/tmp.ts";
import { waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "slow-in";
let broker: TestBroker;
let dir: string;

// The first retry waits between 4 and 8 s (equal jitter on 8 s): a long window to flow through.
const HANDLER = `
import { defineHandler, v } from "kexo";
import { appendFileSync } from "node:fs";

export default defineHandler({
  topics: ["${TOPIC}"],
  schema: v.object({ id: v.string() }),
  retry: { attempts: 2, initialDelayMs: 8000, maxDelayMs: 8000 },
  async handle(p, ctx) {
    appendFileSync(process.env.CALLS_LOG!, JSON.stringify({ id: p.id, partition: ctx.message.partition, attempt: ctx.attempt, t: Date.now() }) + "\\n");
    if (p.id === "fail") throw new Error("downstream is down");
  },
});
`;

withBroker({ [TOPIC]: 2, [`${TOPIC}.dlq`]: 1 }, { "slow.ts": HANDLER }, (f) => ({ broker, dir } = f));

test("a retrying message holds up only its own partition; the others flow and the member stays in its group", async () => {
  const { env, calls } = callsLog<{ id: string; partition: number; attempt: number; t: number }>(dir);
  const w = new WorkerProcess(
    runArgs(broker.brokers, join(dir, "handlers"), join(dir, "journal.db")),
    { env },
  );
  const address = await w.httpAddress();
  await w.waitJoined();

  await broker.produce(TOPIC, [
    { value: JSON.stringify({ id: "fail" }), partition: 0 },
    { value: JSON.stringify({ id: "after-fail" }), partition: 0 },
  ]);
  await waitUntil("the first attempt failed", () => calls().some((c) => c.id === "fail") || undefined);
  // Produced only now, while "fail" waits for its second attempt.
  await broker.produce(TOPIC, Array.from({ length: 20 }, (_, i) => ({ value: JSON.stringify({ id: `other-${i}` }), partition: 1 })));
  await waitUntil("20 messages of partition 1 handled", () => calls().filter((c) => c.partition === 1).length >= 20 || undefined, { timeoutMs: 20_000 });
  const flowedAt = Date.now();
  const ready = await fetch(`http://${address}/readyz`).then((r) => r.status);

  await waitUntil("after-fail handled", () => calls().some((c) => c.id === "after-fail") || undefined, { timeoutMs: 30_000 });
  const fails = calls().filter((c) => c.id === "fail");
  expect(fails.map((c) => c.attempt)).toEqual([1, 2]);
  // The other partition flowed while partition 0 waited for the second attempt.
  expect(flowedAt).toBeLessThan(fails[1]!.t);
  expect(calls().filter((c) => c.partition === 1).every((c) => c.t < fails[1]!.t)).toBe(true);
  // Partition order: the message behind the retrying one ran only after it was dead-lettered.
  expect(calls().find((c) => c.id === "after-fail")!.t).toBeGreaterThanOrEqual(fails[1]!.t);
  expect(ready).toBe(200);
  // Membership kept: one join, no rebalance, no crash.
  expect(w.lines.filter((l) => l.msg === "joined group").length).toBe(1);
  expect(w.lines.filter((l) => /rebalanc|crash/i.test(l.msg)).map((l) => l.msg)).toEqual([]);

  const dead = await broker.readAll(`${TOPIC}.dlq`, 1);
  expect(dead.map((d) => [d.headers["kexo-dlq-reason"]?.toString(), d.headers["kexo-dlq-attempts"]?.toString()])).toEqual([["exhausted", "2"]]);
  w.kill("SIGTERM");
  expect(await w.exited()).toBe(0);
}, 90_000);
