// Guarantees 5 and 7 with order: "topic" on a journal shared through a libSQL server (a real sqld):
// a message waiting for its next try holds its topic; its instance is SIGKILLed (so it publishes
// nothing to the progress log), and the topic's next owner, sharing the journal, finds the failed
// attempt there (kexo_retries): it holds the topic, waits the rest of the backoff the failure set
// (next_try_at), and goes on with the next attempt number. The killed instance restarts with its
// client id. Every message's effect is in the shared database once, and no two messages of one
// topic ever run at once (a lock file per topic, taken by exclusive create, shows a clash).
import { describe, expect, test } from "bun:test";
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { PROGRESS_TOPIC } from "../src/kafka/progress-log.ts";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { countOn, sqldSupported, type TestSqld, withSqld } from "./support/sqld.ts";
import { callsLog } from "./support/tmp.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { type WorkerProcess as Worker, WorkerProcess } from "./support/worker.ts";

const HELD = "shared-topic-held";
const OTHER = "shared-topic-other";
const BACKOFF_MS = 16_000;
let broker: TestBroker;
let sqld: TestSqld;
let dir: string;

// p0:0 fails while the file FAIL exists; its next try comes 8–16 s after a failure.
const HANDLER = `
import { defineHandler, v } from "kexo";
import { appendFileSync, closeSync, existsSync, openSync, unlinkSync } from "node:fs";

export default defineHandler({
  topics: ["${HELD}", "${OTHER}"],
  schema: v.object({ id: v.string() }),
  order: "topic",
  retry: { attempts: 100, initialDelayMs: ${BACKOFF_MS}, maxDelayMs: ${BACKOFF_MS} },
  async setup(db) { await db.execute("CREATE TABLE IF NOT EXISTS effects (id TEXT NOT NULL, attempt INTEGER NOT NULL)"); },
  async handle(p, ctx) {
    const lock = process.env.LOCKS + "/" + ctx.message.topic;
    let mine = false;
    try { closeSync(openSync(lock, "wx")); mine = true; } catch {}
    const fail = p.id === "p0:0" && existsSync(process.env.FAIL);
    appendFileSync(process.env.CALLS_LOG, JSON.stringify({ id: p.id, topic: ctx.message.topic, attempt: ctx.attempt, pid: process.pid, ok: !fail, clash: !mine, t: Date.now() }) + "\\n");
    try {
      await new Promise((r) => setTimeout(r, 20));
      if (fail) throw new Error("downstream is down");
      await ctx.tx((db) => db.execute({ sql: "INSERT INTO effects (id, attempt) VALUES (?, ?)", args: [p.id, ctx.attempt] }));
    } finally {
      if (mine) unlinkSync(lock);
    }
  },
});
`;

type Call = { id: string; topic: string; attempt: number; pid: number; ok: boolean; clash: boolean; t: number };

