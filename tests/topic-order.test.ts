// Guarantee 5 with order: "topic": one message at a time per topic, across all of its partitions
// (DBOS's in_order), while each partition is still handled in offset order.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { startBroker, type TestBroker } from "./support/broker.ts";
import { readJsonLines, tempDir } from "./support/tmp.ts";
import { waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const TOPICS = ["in-order-a", "in-order-b"];
const PER_PARTITION = 20;
let broker: TestBroker;
let dir: string;

const HANDLER = `
import { defineHandler } from "kexo";
import { appendFileSync } from "node:fs";

export default defineHandler({
  topics: ${JSON.stringify(TOPICS)},
  order: "topic",
  concurrency: 8,
  async handle(value, ctx) {
    const line = (at) => JSON.stringify({ topic: ctx.message.topic, partition: ctx.message.partition, offset: Number(ctx.message.offset), at }) + "\\n";
    appendFileSync(process.env.LOG!, line("start"));
    await new Promise((r) => setTimeout(r, 5));
    appendFileSync(process.env.LOG!, line("end"));
  },
});
`;

beforeAll(async () => {
  broker = await startBroker(Object.fromEntries(TOPICS.map((t) => [t, 3])));
  dir = tempDir();
  await Bun.write(join(dir, "handlers", "ordered.ts"), HANDLER);
});

afterAll(async () => {
  await broker?.close();
});

test("one message at a time per topic across its partitions, each partition in offset order", async () => {
  for (const topic of TOPICS) {
    for (let p = 0; p < 3; p++) {
      await broker.produce(topic, Array.from({ length: PER_PARTITION }, (_, i) => ({ value: `${p}-${i}`, partition: p })));
    }
  }
  const total = TOPICS.length * 3 * PER_PARTITION;
  const log = join(dir, "handled.log");
  writeFileSync(log, "");
  type Rec = { topic: string; partition: number; offset: number; at: "start" | "end" };
  const records = () => readJsonLines<Rec>(log);
  const w = new WorkerProcess(
    runArgs(broker.brokers, join(dir, "handlers"), join(dir, "journal.db")),
    { env: { LOG: log } },
  );
  await w.waitJoined();
  await waitUntil(`${total} messages handled`, () => records().filter((r) => r.at === "end").length >= total || undefined, { timeoutMs: 60_000 });
  w.kill("SIGTERM");
  expect(await w.exited()).toBe(0);

  const recs = records();
  for (const topic of TOPICS) {
    const mine = recs.filter((r) => r.topic === topic);
    // Strictly alternating start/end of the same message: never two in flight for this topic.
    for (let i = 0; i < mine.length; i += 2) {
      expect([mine[i]!.at, mine[i + 1]!.at, mine[i]!.partition === mine[i + 1]!.partition && mine[i]!.offset === mine[i + 1]!.offset]).toEqual(["start", "end", true]);
    }
    for (let p = 0; p < 3; p++) {
      const offsets = mine.filter((r) => r.partition === p && r.at === "start").map((r) => r.offset);
      expect(offsets).toEqual([...Array(PER_PARTITION).keys()]);
    }
  }
}, 120_000);
