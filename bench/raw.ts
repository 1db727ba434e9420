// The ceiling: plain kafkajs eachBatch with a no-op body, in this process, on the same broker and
// data as kexo. Timed from the first batch (the group join is excluded, as for kexo).
import type { Kafka } from "kafkajs";
import { now, type SentRange } from "./data.ts";

export async function rawConsume(kafka: Kafka, topic: string, count: number, timeoutMs = 120_000): Promise<{ rate: number; seconds: number }> {
  const consumer = kafka.consumer({ groupId: `bench-raw-${Date.now()}`, sessionTimeout: 6000, heartbeatInterval: 500, maxWaitTimeInMs: 250 });
  await consumer.connect();
  await consumer.subscribe({ topics: [topic], fromBeginning: true });
  let seen = 0;
  let first = 0;
  let firstBatch = 0;
  let last = 0;
  let done!: () => void;
  const finished = new Promise<void>((r) => (done = r));
  await consumer.run({
    eachBatch: async ({ batch }) => {
      if (first === 0) {
        first = performance.now();
        firstBatch = batch.messages.length;
      }
      seen += batch.messages.length;
      if (seen >= count) {
        last = performance.now();
        done();
      }
    },
  });
  const timedOut = await Promise.race([finished.then(() => false), new Promise<boolean>((r) => setTimeout(() => r(true), timeoutMs))]);
  await consumer.disconnect();
  if (timedOut) throw new Error(`raw consume saw ${seen} of ${count} messages in ${timeoutMs} ms; is the data there (retention)?`);
  const seconds = (last - first) / 1000;
  // The first batch arrived at time zero: it is not part of the measured interval.
  return { rate: (count - firstBatch) / seconds, seconds };
}

/** Raw kafkajs end-to-end latency at a fixed offered rate: producer send → eachBatch sees it. */
export async function rawLatency(kafka: Kafka, topic: string, offer: () => Promise<SentRange[]>): Promise<{ p50: number; p99: number; count: number }> {
  const consumer = kafka.consumer({ groupId: `bench-raw-lat-${Date.now()}`, sessionTimeout: 6000, heartbeatInterval: 500, maxWaitTimeInMs: 20 });
  const seen = new Map<string, number>();
  let joined!: () => void;
  const isJoined = new Promise<void>((r) => (joined = r));
  consumer.on(consumer.events.GROUP_JOIN, () => joined());
  await consumer.connect();
  await consumer.subscribe({ topics: [topic], fromBeginning: true });
  await consumer.run({
    eachBatch: async ({ batch }) => {
      const t = now();
      for (const m of batch.messages) seen.set(`${batch.partition}:${m.offset}`, t);
    },
  });
  await isJoined;
  const ranges = await offer();
  const total = ranges.reduce((n, r) => n + r.count, 0);
  const deadline = Date.now() + 30_000;
  while (seen.size < total && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  await consumer.disconnect();
  const latencies: number[] = [];
  for (const r of ranges) {
    for (let i = 0; i < r.count; i++) {
      const at = seen.get(`${r.partition}:${r.first + BigInt(i)}`);
      if (at !== undefined) latencies.push(at - r.sentAt);
    }
  }
  return { ...percentiles(latencies), count: latencies.length };
}

export function percentiles(latencies: number[]): { p50: number; p99: number; max: number } {
  latencies.sort((a, b) => a - b);
  const pct = (q: number) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] ?? NaN;
  return { p50: pct(0.5), p99: pct(0.99), max: latencies[latencies.length - 1] ?? NaN };
}
