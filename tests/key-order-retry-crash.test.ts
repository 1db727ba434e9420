// Guarantee 5 with order: "key" across a SIGKILL: the committed offset never passes a message
// that is still retrying, however many later messages of other keys finished. After the restart
// the retrying message goes on (its attempts counted on), its key's later messages run after it
// in order, and what finished above it is not run again: every effect appears once.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { queryRows } from "./support/db.ts";
import { callsLog } from "./support/tmp.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "keys-retry-crash-in";
const GROUP = `kexo-keyed-${TOPIC}`;
let broker: TestBroker;
let dir: string;

// Key "r" fails while FAIL_R=1 (the first run), retrying every 0.5–1 s.
const HANDLER = `
import { defineHandler, v } from "kexo";
import { appendFileSync } from "node:fs";

export default defineHandler({
  topics: ["${TOPIC}"],
  schema: v.object({ k: v.string(), n: v.number() }),
  order: "key",
  concurrency: 4,
  retry: { attempts: 100, initialDelayMs: 1000, maxDelayMs: 1000 },
  async setup(db) { await db.execute("CREATE TABLE IF NOT EXISTS effects (k TEXT, n INTEGER)"); },
  async handle(p, ctx) {
    appendFileSync(process.env.CALLS_LOG!, JSON.stringify({ id: p.k, n: p.n, attempt: ctx.attempt, pid: process.pid }) + "\\n");
    if (p.k === "r" && process.env.FAIL_R === "1") throw new Error("downstream is down");
    await ctx.tx((db) => db.execute({ sql: "INSERT INTO effects (k, n) VALUES (?, ?)", args: [p.k, p.n] }));
  },
});
`;

withBroker({ [TOPIC]: 1, [`${TOPIC}.dlq`]: 1 }, { "keyed.ts": HANDLER }, (f) => ({ broker, dir } = f));

type Call = { id: string; n: number; attempt: number; pid: number };

test("a retrying message keeps the committed offset at it through a SIGKILL; nothing above it runs twice", async () => {
  const db = join(dir, "journal.db");
  const { env, calls } = callsLog<Call>(dir);
  const start = (fail: string) => new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), db), { env: { ...env, FAIL_R: fail } });
  // Offsets 5, 50 and 100 are key "r"; the others spread over seven keys.
  const msgs = Array.from({ length: 101 }, (_, n) => {
    const k = n === 5 || n === 50 || n === 100 ? "r" : `k${n % 7}`;
    return { key: k, value: JSON.stringify({ k, n }) };
  });
  await broker.produce(TOPIC, msgs);
  const effects = () => queryRows<{ k: string; n: number }>(db, "SELECT k, n FROM effects");
  const committed = async () => {
    const admin = broker.kafka.admin();
    await admin.connect();
    try {
      return (await admin.fetchOffsets({ groupId: GROUP, topics: [TOPIC] }))[0]!.partitions[0]!.offset;
    } finally {
      await admin.disconnect();
    }
  };

  const first = start("1");
  await first.waitJoined();
  await waitUntil("98 messages done", () => effects().length >= 98 || undefined, { timeoutMs: 30_000 });
  await waitUntil("r:5 failed three times", () => calls("r").length >= 3 || undefined, { timeoutMs: 30_000 });
  expect(await committed()).toBe("5");
  expect(queryRows<{ next_offset: number }>(db, "SELECT next_offset FROM kexo_progress").map((r) => r.next_offset)).toEqual([5]);
  first.kill("SIGKILL");
  await first.exited();
  const failed = calls("r").length;

  const second = start("0");
  await second.waitJoined();
  await waitUntil("every message done", () => effects().length >= 101 || undefined, { timeoutMs: 30_000 });
  await waitUntil("the offset committed past the end", async () => (await committed()) === "101" || undefined, { timeoutMs: 10_000 });
  second.kill("SIGTERM");
  expect(await second.exited()).toBe(0);

  // Only r's messages ran again: r:5 first, on from its count, then r:50 and r:100.
  // (An attempt failed less than a group commit before the kill may count again.)
  const again = calls().filter((c) => c.pid === second.proc.pid);
  expect(again.map((c) => `${c.id}:${c.n}`)).toEqual(["r:5", "r:50", "r:100"]);
  expect(again[0]!.attempt).toBeOneOf([failed, failed + 1]);
  const counts = new Map<number, number>();
  for (const e of effects()) counts.set(e.n, (counts.get(e.n) ?? 0) + 1);
  expect([...counts].filter(([, c]) => c !== 1)).toEqual([]);
  expect(counts.size).toBe(101);
}, 60_000);
