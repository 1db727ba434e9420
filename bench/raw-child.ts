// The ceiling, as its own process like kexo: plain kafkajs eachBatch with a no-op body. Prints one
// JSON line {rate, seconds, peakRssMiB, cpu}; timed from the first batch (group join excluded).
// `cpu` is the process's CPU time over that interval, as a share of one core.
// Usage: bun bench/raw-child.ts BROKERS TOPIC COUNT [kexo-decoder]
// With `kexo-decoder`, kafkajs decodes Fetch responses with kexo's decoder (src/kafka/fetch-decode.ts).
import { readFileSync } from "node:fs";
import { Kafka, logLevel } from "kafkajs";
import { silenceTimeoutNegativeWarning } from "../src/kafka/client.ts";
import { installFetchDecoder } from "../src/kafka/fetch-decode.ts";

const [brokers, topic, countArg, decoder] = process.argv.slice(2);
const count = Number(countArg);
silenceTimeoutNegativeWarning();
if (decoder === "kexo-decoder") installFetchDecoder();
const kafka = new Kafka({ clientId: "kexo-bench-raw", brokers: brokers!.split(","), logLevel: logLevel.NOTHING });
const consumer = kafka.consumer({ groupId: `bench-raw-${Date.now()}`, sessionTimeout: 6000, heartbeatInterval: 500, maxWaitTimeInMs: 20 });
await consumer.connect();
await consumer.subscribe({ topics: [topic!], fromBeginning: true });
let seen = 0;
let first = 0;
let firstBatch = 0;
let last = 0;
let cpu0 = 0;
let cpu1 = 0;
const cpuNow = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};
await new Promise<void>((done) => {
  void consumer.run({
    eachBatch: async ({ batch }) => {
      if (first === 0) {
        first = performance.now();
        cpu0 = cpuNow();
        firstBatch = batch.messages.length;
      }
      seen += batch.messages.length;
      if (seen >= count && last === 0) {
        last = performance.now();
        cpu1 = cpuNow();
        done();
      }
    },
  });
});
const peakRssMiB = Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync("/proc/self/status", "utf8"))?.[1] ?? 0) / 1024;
const seconds = (last - first) / 1000;
// The first batch arrived at time zero: it is not part of the measured interval.
process.stdout.write(JSON.stringify({ rate: (count - firstBatch) / seconds, seconds, peakRssMiB, cpu: (cpu1 - cpu0) / seconds }) + "\n");
await consumer.disconnect();
process.exit(0);
