// Compressed input (gzip, which kafkajs has built in) through kexo's Fetch decoder
// (src/kafka/fetch-decode.ts): every message handled once with its offset, key, headers and
// timestamp as the producer sent them, and copies with a kexo-id header already seen deduplicated.
import { expect, test } from "bun:test";
import { CompressionTypes } from "kafkajs";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { outcomes } from "./support/metrics.ts";
import { callsLog } from "./support/tmp.ts";
import { waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "cz-in";
// kafkajs writes 0 as a batch's partition leader epoch, and the development broker keeps it.
const EPOCH = 0;
let broker: TestBroker;
let dir: string;

const HANDLER = `
import { defineHandler, v } from "kexo";
import { appendFileSync } from "node:fs";

export default defineHandler({
  topics: ["${TOPIC}"],
  schema: v.object({ n: v.number() }),
  async handle(e, ctx) {
    const m = ctx.message;
    appendFileSync(process.env.CALLS_LOG!, JSON.stringify({
      id: ctx.id, n: e.n, partition: m.partition, offset: m.offset, key: m.key?.toString() ?? null,
      trace: m.headers["trace"]?.toString(), timestamp: m.timestamp, leaderEpoch: m.leaderEpoch,
    }) + "\\n");
  },
});
`;

withBroker({ [TOPIC]: 2 }, { "cz.ts": HANDLER }, (f) => ({ broker, dir } = f));

test("gzip-compressed batches: each message once, with its offset, key, headers and timestamp; kexo-id copies deduplicated", async () => {
  type Call = { id: string; n: number; partition: number; offset: string; key: string | null; trace?: string; timestamp: string; leaderEpoch?: number };
  const { env, calls } = callsLog<Call>(dir);
  const w = new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), join(dir, "journal.db")), { env });
  const address = await w.httpAddress();
  await w.waitJoined();

  const producer = broker.kafka.producer();
  await producer.connect();
  const at = 1_700_000_000_000;
  const message = (n: number) => ({
    partition: n % 2, key: n % 3 ? `k-${n}` : null, value: JSON.stringify({ n }), timestamp: String(at + n),
    headers: { "kexo-id": `cz-${n}`, trace: `t-${n}` },
  });
  // Two compressed batches per partition, then copies of five messages (same kexo-id) in a third.
  await producer.send({ topic: TOPIC, compression: CompressionTypes.GZIP, messages: Array.from({ length: 30 }, (_, n) => message(n)) });
  await producer.send({ topic: TOPIC, compression: CompressionTypes.GZIP, messages: Array.from({ length: 30 }, (_, n) => message(30 + n)) });
  await waitUntil("60 handled", () => calls().length >= 60 || undefined);
  await producer.send({ topic: TOPIC, compression: CompressionTypes.GZIP, messages: [0, 1, 2, 3, 4].map(message) });
  await producer.disconnect();

  await waitUntil("5 deduplicated", async () => ((await outcomes(address)).deduplicated ?? 0) >= 5 || undefined);
  const o = await outcomes(address);
  // Outcomes with no message yet may be listed at 0.
  expect([o.processed, o.deduplicated, o.dead_lettered ?? 0, o.retried ?? 0, o.failed ?? 0]).toEqual([60, 5, 0, 0, 0]);
  w.kill("SIGTERM");
  expect(await w.exited()).toBe(0);

  const all = calls();
  expect(all.map((c) => c.n).sort((a, b) => a - b)).toEqual(Array.from({ length: 60 }, (_, n) => n));
  for (const c of all) {
    expect(c.id).toBe(`cz-${c.n}`);
    expect(c.partition).toBe(c.n % 2);
    // Each partition got n = p, p+2, …: offsets 0, 1, … in that order.
    expect(c.offset).toBe(String(Math.floor(c.n / 2)));
    expect(c.key).toBe(c.n % 3 ? `k-${c.n}` : null);
    expect(c.trace).toBe(`t-${c.n}`);
    expect(c.timestamp).toBe(String(at + c.n));
    // The record batch's partition leader epoch (SPEC: ctx.message.leaderEpoch), as the broker stored it.
    expect(c.leaderEpoch).toBe(EPOCH);
  }
}, 60_000);
