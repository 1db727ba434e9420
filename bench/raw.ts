// The ceiling: plain kafkajs eachBatch with a no-op body, in this process, on the same broker and
// data as kexo. Timed from the first batch (the group join is excluded, as for kexo).
import type { Kafka } from "kafkajs";

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
