// The ceiling, as its own process like kexo: plain kafkajs eachBatch with a no-op body. Prints one
// JSON line {rate, seconds, peakRssMiB}; timed from the first batch (group join excluded).
// Usage: bun bench/raw-child.ts BROKERS TOPIC COUNT
import { readFileSync } from "node:fs";
import { Kafka, logLevel } from "kafkajs";
import { silenceTimeoutNegativeWarning } from "../src/kafka/client.ts";

const [brokers, topic, countArg] = process.argv.slice(2);
const count = Number(countArg);
silenceTimeoutNegativeWarning();
const kafka = new Kafka({ clientId: "kexo-bench-raw", brokers: brokers!.split(","), logLevel: logLevel.NOTHING });
const consumer = kafka.consumer({ groupId: `bench-raw-${Date.now()}`, sessionTimeout: 6000, heartbeatInterval: 500, maxWaitTimeInMs: 20 });
await consumer.connect();
await consumer.subscribe({ topics: [topic!], fromBeginning: true });
let seen = 0;
let first = 0;
let firstBatch = 0;
let last = 0;
await new Promise<void>((done) => {
  void consumer.run({
    eachBatch: async ({ batch }) => {
      if (first === 0) {
        first = performance.now();
        firstBatch = batch.messages.length;
      }
      seen += batch.messages.length;
      if (seen >= count && last === 0) {
        last = performance.now();
        done();
      }
    },
  });
});
const peakRssMiB = Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync("/proc/self/status", "utf8"))?.[1] ?? 0) / 1024;
const seconds = (last - first) / 1000;
// The first batch arrived at time zero: it is not part of the measured interval.
process.stdout.write(JSON.stringify({ rate: (count - firstBatch) / seconds, seconds, peakRssMiB }) + "\n");
await consumer.disconnect();
process.exit(0);
