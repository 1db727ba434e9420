// Guarantees 1, 4, 5 and 7 with order: "key" on a journal shared through a libSQL server (a real
// sqld): three instances consume one keyed stream with slow keys (others overtake them, so work
// finishes above the committed offset) and retrying messages (their failed attempts and backoff in
// kexo_retries); one instance is SIGKILLed and restarted, another leaves with SIGTERM and comes
// back. Every message's ctx.tx effect is in the shared database exactly once, each key's effects
// were committed in key order, and a retrying message's attempt count goes on across instances.
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { countOn, sqldSupported, type TestSqld, withSqld } from "./support/sqld.ts";
import { callsLog } from "./support/tmp.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { WorkerProcess } from "./support/worker.ts";

const TOPIC = "shared-keys-in";
const COUNT = 1500;
const KEYS = 30;
let broker: TestBroker;
let sqld: TestSqld;
let dir: string;

// Slow: every 40th message takes 400 ms (its key's later messages wait, other keys overtake it).
// Retrying: every 97th message fails its first two calls, wherever they run (marker files).
const HANDLER = `
import { defineHandler, v } from "kexo";
import { appendFileSync, closeSync, existsSync, openSync } from "node:fs";

export default defineHandler({
  topics: ["${TOPIC}"],
  schema: v.object({ k: v.string(), seq: v.number(), n: v.number() }),
  order: "key",
  concurrency: 8,
  retry: { attempts: 20, initialDelayMs: 1500, maxDelayMs: 1500 },
  async setup(db) { await db.execute("CREATE TABLE IF NOT EXISTS effects (k TEXT NOT NULL, seq INTEGER NOT NULL, n INTEGER NOT NULL, attempt INTEGER NOT NULL)"); },
  async handle(p, ctx) {
    const log = (ev) => appendFileSync(process.env.CALLS_LOG, JSON.stringify({ id: String(p.n), k: p.k, seq: p.seq, attempt: ctx.attempt, pid: process.pid, ev, t: Date.now() }) + "\\n");
    log("start");
    if (p.n % 97 === 11) {
      for (const i of [1, 2]) {
        const f = process.env.MARKS + "/" + p.n + "." + i;
        if (!existsSync(f)) { closeSync(openSync(f, "w")); log("fail"); throw new Error("downstream down"); }
      }
    }
    if (p.n % 40 === 5) await new Promise((r) => setTimeout(r, 400));
    await ctx.tx((db) => db.execute({ sql: "INSERT INTO effects (k, seq, n, attempt) VALUES (?, ?, ?, ?)", args: [p.k, p.seq, p.n, ctx.attempt] }));
    log("ok");
  },
});
`;

type Call = { id: string; k: string; seq: number; attempt: number; pid: number; ev: "start" | "fail" | "ok"; t: number };

