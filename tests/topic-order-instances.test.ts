// Guarantees 5 and 7 with order: "topic" across instances with separate journals: one message at a
// time per topic across its partitions, each partition in offset order, while instances join and
// leave (SIGTERM) mid-stream, or while a long message runs as its topic moves; and every message
// handled once overall. Two topics in one handler. The handlers take a lock file per topic
// (exclusive create), so two messages of one topic running at once in different processes show up
// as a clash.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { queryRows } from "./support/db.ts";
import { callsLog, tempDir } from "./support/tmp.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const T1 = "topic-inst-a";
const T2 = "topic-inst-b";
const PER_TOPIC = 600;
const S1 = "topic-inst-slow-a";
const S2 = "topic-inst-slow-b";
let broker: TestBroker;
let dir: string;

const handler = (topics: string[]) => `
import { defineHandler, v } from "kexo";
import { appendFileSync, closeSync, openSync, unlinkSync } from "node:fs";

export default defineHandler({
  topics: ${JSON.stringify(topics)},
  schema: v.object({ n: v.number(), ms: v.optional(v.number()) }),
  order: "topic",
  concurrency: 8,
  async setup(db) { await db.execute("CREATE TABLE IF NOT EXISTS effects (topic TEXT NOT NULL, n INTEGER NOT NULL)"); },
  async handle(p, ctx) {
    const m = ctx.message;
    const lock = process.env.LOCKS + "/" + m.topic;
    let mine = false;
    try { closeSync(openSync(lock, "wx")); mine = true; } catch {}
    const line = (at) => JSON.stringify({ id: m.topic + ":" + p.n, topic: m.topic, partition: m.partition, offset: Number(m.offset), at, clash: !mine, pid: process.pid }) + "\\n";
    appendFileSync(process.env.CALLS_LOG, line("start"));
    try {
      await new Promise((r) => setTimeout(r, p.ms ?? 8));
      await ctx.tx((db) => db.execute({ sql: "INSERT INTO effects (topic, n) VALUES (?, ?)", args: [m.topic, p.n] }));
    } finally {
      appendFileSync(process.env.CALLS_LOG, line("end"));
      if (mine) unlinkSync(lock);
    }
  },
});
`;

withBroker({ [T1]: 4, [T2]: 2, [S1]: 2, [S2]: 2 }, { "ordered.ts": handler([T1, T2]) }, (f) => ({ broker, dir } = f));

type Call = { id: string; topic: string; partition: number; offset: number; at: "start" | "end"; clash: boolean; pid: number };

test("instances joining and leaving: one message at a time per topic overall, partitions in order, each message once", async () => {
  const dbs = ["a", "b", "c"].map((n) => join(dir, `${n}.db`)) as [string, string, string];
  const { env, calls } = callsLog<Call>(dir);
  const locks = join(dir, "locks");
  await Bun.write(join(locks, ".keep"), "");
  const start = (db: string) => new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), db), { env: { ...env, LOCKS: locks } });
  const effects = (db: string) => queryRows<{ topic: string; n: number }>(db, "SELECT topic, n FROM effects").map((e) => `${e.topic}:${e.n}`);

  const a = start(dbs[0]);
  await a.waitJoined();
  let produced = 0;
  const producing = (async () => {
    while (produced < PER_TOPIC) {
      for (const [t, parts] of [[T1, 4], [T2, 2]] as const) {
        await broker.produce(t, Array.from({ length: 20 }, (_, i) => ({ value: JSON.stringify({ n: produced + i }), partition: (produced + i) % parts })));
      }
      produced += 20;
      await sleep(300);
    }
  })();

  await sleep(1500);
  const b = start(dbs[1]);
  await b.waitJoined();
  await a.waitJoined(2);
  await sleep(1500);
  const c = start(dbs[2]);
  await c.waitJoined();
  await sleep(1500);
  a.kill("SIGTERM");
  expect(await a.exited()).toBe(0);
  await producing;
  const all = () => dbs.flatMap(effects);
  await waitUntil("every message's effect", () => new Set(all()).size >= 2 * PER_TOPIC || undefined, { timeoutMs: 30_000 });
  await sleep(500);
  b.kill("SIGTERM");
  c.kill("SIGTERM");
  expect([await b.exited(), await c.exited()]).toEqual([0, 0]);

  const log = calls();
  const per = dbs.map((db) => effects(db).length);
  console.log(`effects per instance: ${per.join(", ")}; clashes: ${log.filter((l) => l.clash && l.at === "start").length}`);
  // Per topic, in each process, strictly start/end of the same message.
  for (const pid of new Set(log.map((l) => l.pid))) {
    for (const t of [T1, T2]) {
      const mine = log.filter((l) => l.pid === pid && l.topic === t);
      for (let i = 0; i < mine.length; i += 2) expect([mine[i]!.at, mine[i + 1]?.at, mine[i + 1]?.id]).toEqual(["start", "end", mine[i]!.id]);
    }
  }
  // Each partition in offset order in each process, and across them: a partition's next owner
  // starts after what the last one ran.
  for (const t of [T1, T2]) {
    for (let p = 0; p < 4; p++) {
      const offsets = log.filter((l) => l.topic === t && l.partition === p && l.at === "start").map((l) => l.offset);
      expect({ t, p, offsets }).toEqual({ t, p, offsets: [...offsets].sort((x, y) => x - y) });
    }
  }
  // Every message took effect exactly once overall.
  const effs = all();
  expect(effs.filter((x, i) => effs.indexOf(x) !== i)).toEqual([]);
  expect(effs.length).toBe(2 * PER_TOPIC);
  // Never two messages of one topic at once, in any process (checked last: the checks above say
  // more when they fail too).
  expect(log.filter((l) => l.clash).map((l) => `${l.pid} ${l.id}`)).toEqual([]);
}, 90_000);