describe.skipIf(!sqldSupported)("topic order on a shared libSQL journal", () => {
  // p0 of the held topic lives on broker 2, everything else on broker 1: slowing broker 2 down
  // when the topic moves makes its next owner fetch p1 and p2 before p0, so only knowing that
  // p0:0 holds the topic keeps them waiting.
  withBroker({ [HELD]: 3, [OTHER]: 1, [`${HELD}.dlq`]: 1 }, { "ordered.ts": HANDLER }, (f) => {
    ({ broker, dir } = f);
    for (const [t, p, id] of [[HELD, 0, 2], [HELD, 1, 1], [HELD, 2, 1], [OTHER, 0, 1], [`${HELD}.dlq`, 0, 1], [PROGRESS_TOPIC, 0, 1]] as const) {
      broker.cluster.setPartitionLeader(t, p, id);
    }
    broker.cluster.setGroupCoordinator(`kexo-ordered-${HELD}-${OTHER}`, 1);
  }, { brokers: 2 });
  withSqld((s) => (sqld = s));

  test("a retrying message's instance SIGKILLed: the next owner holds the topic from the shared journal, waits out the backoff, counts on", async () => {
    const db = sqld.client();
    const { env, calls } = callsLog<Call>(dir);
    const fail = join(dir, "FAIL");
    writeFileSync(fail, "");
    const locks = join(dir, "locks");
    await Bun.write(join(locks, ".keep"), "");
    const start = (name: string) =>
      new WorkerProcess(["run", "--brokers", broker.brokers, "--handlers", join(dir, "handlers"), "--db", sqld.url, "--http", "127.0.0.1:0", "--client-id", name], {
        env: { ...env, FAIL: fail, LOCKS: locks },
      });
    const joins = (w: Worker) => w.lines.filter((l) => l.msg === "joined group").map((l) => l.assignment as Record<string, number[]>);

    const a = start("a");
    await a.waitJoined();
    const b = start("b");
    await b.waitJoined();
    await a.waitJoined(2);
    // Whole topics per instance: one holds HELD, the other OTHER.
    const [owner, other, ownerName] = joins(a)[1]![HELD] ? [a, b, "a"] as const : [b, a, "b"] as const;
    expect(Object.keys(joins(owner).at(-1)!)).toEqual([HELD]);

    // p0:0 fails once in its owner, after the rebalance: no progress record says it waits.
    await broker.produce(HELD, [{ value: JSON.stringify({ id: "p0:0" }), partition: 0 }]);
    await waitUntil("p0:0's first attempt", () => calls("p0:0").length >= 1 || undefined);
    await broker.produce(HELD, [0, 1, 2].flatMap((p) => Array.from({ length: 3 }, (_, i) => ({ value: JSON.stringify({ id: `p${p}:${i + 1}` }), partition: p }))));
    await broker.produce(OTHER, [{ value: JSON.stringify({ id: "o:1" }) }]);
    const row = await waitUntil("p0:0's failure journaled", async () =>
      (await db.execute(`SELECT attempts, next_try_at FROM kexo_retries WHERE topic = '${HELD}' AND partition = 0`)).rows[0], { timeoutMs: 5000 });
    const due = Number(row.next_try_at);
    expect(Number(row.attempts)).toBe(1);
    await waitUntil("o:1 handled", () => calls("o:1").length >= 1 || undefined);
    expect(calls().filter((c) => c.topic === HELD).map((c) => c.id)).toEqual(["p0:0"]);

    // Its owner dies in the backoff; the other takes HELD once the session expired.
    const joined = joins(other).length;
    broker.cluster.setRtt(2, 1500);
    owner.kill("SIGKILL");
    await owner.exited();
    await other.waitJoined(joined + 1);
    expect(joins(other).at(-1)).toEqual({ [HELD]: [0, 1, 2], [OTHER]: [0] });
    rmSync(fail);
    // The killed instance comes back under its client id (its lease row taken over at once).
    const back = start(ownerName);
    await sleep(3000);
    broker.cluster.setRtt(2, 0);
    await back.waitJoined();
    await broker.produce(OTHER, [{ value: JSON.stringify({ id: "o:2" }) }]);
    const effects = async () => (await db.execute("SELECT id, attempt FROM effects")).rows.map((r) => ({ id: String(r.id), attempt: Number(r.attempt) }));
    await waitUntil("every message's effect", async () => (await effects()).length >= 10 + 2 || undefined, { timeoutMs: 40_000 });
    await sleep(500);
    back.kill("SIGTERM");
    other.kill("SIGTERM");
    expect([await back.exited(), await other.exited()]).toEqual([0, 0]);

    const log = calls();
    const who = (pid: number) => (pid === owner.proc.pid ? "owner†" : pid === other.proc.pid ? "other" : "back");
    console.log(log.map((c) => `${who(c.pid)} ${c.id}#${c.attempt}${c.ok ? "" : " failed"} +${c.t - due}`).join("\n"));
    // p0:0 first, alone: nothing else of HELD before its success, anywhere.
    const held = log.filter((c) => c.topic === HELD);
    const success = held.findIndex((c) => c.id === "p0:0" && c.ok);
    expect(held.slice(0, success + 1).map((c) => `${who(c.pid)} ${c.id}#${c.attempt}`)).toEqual(["owner† p0:0#1", "other p0:0#2"]);
    // The next attempt waited for the due time the failure journaled (the rest of its backoff).
    expect(held[success]!.t).toBeGreaterThanOrEqual(due - 50);
    // Exactly once overall, and never two messages of one topic at once.
    const effs = (await effects()).map((e) => e.id);
    expect(effs.filter((x, i) => effs.indexOf(x) !== i)).toEqual([]);
    expect(effs.length).toBe(12);
    expect(log.filter((c) => c.clash).map((c) => `${who(c.pid)} ${c.id}`)).toEqual([]);
    expect(await countOn(db, `SELECT count(*) AS n FROM kexo_retries`)).toBe(0);
  }, 90_000);
});
