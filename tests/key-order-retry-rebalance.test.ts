// Guarantees 5 and 7 with order: "key" across a rebalance: a keyed message waiting for its next try
// when a rebalance begins stops waiting at once (it is not running, so the rejoin does not wait out
// the grace for it, nor abort the other keys' running messages with it). It never runs beside the
// new epoch's copy of itself (the partition stayed) nor on a partition that went to another
// instance; and what the old owner finished above it is not run again by the new owner with its
// own journal.
import { expect, test } from "bun:test";
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { queryRows } from "./support/db.ts";
import { callsLog } from "./support/tmp.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "keys-retry-rebalance-in";
let broker: TestBroker;
let dir: string;

// Key r{p}'s first message fails while the file FAIL exists, retrying every 1–2 s, so a rebalance
// finds it waiting.
const HANDLER = `
import { defineHandler, v } from "kexo";
import { appendFileSync, existsSync } from "node:fs";

export default defineHandler({
  topics: ["${TOPIC}"],
  schema: v.object({ k: v.string(), n: v.number() }),
  order: "key",
  concurrency: 4,
  retry: { attempts: 100, initialDelayMs: 2000, maxDelayMs: 2000 },
  async setup(db) { await db.execute("CREATE TABLE IF NOT EXISTS effects (k TEXT, n INTEGER)"); },
  async handle(p, ctx) {
    appendFileSync(process.env.CALLS_LOG!, JSON.stringify({ id: p.k, n: p.n, attempt: ctx.attempt, pid: process.pid }) + "\\n");
    if (p.k.startsWith("r") && p.n === 0 && existsSync(process.env.FAIL!)) throw new Error("downstream down");
    await ctx.tx((db) => db.execute({ sql: "INSERT INTO effects (k, n) VALUES (?, ?)", args: [p.k, p.n] }));
  },
});
`;

withBroker({ [TOPIC]: 2, [`${TOPIC}.dlq`]: 1 }, { "keyed.ts": HANDLER }, (f) => ({ broker, dir } = f));

type Call = { id: string; n: number; attempt: number; pid: number };

test("a keyed message waiting for its next try at a rebalance runs only in the new epoch", async () => {
  const dbs = ["a", "b"].map((n) => join(dir, `${n}.db`)) as [string, string];
  const { env, calls } = callsLog<Call>(dir);
  const fail = join(dir, "FAIL");
  writeFileSync(fail, "");
  const start = (db: string) => new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), db), { env: { ...env, FAIL: fail } });
  const a = start(dbs[0]);
  await a.waitJoined();
  // Each partition opens with its retrying key r{p}; its later messages and key o{p} follow.
  const msgs = [];
  for (let n = 0; n < 5; n++) for (const p of [0, 1]) for (const k of [`r${p}`, `o${p}`]) msgs.push({ key: k, value: JSON.stringify({ k, n }), partition: p });
  await broker.produce(TOPIC, msgs);
  await waitUntil("r0 and r1 failed once", () => calls().filter((c) => c.id.startsWith("r")).length >= 2 || undefined);

  // B joins: one partition stays with A, the other moves to B, with r{p}:0 still failing.
  const b = start(dbs[1]);
  await b.waitJoined();
  await a.waitJoined(2);
  const rebalancedAt = calls().length;
  await sleep(5000);
  rmSync(fail);
  const effects = (db: string) => queryRows<{ k: string; n: number }>(db, "SELECT k, n FROM effects");
  await waitUntil("every message's effect", () => new Set(dbs.flatMap((db) => effects(db).map((e) => `${e.k}:${e.n}`))).size >= 20 || undefined, { timeoutMs: 20_000 });
  await sleep(1000);
  a.kill("SIGTERM");
  b.kill("SIGTERM");
  expect([await a.exited(), await b.exited()]).toEqual([0, 0]);

  // The rejoin waited for no retry: nothing was still running or waiting when A rejoined.
  expect(a.lines.filter((l) => l.msg === "rejoining before every keyed message finished; a new owner may run some of them again")).toEqual([]);
  const after = calls().slice(rebalancedAt);
  // After the rebalance each retrying key runs in one process only: its partition's owner.
  for (const k of ["r0", "r1"]) expect({ k, pids: new Set(after.filter((c) => c.id === k).map((c) => c.pid)).size }).toEqual({ k, pids: 1 });
  // Never two runs of one attempt of a message (the old epoch's beside the new one's).
  const attempts = calls().map((c) => `${c.pid}:${c.id}:${c.n}#${c.attempt}`);
  expect(attempts.filter((x, i) => attempts.indexOf(x) !== i)).toEqual([]);
  // Per key and process, messages start in order.
  const order = new Map<string, number[]>();
  for (const c of calls()) order.set(`${c.pid}:${c.id}`, [...(order.get(`${c.pid}:${c.id}`) ?? []), c.n]);
  for (const [k, ns] of order) expect({ k, ns }).toEqual({ k, ns: [...ns].sort((x, y) => x - y) });
  // Every message took effect once overall: the retrying ones, and the other keys' messages A
  // finished above the moved partition's lowest unfinished offset (B, with its own journal, learns
  // of them through the progress log and does not run them again; guarantee 7).
  const all = dbs.flatMap((db) => effects(db)).map((e) => `${e.k}:${e.n}`);
  expect(all.filter((x, i) => all.indexOf(x) !== i)).toEqual([]);
  expect(all.length).toBe(20);
}, 90_000);
