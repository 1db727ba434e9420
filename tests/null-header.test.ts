// A header whose value is null: Kafka allows it and the Java client sends one (kafkajs's producer
// cannot). Before, turning such a message into ctx.message threw (Buffer.from(null)) in the batch
// loop, and the worker stopped. Now the handler sees the name with an empty value, a dead letter
// carries it the same way (its producer, kafkajs's, has no null either), an empty kexo-id is no
// id (its replayed copy carries the id it had), and ctx.emit writes a null header value as empty.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { callsLog } from "./support/tmp.ts";
import { waitUntil } from "./support/wait.ts";
import { kexoAsync, runArgs, WorkerProcess } from "./support/worker.ts";

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
    // null: an empty value, as a consumed null reads (not the text "null"); undefined: no header.
    if (p.n === 1) ctx.emit("nh-out", { value: { n: p.n }, headers: { nul: null, und: undefined, arr: ["a", null, undefined] } as never });
  },
});
`;

withBroker({ "nh-in": 1, "nh-in.dlq": 1, "nh-out": 1, "nh-copy": 1 }, { "nh.ts": HANDLER }, (f) => ({ broker, dir } = f));

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
    { value: "not json", headers: { flag: null, "kexo-id": null } },
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
  const [out] = await broker.readAll("nh-out", 1);
  expect(Object.keys(out!.allHeaders).sort()).toEqual(["arr", "kexo-id", "nul"]);
  expect(out!.allHeaders.nul).toEqual([Buffer.alloc(0)]);
  expect(out!.allHeaders.arr?.map(String)).toEqual(["a", ""]);
  w.kill("SIGTERM");
  expect(await w.exited()).toBe(0);

  // Its kexo-id was null, so empty, so not its id: the replayed copy carries the id it had (its
  // offset's), so what the failed run recorded is reused, not redone.
  const db = ["--db", `file:${join(dir, "journal.db")}`];
  const replay = await kexoAsync(["dlq", "replay", "1", "--to", "nh-copy", "--brokers", broker.brokers, ...db], { cwd: dir });
  expect(replay.code).toBe(0);
  const [copy] = await broker.readAll("nh-copy", 1);
  expect(copy?.allHeaders["kexo-id"]?.map(String)).toEqual(["kafka-unique-id-nh-in-0-kexo-nh-nh-in-1"]);
}, 60_000);
