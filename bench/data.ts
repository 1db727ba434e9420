// Test data for the benchmark: bulk production in large per-partition batches (the dev broker
// serves one stored batch per Fetch, so batch size here is fetch size there), and a paced
// producer that offers a fixed rate and remembers when each offset was sent.
import type { Kafka, Message } from "kafkajs";

/** ~150-byte JSON value: what a small business event looks like. */
export function value(i: number, sentAt = 0): string {
  const base = JSON.stringify({ id: `evt-${String(i).padStart(10, "0")}`, account: `acct-${i % 997}`, amount: (i % 10_000) / 100, sentAt, pad: "" });
  return base.replace('"pad":""', `"pad":"${"x".repeat(Math.max(0, 150 - base.length))}"`);
}

/** Produces `count` messages round-robin over `partitions`, `perBatch` per partition per request. */
export async function produceBulk(kafka: Kafka, topic: string, partitions: number, count: number, opts: { perBatch?: number; keys?: number } = {}): Promise<void> {
  const perBatch = opts.perBatch ?? 1000;
  const producer = kafka.producer({ allowAutoTopicCreation: false });
  await producer.connect();
  try {
    let i = 0;
    while (i < count) {
      const byPartition: Message[][] = Array.from({ length: partitions }, () => []);
      for (let n = 0; n < perBatch * partitions && i < count; n++, i++) {
        const key = opts.keys ? `k${i % opts.keys}` : null;
        // With keys, a key's messages share a partition (as the default partitioner would do).
        const p = opts.keys ? (i % opts.keys) % partitions : i % partitions;
        byPartition[p]!.push({ key, value: value(i), partition: p });
      }
      await producer.sendBatch({ acks: -1, topicMessages: [{ topic, messages: byPartition.flat() }] });
    }
  } finally {
    await producer.disconnect();
  }
}

export interface SentRange {
  partition: number;
  /** First offset of the range. */
  first: bigint;
  count: number;
  sentAt: number;
}

/**
 * Offers `rate` messages per second for `seconds`, one request every `tickMs`, spread over
 * `partitions`. Returns every range with its send time (ms, performance.timeOrigin-based wall clock).
 */
export async function producePaced(kafka: Kafka, topic: string, partitions: number, rate: number, seconds: number, tickMs = 10): Promise<SentRange[]> {
  const producer = kafka.producer({ allowAutoTopicCreation: false });
  await producer.connect();
  const ranges: SentRange[] = [];
  const start = performance.now();
  const total = Math.round(rate * seconds);
  let sent = 0;
  try {
    while (sent < total) {
      const due = Math.min(total, Math.floor(((performance.now() - start) / 1000) * rate) + 1);
      if (due > sent) {
        const sentAt = now();
        const messages: Message[] = [];
        for (let i = sent; i < due; i++) messages.push({ value: value(i, sentAt), partition: i % partitions });
        const meta = await producer.send({ topic, acks: -1, messages });
        for (const m of meta) {
          const count = messages.filter((x) => x.partition === m.partition).length;
          ranges.push({ partition: m.partition, first: BigInt(m.baseOffset ?? "0"), count, sentAt });
        }
        sent = due;
      }
      await new Promise((r) => setTimeout(r, tickMs));
    }
  } finally {
    await producer.disconnect();
  }
  return ranges;
}

export const now = () => performance.timeOrigin + performance.now();