test("a long message running when its topic moves to a joining instance: the new owner starts the topic after it, and it runs once", async () => {
  const dbs = ["slow-a", "slow-b"].map((n) => join(dir, `${n}.db`)) as [string, string];
  const handlers = join(dir, "slow-handlers");
  await Bun.write(join(handlers, "slow.ts"), handler([S1, S2]));
  const { env, calls } = callsLog<Call>(tempDir());
  const locks = join(dir, "slow-locks");
  await Bun.write(join(locks, ".keep"), "");
  const start = (db: string) => new WorkerProcess(runArgs(broker.brokers, handlers, db), { env: { ...env, LOCKS: locks } });
  const effects = (db: string) => queryRows<{ topic: string; n: number }>(db, "SELECT topic, n FROM effects").map((e) => `${e.topic}:${e.n}`);
  const joins = (w: WorkerProcess) => w.lines.filter((l) => l.msg === "joined group").map((l) => l.assignment as Record<string, number[]>);

  const a = start(dbs[0]);
  await a.waitJoined();
  // S2's partition 0 opens with a 4 s message; A holds both topics until B joins, then keeps S1
  // (topics stay with their holder while the split stays even, by name) and S2 moves to B.
  await broker.produce(S2, [{ value: JSON.stringify({ n: 0, ms: 4000 }), partition: 0 }]);
  await waitUntil("the long message started", () => calls(`${S2}:0`).length >= 1 || undefined);
  await broker.produce(S2, Array.from({ length: 20 }, (_, i) => ({ value: JSON.stringify({ n: 1 + i }), partition: i % 2 })));
  await broker.produce(S1, Array.from({ length: 20 }, (_, i) => ({ value: JSON.stringify({ n: i }), partition: i % 2 })));
  const b = start(dbs[1]);
  await b.waitJoined();
  await a.waitJoined(2);
  const all = () => dbs.flatMap(effects);
  await waitUntil("every message's effect", () => new Set(all()).size >= 41 || undefined, { timeoutMs: 20_000 });
  await sleep(500);
  a.kill("SIGTERM");
  b.kill("SIGTERM");
  expect([await a.exited(), await b.exited()]).toEqual([0, 0]);

  // Whole topics per instance: A kept S1, B took S2.
  expect(joins(a)[1]).toEqual({ [S1]: [0, 1] });
  expect(joins(b)[0]).toEqual({ [S2]: [0, 1] });
  const log = calls();
  // The long message ran once, in A, to its end; B ran the rest of S2.
  expect(log.filter((l) => l.id === `${S2}:0`).map((l) => [l.pid, l.at])).toEqual([[a.proc.pid, "start"], [a.proc.pid, "end"]]);
  expect(new Set(log.filter((l) => l.topic === S2 && l.id !== `${S2}:0`).map((l) => l.pid))).toEqual(new Set([b.proc.pid]));
  const effs = all();
  expect(effs.filter((x, i) => effs.indexOf(x) !== i)).toEqual([]);
  expect(effs.length).toBe(41);
  expect(log.filter((l) => l.clash).map((l) => `${l.pid} ${l.id}`)).toEqual([]);
}, 60_000);
