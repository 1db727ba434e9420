// order: "key" with an instance that stalls (SIGSTOP, as a long pause or a frozen VM) past its
// session timeout while its key lanes hold a slow key's queue, on a journal shared through a
// libSQL server: the group gives its partition to the other instance, which runs the queue from
// the shared progress. Once the stalled one wakes (SIGCONT) and learns that the coordinator no
// longer knows it, it must start nothing more of it: before, it drained its lanes for the whole
// rebalance grace beside the new owner (the same key in two processes at once, and each message
// it ran there took effect twice: 20 of 30 here). What it was running when it stalled, and what it
// would start in the moment after waking, are fenced since (MemberFence, tests/stall-fence.test.ts:
// "twice: none" here, against the 2 before); a ctx.tx body under way at the stall is not, hence
// the bound of 2 below. A stall that lands inside the journal's group transaction (open a few ms
// at a time) outlasts the server's stream: B then stops with 75 at its first COMMIT on waking,
// nothing of that group acknowledged, as it should (it failed the test in about 1 run of 6).
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { countOn, sqldSupported, type TestSqld, withSqld } from "./support/sqld.ts";
import { callsLog } from "./support/tmp.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { WorkerProcess } from "./support/worker.ts";

const TOPIC = "shared-stall-keys";
const SLOW = 30;
let broker: TestBroker;
let sqld: TestSqld;
let dir: string;

// Slow messages take 300 ms and ignore ctx.signal (the worst case).
const HANDLER = `
import { defineHandler, v } from "kexo";
import { appendFileSync } from "node:fs";
export default defineHandler({
  topics: ["${TOPIC}"],
  schema: v.object({ k: v.string(), n: v.number(), ms: v.number() }),
  order: "key",
  concurrency: 4,
  async setup(db) { await db.execute("CREATE TABLE IF NOT EXISTS effects (k TEXT NOT NULL, n INTEGER NOT NULL, pid INTEGER NOT NULL)"); },
  async handle(p, ctx) {
    appendFileSync(process.env.CALLS_LOG, JSON.stringify({ id: p.k + ":" + p.n, pid: process.pid, t: Date.now() }) + "\\n");
    await new Promise((r) => setTimeout(r, p.ms));
    await ctx.tx((db) => db.execute({ sql: "INSERT INTO effects (k, n, pid) VALUES (?, ?, ?)", args: [p.k, p.n, process.pid] }));
  },
});
`;

type Call = { id: string; pid: number; t: number };

describe.skipIf(!sqldSupported)("key order on a shared libSQL journal, an instance stalled past its session", () => {
  withBroker({ [TOPIC]: 2 }, { "keyed.ts": HANDLER }, (f) => ({ broker, dir } = f));
  withSqld((s) => (sqld = s));

  test("the stalled instance, once it knows its partition went to another, starts none of its queued keyed messages", async () => {
    const db = sqld.client();
    const { env, calls } = callsLog<Call>(dir);
    const start = (name: string) =>
      new WorkerProcess(["run", "--brokers", broker.brokers, "--handlers", join(dir, "handlers"), "--db", sqld.url, "--http", "127.0.0.1:0", "--client-id", name], { env });
    const joins = (w: WorkerProcess) => w.lines.filter((l) => l.msg === "joined group");
    const a = start("a");
    await a.waitJoined();
    const b = start("b");
    await b.waitJoined();
    await a.waitJoined(2);
    // B's partition: a slow key's queue (30 × 300 ms), and quick keys.
    const pb = (joins(b)[0]!.assignment as Record<string, number[]>)[TOPIC]![0]!;
    await broker.produce(TOPIC, Array.from({ length: SLOW }, (_, n) => ({ key: "slow", value: JSON.stringify({ k: "slow", n, ms: 300 }), partition: pb })));
    await broker.produce(TOPIC, Array.from({ length: 20 }, (_, n) => ({ key: `q${n % 4}`, value: JSON.stringify({ k: `q${n % 4}`, n, ms: 5 }), partition: pb })));
    await waitUntil("B ran 3 slow messages", () => calls().filter((c) => c.id.startsWith("slow:")).length >= 3 || undefined);

    // B stalls past its session; A takes both partitions and runs the slow key's queue.
    const joinsOfA = joins(a).length;
    b.kill("SIGSTOP");
    await a.waitJoined(joinsOfA + 1, 30_000);
    await sleep(1500);
    b.kill("SIGCONT");
    const learned = await b.waitForLog("B told it is out of the group (or stopping: see expired below)", (l) =>
      /not aware of this member/.test(l.msg) || l.msg === "stopping after a fatal error", 20_000);
    await waitUntil("every effect", async () => (await countOn(db, "SELECT count(DISTINCT k || ':' || n) AS n FROM effects")) >= SLOW + 20 || undefined, { timeoutMs: 40_000 });
    await sleep(2000);
    a.kill("SIGTERM");
    b.kill("SIGTERM");
    // A stall that lands inside the journal's group transaction (open for a few ms at a time)
    // outlasts the server's stream: the first COMMIT after waking fails, nothing of that group was
    // acknowledged, and B stops with 75 (restart me), saying so. Any other way out is a failure.
    const expired = b.lines.some((l) => l.msg === "stopping after a fatal error" && /STREAM_EXPIRED.*was this process paused/.test(JSON.stringify(l.error)));
    if (expired) console.log("B's journal transaction expired over the stall: B exits 75");
    expect([await a.exited(), await b.exited()]).toEqual([0, expired ? 75 : 0]);

    const who = (pid: number) => (pid === a.proc.pid ? "A" : "B");
    const log = calls();
    const learnedAt = Date.parse(String(learned.time));
    // B's next join (it may get its partition back then, and rightly run what is left).
    const rejoinedAt = Date.parse(String(joins(b).find((l) => Date.parse(String(l.time)) > learnedAt)?.time ?? new Date(8.64e15).toISOString()));
    console.log(log.filter((c) => c.id.startsWith("slow:")).map((c) => `${who(c.pid)} ${c.id} ${c.t - learnedAt}`).join("\n"));
    // Nothing started in B between learning that it is out and joining again.
    expect(log.filter((c) => c.pid === b.proc.pid && c.t > learnedAt && c.t < rejoinedAt).map((c) => c.id)).toEqual([]);
    // Twice only what B had started before it learned (running when it stalled, or started as it woke).
    const startedBefore = new Set(log.filter((c) => c.pid === b.proc.pid && c.t <= learnedAt).map((c) => c.id));
    const twice = (await db.execute("SELECT k || ':' || n AS id, count(*) AS c FROM effects GROUP BY id HAVING c > 1")).rows.map((r) => String(r.id));
    console.log(`twice: ${twice.join(", ") || "none"}`);
    expect(twice.filter((id) => !startedBefore.has(id))).toEqual([]);
    expect(twice.length).toBeLessThanOrEqual(2);
    expect(await countOn(db, "SELECT count(DISTINCT k || ':' || n) AS n FROM effects")).toBe(SLOW + 20);
  }, 60_000);
});
