// A dead-letter topic that does not exist and that the broker does not create (Kafka with
// auto.create.topics.enable=false) is named as missing, with what to do, on /readyz and in the
// log; only its partition waits, and once the topic exists the partition resumes by itself: the
// message dead-lettered once, the messages after it handled, nothing skipped.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { columnIn } from "./support/db.ts";
import { callsLog } from "./support/tmp.ts";
import { waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "mt-in";
const DLQ = "mt-in.dlq";
const UNKNOWN_TOPIC_OR_PARTITION = 3;
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
    if (p.id === "bad") throw new PermanentError("refused");
  },
});
`;

// The development broker answers Metadata for the dead-letter topic as Kafka does for a topic it
// neither has nor may create.
withBroker({ [TOPIC]: 2 }, { "mt.ts": HANDLER }, (f) => {
  ({ broker, dir } = f);
  broker.cluster.setTopicError(DLQ, UNKNOWN_TOPIC_OR_PARTITION);
});

interface Status {
  handlers: { partitions: { partition: number; committed: string | null }[] }[];
}

test("a missing dead-letter topic is named with what to do; its partition waits, then resumes once it exists", async () => {
  const db = join(dir, "journal.db");
  const { env, calls } = callsLog(dir);
  const w = new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), db), { env });
  const address = await w.httpAddress();
  await w.waitJoined();
  const get = <T>(path: string) => fetch(`http://${address}${path}`).then(async (r) => ({ status: r.status, body: (await r.json()) as T }));

  await broker.produce(TOPIC, [
    { value: JSON.stringify({ id: "a" }), partition: 0 },
    { value: JSON.stringify({ id: "bad" }), partition: 0 },
    { value: JSON.stringify({ id: "b" }), partition: 0 },
    { value: JSON.stringify({ id: "other" }), partition: 1 },
  ]);
  // kexo asked for the topic itself (CreateTopics), which this broker refused too: both are said.
  const missing = `topic ${DLQ} does not exist and the broker did not create it, nor could kexo (`;
  const ready = await waitUntil("/readyz 503 naming the missing topic", async () => {
    const r = await get<{ reasons?: string[] }>("/readyz");
    return r.status === 503 && r.body.reasons?.some((x) => x.includes(missing)) ? r : undefined;
  });
  expect(ready.body.reasons!.join("\n")).toContain(`${TOPIC}/0@1: dead-letter write to ${DLQ} failed`);
  const line = await w.waitForLog("the failed write logged", (l) => l.msg === "dead-letter write failed; the partition waits and retries");
  const message = (line.error as { message: string }).message;
  expect([line.dlqTopic, message.startsWith(missing)]).toEqual([DLQ, true]);
  expect(message).toContain("create it, or let kexo create topics (CreateTopics for its principal) or the broker (auto.create.topics.enable=true)");
  // The other partition flows; this one waits at the dead letter, its offset not past it.
  await waitUntil("partition 1 handled", () => calls("other").length > 0 || undefined);
  await waitUntil("3 failed writes", () => w.lines.filter((l) => l.msg === line.msg).length >= 3 || undefined);
  expect(calls("b")).toEqual([]);
  const status = await get<Status>("/status");
  // null: nothing committed yet, below the dead letter too.
  expect(BigInt(status.body.handlers[0]!.partitions.find((p) => p.partition === 0)!.committed ?? -1)).toBeLessThanOrEqual(1n);

  broker.cluster.setTopicError(DLQ, 0);
  await waitUntil("b handled once the topic exists", () => calls("b").length > 0 || undefined);
  await waitUntil("/readyz 200 again", async () => (await get("/readyz")).status === 200 || undefined);
  w.kill("SIGTERM");
  expect(await w.exited()).toBe(0);

  expect(calls().map((c) => c.id).sort()).toEqual(["a", "b", "bad", "other"]);
  const dead = await broker.readAll(DLQ, 2, 5000);
  expect(dead.map((d) => [d.value?.toString(), d.headers["kexo-dlq-offset"]?.toString()])).toEqual([['{"id":"bad"}', "1"]]);
  expect(columnIn<string>(db, "SELECT reason FROM kexo_dead_letters")).toEqual(["permanent"]);
}, 60_000);
