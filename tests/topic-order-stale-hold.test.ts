// Guarantee 5 with order: "topic" across instances with separate journals: a hold outlives its
// message no more. A waits on p0:0's next try when it leaves (SIGTERM); B takes the topic, runs
// p0:0 and commits past it; A comes back with its journal (p0:0's failed attempts, the progress
// log's `waiting` at p0:0) but cannot read the group's committed offsets at its join (OffsetFetch
// refused), so it trusts its own stale progress and holds the topic for p0:0 again, which Kafka
// never delivers again (A fetches p0 from B's commit). While p0 stays idle the topic's other
// partition must run all the same (the old code held it for good). Then, the same again, but p0's
// next message fails and waits for its next try: it holds the topic for real, also once the
// committed offsets (past p0:0) can be read again. Nothing of B's runs again.
import { expect, test } from "bun:test";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ApiKey } from "../src/dev/mock-cluster.ts";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { queryRows } from "./support/db.ts";
import { callsLog } from "./support/tmp.ts";
import { waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const HELD = "topic-stale-hold";
const COORDINATOR_LOAD_IN_PROGRESS = 14;
let broker: TestBroker;
let dir: string;

// A message fails while the file FAILS/ID exists, retrying every second.
const HANDLER = `
import { defineHandler, v } from "kexo";
import { appendFileSync, existsSync } from "node:fs";

export default defineHandler({
  topics: ["${HELD}"],
  schema: v.object({ id: v.string() }),
  order: "topic",
  retry: { attempts: 100, initialDelayMs: 1000, maxDelayMs: 1000 },
  async setup(db) { await db.execute("CREATE TABLE IF NOT EXISTS effects (id TEXT NOT NULL)"); },
  async handle(p, ctx) {
    const ok = !existsSync(process.env.FAILS + "/" + p.id);
    appendFileSync(process.env.CALLS_LOG, JSON.stringify({ id: p.id, attempt: ctx.attempt, pid: process.pid, ok }) + "\\n");
    if (!ok) throw new Error("downstream is down");
    await ctx.tx((db) => db.execute({ sql: "INSERT INTO effects (id) VALUES (?)", args: [p.id] }));
  },
});
`;

withBroker({ [HELD]: 2, [`${HELD}.dlq`]: 1 }, { "ordered.ts": HANDLER }, (f) => ({ broker, dir } = f));

type Call = { id: string; attempt: number; pid: number; ok: boolean };

test("a hold re-created from a stale journal (committed offsets unreadable at the join) does not block the topic, and a real one still does", async () => {
  const dbs = ["a", "b"].map((n) => join(dir, `${n}.db`)) as [string, string];
  const { env, calls } = callsLog<Call>(dir);
  const fails = join(dir, "fails");
  mkdirSync(fails);
  const failing = (id: string) => writeFileSync(join(fails, id), "");
  const start = (db: string) => new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), db), { env: { ...env, FAILS: fails } });
  const effects = (db: string) => queryRows<{ id: string }>(db, "SELECT id FROM effects").map((e) => e.id);
  const msg = (id: string) => ({ value: JSON.stringify({ id }), partition: Number(id[1]) });
  // A's reads of the group's committed offsets at its join are refused.
  const startBlind = async () => {
    const w = start(dbs[0]);
    w.onLog((l) => l.msg === "joined group", () => broker.cluster.pushRequestErrors(ApiKey.OffsetFetch, Array(3).fill(COORDINATOR_LOAD_IN_PROGRESS)));
    await w.waitJoined();
    await w.waitForLog("the committed offsets unreadable", (l) => l.msg.startsWith("cannot read the group's committed offsets"), 15_000);
    return w;
  };
  const stop = async (w: WorkerProcess) => {
    w.kill("SIGTERM");
    expect(await w.exited()).toBe(0);
  };

  // A: p0:0 fails and waits for its next try when A leaves.
  failing("p0:0");
  const a = start(dbs[0]);
  await a.waitJoined();
  await broker.produce(HELD, [msg("p0:0")]);
  await waitUntil("p0:0 failed twice in A", () => calls("p0:0").length >= 2 || undefined, { timeoutMs: 15_000 });
  await stop(a);

  // B: holds the topic for p0:0, runs it, commits past it, leaves.
  rmSync(join(fails, "p0:0"));
  const b = start(dbs[1]);
  await b.waitJoined();
  await waitUntil("p0:0 done in B", () => effects(dbs[1]).includes("p0:0") || undefined, { timeoutMs: 15_000 });
  await stop(b);
  const doneByB = calls().length;

  // A again, blind to Kafka's offsets, p0 idle: p1:0 must run.
  const a2 = await startBlind();
  await broker.produce(HELD, [msg("p1:0")]);
  const ran = await waitUntil("p1:0 done in A", () => effects(dbs[0]).includes("p1:0") || undefined, { timeoutMs: 15_000 }).catch((e: Error) => e);
  await stop(a2);
  expect(ran).toBe(true);

  // A once more, blind again, and p0:1 (past B's commit) fails: it holds the topic, p1:1 waits,
  // also after the offsets could be read again.
  failing("p0:1");
  await broker.produce(HELD, [msg("p0:1"), msg("p1:1")]);
  const a3 = await startBlind();
  await waitUntil("p0:1 failed in A", () => calls("p0:1").length >= 1 || undefined, { timeoutMs: 15_000 });
  await a3.waitForLog("the committed offsets read again", (l) => l.msg.startsWith("read the group's committed offsets again"), 20_000);
  await waitUntil("p0:1's later failures", () => calls("p0:1").length >= 3 || undefined, { timeoutMs: 15_000 });
  rmSync(join(fails, "p0:1"));
  await waitUntil("p1:1 done in A", () => effects(dbs[0]).includes("p1:1") || undefined, { timeoutMs: 15_000 });
  await stop(a3);

  const log = calls();
  const who = (pid: number) => (pid === a.proc.pid ? "A" : pid === b.proc.pid ? "B" : pid === a2.proc.pid ? "A2" : "A3");
  console.log(log.map((c) => `${who(c.pid)} ${c.id}#${c.attempt}${c.ok ? "" : " failed"}`).join("\n"));
  // p0:0 not again after B; p1:1 only once p0:1 succeeded.
  const after = log.slice(doneByB).map((c) => `${who(c.pid)} ${c.id}${c.ok ? "" : " failed"}`);
  const p01Failures = log.filter((c) => c.id === "p0:1" && !c.ok).length;
  expect(after).toEqual(["A2 p1:0", ...Array(p01Failures).fill("A3 p0:1 failed"), "A3 p0:1", "A3 p1:1"]);
  expect(dbs.flatMap(effects).sort()).toEqual(["p0:0", "p0:1", "p1:0", "p1:1"]);
}, 90_000);
