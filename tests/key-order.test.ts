// Guarantee 5 with order: "key": messages of one key run one at a time in offset order, messages of
// other keys run concurrently (up to `concurrency`), and a slow key holds up neither the other keys
// of its partition nor other partitions.
import { expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { readJsonLines } from "./support/tmp.ts";
import { waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "keys-in";
const PER_KEY = 30;
let broker: TestBroker;
let dir: string;

const HANDLER = `
import { defineHandler } from "kexo";
import { appendFileSync } from "node:fs";

export default defineHandler({
  topics: ["${TOPIC}"],
  order: "key",
  concurrency: 8,
  async handle(value, ctx) {
    const { k, seq } = JSON.parse(String(value));
    appendFileSync(process.env.LOG!, JSON.stringify({ k, seq, at: "start", t: performance.timeOrigin + performance.now() }) + "\\n");
    await new Promise((r) => setTimeout(r, k === "slow" && seq === 0 ? 3000 : Math.random() * 15));
    appendFileSync(process.env.LOG!, JSON.stringify({ k, seq, at: "end", t: performance.timeOrigin + performance.now() }) + "\\n");
  },
});
`;

withBroker({ [TOPIC]: 2 }, { "keyed.ts": HANDLER }, (f) => ({ broker, dir } = f));

type Rec = { k: string; seq: number; at: "start" | "end"; t: number };

test("per-key order holds under concurrency and a slow key does not hold up other keys or partitions", async () => {
  const msg = (k: string, seq: number, partition: number) => ({ key: k, value: JSON.stringify({ k, seq }), partition });
  // Partition 0 opens with the slow message, then keys a, b, c interleaved, then slow's second one.
  const p0 = [msg("slow", 0, 0)];
  for (let i = 0; i < PER_KEY; i++) for (const k of ["a", "b", "c"]) p0.push(msg(k, i, 0));
  p0.push(msg("slow", 1, 0));
  const p1 = [];
  for (let i = 0; i < PER_KEY; i++) for (const k of ["d", "e"]) p1.push(msg(k, i, 1));
  // One message per produce request: the development broker then hands out small batches, so
  // the keys of later batches can only overtake the slow one if kexo fetches past it.
  for (const m of [...p0, ...p1]) await broker.produce(TOPIC, [m]);
  const total = p0.length + p1.length;

  const log = join(dir, "handled.log");
  writeFileSync(log, "");
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
  const ends = recs.filter((r) => r.at === "end");
  expect(ends.length).toBe(total);

  // Per key: starts in sequence order, each after the previous message of the key ended.
  const byKey = new Map<string, Rec[]>();
  for (const r of recs) byKey.set(r.k, [...(byKey.get(r.k) ?? []), r]);
  for (const [k, rs] of byKey) {
    const seqs = rs.filter((r) => r.at === "start").map((r) => r.seq);
    expect({ k, seqs }).toEqual({ k, seqs: [...Array(k === "slow" ? 2 : PER_KEY).keys()] });
    for (let i = 0; i + 1 < rs.length; i += 2) {
      expect([rs[i]!.at, rs[i + 1]!.at, rs[i]!.seq === rs[i + 1]!.seq]).toEqual(["start", "end", true]);
    }
  }

  // Concurrency really happened, and never above the handler's 8.
  let running = 0;
  let peak = 0;
  for (const r of recs) {
    running += r.at === "start" ? 1 : -1;
    peak = Math.max(peak, running);
  }
  expect(peak).toBeGreaterThan(1);
  expect(peak).toBeLessThanOrEqual(8);

  // The slow message ended after every other key's last message, in both partitions.
  const slowEnd = ends.find((r) => r.k === "slow" && r.seq === 0)!.t;
  const othersDone = Math.max(...ends.filter((r) => r.k !== "slow").map((r) => r.t));
  expect(othersDone).toBeLessThan(slowEnd);
}, 120_000);
