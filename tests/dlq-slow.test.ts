// A dead-letter write the broker is slow to acknowledge holds up only its own partition: past a
// few seconds the partition lets go of its batch (the other partitions' fetches go on), /readyz
// says why, and the same write is waited for, not written again, so it lands once.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { PROGRESS_TOPIC } from "../src/kafka/progress-log.ts";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { columnIn } from "./support/db.ts";
import { callsLog } from "./support/tmp.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "sl-in";
const DLQ = "sl-in.dlq";
const DLQ_BROKER = 3;
let broker: TestBroker;
let dir: string;

const HANDLER = `
import { defineHandler, v, PermanentError } from "kexo";
import { appendFileSync } from "node:fs";

export default defineHandler({
  topics: ["${TOPIC}"],
  schema: v.object({ id: v.string() }),
  async handle(p, ctx) {
    appendFileSync(process.env.CALLS_LOG!, JSON.stringify({ id: p.id, attempt: ctx.attempt }) + "\\n");
    if (p.id.startsWith("bad")) throw new PermanentError("refused");
  },
});
`;

// Everything on broker 1 but the dead-letter topic, whose leader can then be slowed down alone.
withBroker({ [TOPIC]: 2, [DLQ]: 1 }, { "sl.ts": HANDLER }, (f) => {
  ({ broker, dir } = f);
  for (const [t, n] of [[TOPIC, 2], [PROGRESS_TOPIC, 1]] as const) for (let p = 0; p < n; p++) broker.cluster.setPartitionLeader(t, p, 1);
  broker.cluster.setPartitionLeader(DLQ, 0, DLQ_BROKER);
  broker.cluster.setGroupCoordinator("kexo-sl-sl-in", 1);
}, { brokers: 3 });

test("a slow dead-letter write holds up only its partition, says so, and lands once", async () => {
  const db = join(dir, "journal.db");
  const { env, calls } = callsLog(dir);
  const w = new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), db), { env });
  const address = await w.httpAddress();
  await w.waitJoined();
  // A first dead letter while the broker is quick: the producer is connected and knows the topic.
  await broker.produce(TOPIC, [{ value: JSON.stringify({ id: "bad-1" }), partition: 0 }, { value: JSON.stringify({ id: "warm" }), partition: 1 }]);
  await w.waitForLog("the first dead letter", (l) => l.msg === "message dead-lettered");
  await waitUntil("partition 1 warm", () => calls("warm").length > 0 || undefined);

  // Answers from the dead-letter topic's leader now take 12 s (under kafkajs's 30 s request timeout).
  broker.cluster.setRtt(DLQ_BROKER, 12_000);
  await broker.produce(TOPIC, [{ value: JSON.stringify({ id: "bad-2" }), partition: 0 }, { value: JSON.stringify({ id: "b" }), partition: 0 }]);
  // Past the 5 s the write may hold the batch. Before: partition 1 waited for the write too (its
  // fetch round held by partition 0's batch), here for 12 s.
  await sleep(6000);
  await broker.produce(TOPIC, [{ value: JSON.stringify({ id: "other" }), partition: 1 }]);
  await waitUntil("partition 1 handled while the write is pending", () => calls("other").length > 0 || undefined, { timeoutMs: 4000 });
  expect(w.find((l) => l.msg === "dead-letter write not acknowledged yet; the partition waits for the broker's answer")?.dlqTopic).toBe(DLQ);
  const readyz = await fetch(`http://${address}/readyz`);
  expect(readyz.status).toBe(503);
  expect(((await readyz.json()) as { reasons: string[] }).reasons.join("\n")).toContain(`${TOPIC}/0@1: dead-letter write to ${DLQ} not acknowledged`);
  expect((await fetch(`http://${address}/healthz`)).status).toBe(200);
  expect(calls("b")).toEqual([]);

  await waitUntil("b handled once the write was acknowledged", () => calls("b").length > 0 || undefined);
  broker.cluster.setRtt(DLQ_BROKER, 0);
  await waitUntil("/readyz 200 again", async () => (await fetch(`http://${address}/readyz`)).status === 200 || undefined);
  w.kill("SIGTERM");
  expect(await w.exited()).toBe(0);

  expect(calls().map((c) => c.id)).toEqual(expect.arrayContaining(["bad-1", "warm", "bad-2", "other", "b"]));
  expect(calls().length).toBe(5);
  const dead = await broker.readAll(DLQ, 3, 5000);
  expect(dead.map((d) => d.value?.toString())).toEqual(['{"id":"bad-1"}', '{"id":"bad-2"}']);
  expect(columnIn<number>(db, 'SELECT "offset" FROM kexo_dead_letters ORDER BY seq')).toEqual([0, 1]);
}, 60_000);
