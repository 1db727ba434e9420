// A header whose value is null: Kafka allows it and the Java client sends one (kafkajs's producer
// cannot). Before, turning such a message into ctx.message threw (Buffer.from(null)) in the batch
// loop, so the partition never got past it. Now the handler sees the name with an empty value,
// and a dead letter carries it the same way (its producer, kafkajs's, has no null either).
import { expect, test } from "bun:test";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { callsLog } from "./support/tmp.ts";
import { waitUntil } from "./support/wait.ts";
import { runArgs, WorkerProcess } from "./support/worker.ts";

let broker: TestBroker;
let dir: string;

const HANDLER = `
import { defineHandler, v } from "kexo";
import { appendFileSync } from "node:fs";

export default defineHandler({
  topics: ["nh-in"],
  schema: v.object({ n: v.number() }),
  async handle(p, ctx) {
    const h = ctx.message.headers;
    appendFileSync(process.env.CALLS_LOG!, JSON.stringify({
      id: ctx.id, n: p.n, names: Object.keys(h).sort(), flag: h.flag === undefined ? "missing" : [...h.flag], trace: h.trace?.toString(),
    }) + "\\n");
  },
});
`;

withBroker({ "nh-in": 1, "nh-in.dlq": 1 }, { "nh.ts": HANDLER }, (f) => ({ broker, dir } = f));

/** Sends records whose null header values reach the broker as null (length -1), as the Java client sends them. */
async function sendWithNullHeaders(messages: { value: string; headers: Record<string, string | null | (string | null)[]> }[]): Promise<void> {
  const producer = broker.kafka.producer();
  await producer.connect();
  // kafkajs measures every header value with Buffer.byteLength before it checks for null; its
  // encoder itself writes a null as length -1. Only this test process's producer is affected.
  const byteLength = Buffer.byteLength;
  Buffer.byteLength = ((v: Parameters<typeof byteLength>[0], e?: BufferEncoding) => (v === null ? 0 : byteLength(v, e))) as typeof byteLength;
  try {
    await producer.send({ topic: "nh-in", messages: messages as never });
  } finally {
    Buffer.byteLength = byteLength;
    await producer.disconnect();
  }
}

test("a header with a null value reads as an empty one; the message is handled, or dead-lettered, and the partition goes on", async () => {
  const log = callsLog<{ id: string; n: number; names: string[]; flag: number[] | "missing"; trace?: string }>(dir);
  const w = new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), join(dir, "journal.db")), { env: log.env });
  await w.waitJoined();
  await sendWithNullHeaders([
    { value: JSON.stringify({ n: 1 }), headers: { flag: null, trace: ["a", null] } },
    { value: "not json", headers: { flag: null } },
    { value: JSON.stringify({ n: 2 }), headers: { trace: "b" } },
  ]);
  await waitUntil("both good messages handled", () => log.calls().length >= 2 || undefined);
  expect(log.calls().map(({ n, names, flag, trace }) => ({ n, names, flag, trace }))).toEqual([
    { n: 1, names: ["flag", "trace"], flag: [], trace: "" },
    { n: 2, names: ["trace"], flag: "missing", trace: "b" },
  ]);
  const [dead] = await broker.readAll("nh-in.dlq", 1);
  expect(dead?.allHeaders.flag).toEqual([Buffer.alloc(0)]);
  expect(dead?.allHeaders["kexo-dlq-reason"]?.map(String)).toEqual(["poison"]);
  w.kill("SIGTERM");
  expect(await w.exited()).toBe(0);
}, 60_000);
