// Bounded memory with order: "key": messages waiting in key lanes are bounded in bytes, not only in
// count, and hold copies of their bytes, not the fetch responses they came in; past the bound
// fetching pauses, whatever the backlog. Before, 1000 waiting messages of any size were allowed
// (the first test's whole 192 MiB backlog was fetched into memory behind one blocked key), and
// each waiting message kept its whole fetch response alive (the second test's 2 KB messages of
// one blocked key kept ≈ 75 MiB).
import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { DEFAULT_CONSUMER_OPTIONS } from "../src/kafka/consumer.ts";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { outcomes } from "./support/metrics.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { runArgs, WorkerProcess } from "./support/worker.ts";

const TOPIC = "big-keyed";
const PARTITIONS = 48;
const PER_PARTITION = 16;
const VALUE_BYTES = 256 * 1024;
const MIXED = "mixed-keyed";
const MIXED_PARTITIONS = 16;
const MIXED_BATCHES = 12;
const MIXED_BATCH = 200;
let broker: TestBroker;
let dir: string;

// Every message blocks until shutdown: nothing finishes, so only the queue bound stops fetching.
const HANDLER = `
import { defineHandler } from "kexo";
export default defineHandler({
  topics: ["${TOPIC}"],
  order: "key",
  concurrency: 1,
  async handle(value, ctx) {
    await new Promise((r) => ctx.signal.addEventListener("abort", r));
  },
});
`;

// Messages of key "blocked" block until shutdown; the others finish at once.
const MIXED_HANDLER = `
import { defineHandler } from "kexo";
export default defineHandler({
  topics: ["${MIXED}"],
  order: "key",
  concurrency: 64,
  async handle(value, ctx) {
    if (String(ctx.message.key) === "blocked") await new Promise((r) => ctx.signal.addEventListener("abort", r));
  },
});
`;

withBroker({ [TOPIC]: PARTITIONS, [MIXED]: MIXED_PARTITIONS }, { "blocked.ts": HANDLER }, async (f) => {
  ({ broker, dir } = f);
  await Bun.write(join(dir, "mixed", "mixed.ts"), MIXED_HANDLER);
});

function rssMiB(pid: number, field: "VmHWM" | "VmRSS"): number {
  return Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]) / 1024;
}

test("key lanes stop fetching at the byte bound: a 192 MiB backlog behind a blocked key is not fetched into memory", async () => {
  // 4 MiB per partition (the development broker keeps 5), one message per partition per request:
  // the broker hands out one stored batch per partition and fetch, so a fetch brings 12 MiB.
  const producer = broker.kafka.producer();
  await producer.connect();
  const value = Buffer.alloc(VALUE_BYTES, 120);
  for (let i = 0; i < PER_PARTITION; i++) {
    await producer.send({ topic: TOPIC, acks: 1, messages: Array.from({ length: PARTITIONS }, (_, p) => ({ partition: p, key: "one", value })) });
  }
  await producer.disconnect();

  const w = new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), join(dir, "journal.db")));
  try {
    const base = `http://${await w.httpAddress()}`;
    await w.waitJoined();
    type Status = { handlers: { queued?: { messages: number; bytes: number } }[] };
    const status = async () => ((await (await fetch(`${base}/status`)).json()) as Status).handlers[0]!;
    // The lanes have filled up once what they queue holds still, after something was queued. (Lag
    // does not tell: with key order it counts everything behind the blocked key, fetched or not.)
    let last = -1;
    const settled = await waitUntil("the key lanes to fill up", async () => {
      const s = await status();
      const now = s.queued?.messages ?? 0;
      const still = now === last && now > 0;
      last = now;
      return still ? s : undefined;
    }, { timeoutMs: 30_000, intervalMs: 2000 });

    const bound = DEFAULT_CONSUMER_OPTIONS.maxQueuedBytes;
    const queued = settled.queued ?? { messages: 0, bytes: 0 };
    // Past the bound by at most the message that crossed it (and its bookkeeping).
    expect(queued.bytes).toBeGreaterThanOrEqual(bound);
    expect(queued.bytes).toBeLessThan(bound + VALUE_BYTES + 1024);
    // Fetching stopped: the whole backlog alone would be 192 MiB; kexo idles at ≈ 60–90 MiB and
    // holds the queued 32 MiB plus the fetch the waiting batch came in. Generous.
    expect(rssMiB(w.proc.pid, "VmHWM")).toBeLessThan(230);
  } finally {
    w.kill("SIGKILL");
    await w.exited();
  }
}, 90_000);

test("a message waiting behind its key holds its own bytes, not the fetch response it came in", async () => {
  // 73 MiB in 400 KB stored batches (the development broker hands out one per partition and
  // fetch); one message in 100 has key "blocked" and waits until shutdown.
  const producer = broker.kafka.producer();
  await producer.connect();
  const value = Buffer.alloc(2000, 120);
  let n = 0;
  for (let b = 0; b < MIXED_BATCHES; b++) {
    for (let p = 0; p < MIXED_PARTITIONS; p++) {
      const messages = Array.from({ length: MIXED_BATCH }, () => ({ partition: p, key: n++ % 100 === 0 ? "blocked" : `k${n % 1000}`, value }));
      await producer.send({ topic: MIXED, acks: 1, messages });
    }
  }
  await producer.disconnect();
  const blocked = Math.ceil(n / 100);

  const w = new WorkerProcess(runArgs(broker.brokers, join(dir, "mixed"), join(dir, "mixed.db")));
  try {
    const address = await w.httpAddress();
    await w.waitJoined();
    const processed = async () => (await outcomes(address)).processed ?? 0;
    await waitUntil("every message but the blocked ones handled", async () => (await processed()) === n - blocked || undefined, { timeoutMs: 60_000, intervalMs: 500 });
    // The blocked messages hold ≈ 1 MiB; their fetch responses, all of the topic, ≈ 75 MiB (RSS
    // measured here: ≈ 106 MiB, and ≈ 187 MiB before).
    await sleep(1000);
    expect(rssMiB(w.proc.pid, "VmRSS")).toBeLessThan(145);
  } finally {
    w.kill("SIGKILL");
    await w.exited();
  }
}, 90_000);