describe.skipIf(!sqldSupported)("key order on a shared libSQL journal", () => {
  withBroker({ [TOPIC]: 6, [`${TOPIC}.dlq`]: 1 }, { "keyed.ts": HANDLER }, (f) => ({ broker, dir } = f));
  withSqld((s) => (sqld = s));

  test("three instances, one SIGKILLed and restarted, one leaving and rejoining: exactly once, in key order, attempts go on", async () => {
    const db = sqld.client();
    const count = () => countOn(db, "SELECT count(*) AS n FROM effects");
    const { env, calls } = callsLog<Call>(dir);
    const marks = join(dir, "marks");
    await Bun.write(join(marks, ".keep"), "");
    const start = (name: string) =>
      new WorkerProcess(["run", "--brokers", broker.brokers, "--handlers", join(dir, "handlers"), "--db", sqld.url, "--http", "127.0.0.1:0", "--client-id", name], {
        env: { ...env, MARKS: marks },
      });

    let a = start("a");
    let b = start("b");
    const c = start("c");
    await Promise.all([a.waitJoined(), b.waitJoined(), c.waitJoined()]);
    await sleep(1000);
    const seqs = new Map<string, number>();
    const producing = (async () => {
      for (let sent = 0; sent < COUNT; sent += 150) {
        await broker.produce(TOPIC, Array.from({ length: 150 }, (_, i) => {
          const n = sent + i;
          const k = `k${n % KEYS}`;
          const seq = seqs.get(k) ?? 0;
          seqs.set(k, seq + 1);
          return { key: k, value: JSON.stringify({ k, seq, n }) };
        }));
        await sleep(250);
      }
    })();

    await waitUntil("300 effects", async () => (await count()) >= 300 || undefined, { timeoutMs: 60_000, intervalMs: 10 });
    const killedAt = Date.now();
    a.kill("SIGKILL");
    await a.exited();
    const killedA = a.proc.pid;
    await waitUntil("the others go on", async () => (await count()) >= 700 || undefined, { timeoutMs: 60_000 });
    a = start("a");
    await a.waitJoined();
    await waitUntil("1000 effects", async () => (await count()) >= 1000 || undefined, { timeoutMs: 60_000 });
    b.kill("SIGTERM");
    expect(await b.exited()).toBe(0);
    b = start("b");
    await b.waitJoined();
    await producing;
    await waitUntil(`${COUNT} effects`, async () => (await count()) >= COUNT || undefined, { timeoutMs: 60_000 });
    await sleep(1000);
    for (const w of [a, b, c]) w.kill("SIGTERM");
    expect([await a.exited(), await b.exited(), await c.exited()]).toEqual([0, 0, 0]);

    // Exactly once.
    const twice = (await db.execute("SELECT n, count(*) AS c FROM effects GROUP BY n HAVING c > 1")).rows;
    if (twice.length > 0) console.log(`handled twice: ${twice.map((r) => `${r.n}×${r.c}`).join(", ")}`);
    expect(twice.length).toBe(0);
    expect(await countOn(db, "SELECT count(DISTINCT n) AS n FROM effects")).toBe(COUNT);
    // Key order: each key's effects were committed in its order (rowid order on the server).
    const rows = (await db.execute("SELECT k, seq FROM effects ORDER BY rowid")).rows as unknown as { k: string; seq: number }[];
    const byKey = new Map<string, number[]>();
    for (const r of rows) byKey.set(r.k, [...(byKey.get(r.k) ?? []), Number(r.seq)]);
    const outOfOrder = [...byKey].filter(([, s]) => s.some((x, i) => i > 0 && x < s[i - 1]!)).map(([k, s]) => `${k}: ${s.join(",")}`);
    expect(outOfOrder).toEqual([]);
    // Per key, in every process: a message starts only after the key's previous one succeeded
    // somewhere (a SIGKILLed process's own runs excepted: its uncommitted work is redone).
    const log = calls();
    const okSeen = new Map<string, number>();
    const early: string[] = [];
    for (const c of log) {
      if (c.ev === "ok") okSeen.set(c.k, Math.max(okSeen.get(c.k) ?? -1, c.seq));
      if (c.ev === "start" && c.pid !== killedA && c.seq > 0 && (okSeen.get(c.k) ?? -1) < c.seq - 1) early.push(`${c.pid} ${c.k}:${c.seq}`);
    }
    expect(early).toEqual([]);
    // Retrying messages: the attempt count never goes back (it goes on in the next owner), and
    // a next attempt waits its backoff (at least half of 1.5 s, as jitter allows).
    const retrying = [...new Set(log.filter((c) => Number(c.id) % 97 === 11).map((c) => c.id))];
    expect(retrying.length).toBe(Math.ceil((COUNT - 11) / 97));
    const problems: string[] = [];
    for (const id of retrying) {
      const starts = log.filter((c) => c.id === id && c.ev === "start");
      const summary = starts.map((c) => `${c.pid === killedA ? "A†" : c.pid}#${c.attempt}`).join(" ");
      for (let i = 1; i < starts.length; i++) {
        if (starts[i]!.attempt < starts[i - 1]!.attempt) problems.push(`${id}: attempts went back: ${summary}`);
        if (starts[i]!.attempt > starts[i - 1]!.attempt && starts[i]!.t - starts[i - 1]!.t < 700) problems.push(`${id}: no backoff: ${summary}`);
      }
      if (new Set(starts.map((c) => c.pid)).size > 1) console.log(`moved: ${id} ${log.filter((c) => c.id === id).map((c) => `${c.pid === killedA ? "A†" : c.pid}#${c.attempt} ${c.ev} ${c.t - killedAt}`).join(" | ")}`);
      const ok = log.filter((c) => c.id === id && c.ev === "ok").at(-1);
      // Two failed calls before it, unless the SIGKILL fell between a failure and its journal
      // commit: that attempt was cut by the crash, and is made again.
      const cut = starts.some((c) => c.pid === killedA);
      if (!ok || ok.attempt < (cut ? 2 : 3)) problems.push(`${id}: succeeded at attempt ${ok?.attempt}: ${summary}`);
    }
    expect(problems).toEqual([]);
  }, 120_000);
});
