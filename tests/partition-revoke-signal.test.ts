// SPEC: ctx.signal is "aborted on shutdown or partition revoke", in partition order (the default)
// too. A handler still running when another instance joins holds up its instance's rejoin (kafkajs
// rejoins only once the batch returned); once the rebalance grace (7 s) runs out the partition is
// revoked (eager rebalancing: every partition is, at a rejoin) and may go to the other instance,
// which runs the message again. The old run must see ctx.signal aborted then, and a run that throws
// on it records nothing: the message takes effect once overall, by its next owner (the other
// instance, or this one's next epoch, whose runs get a signal that is not aborted).
import { expect, test } from "bun:test";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { queryRows } from "./support/db.ts";
import { callsLog } from "./support/tmp.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "revoke-signal-in";
const TOPIC_BACK = "revoke-signal-back";
const TOPIC_IGNORED = "revoke-signal-ignored";
let broker: TestBroker;
let dir: string;

/**
 * The first run of `slow` anywhere (the file HELD marks it) waits for ctx.signal, 30 s at most,
 * and says whether it saw the abort; every other run, and every other message, takes effect at
 * once. `elsewhere`: the handler of an instance that only holds partitions for a while (every run
 * fails and waits a minute for its next try, so nothing of it takes effect).
 */
function handler(topic: string, elsewhere = false, ignore = false): string {
  return `
import { defineHandler, v } from "kexo";
import { appendFileSync, writeFileSync } from "node:fs";

const log = (line) => appendFileSync(process.env.CALLS_LOG, JSON.stringify({ ...line, pid: process.pid }) + "\\n");

export default defineHandler({
  topics: ["${topic}"],
  groupId: "${topic}-group",
  schema: v.object({ k: v.string(), n: v.number() }),
  retry: { attempts: 100, initialDelayMs: 60_000, maxDelayMs: 60_000 },
  async setup(db) { await db.execute("CREATE TABLE IF NOT EXISTS effects (k TEXT, n INTEGER)"); },
  async handle(p, ctx) {
    if (${elsewhere}) {
      log({ id: p.k, event: "start", aborted: ctx.signal.aborted });
      throw new Error("not handled on this instance");
    }
    if (p.k === "slow") {
      let first = true;
      try { writeFileSync(process.env.HELD, "", { flag: "wx" }); } catch { first = false; }
      log({ id: "slow", event: "start", first, aborted: ctx.signal.aborted });
      if (first) {
        await new Promise((r) => {
          const t = setTimeout(r, 30_000);
          ctx.signal.addEventListener("abort", () => { clearTimeout(t); r(undefined); }, { once: true });
        });
        if (${ignore}) {
          // Carries on as if nothing happened, past the rebalance timeout: the group has moved on.
          await new Promise((r) => setTimeout(r, 5000));
          const refused = await ctx.tx((db) => db.execute({ sql: "INSERT INTO effects (k, n) VALUES (?, ?)", args: [p.k, p.n] })).then(() => null, (e) => e.name);
          log({ id: "slow", event: "end", aborted: ctx.signal.aborted, refused });
          return;
        }
        log({ id: "slow", event: "end", aborted: ctx.signal.aborted });
        if (ctx.signal.aborted) throw new Error("partition revoked");
      }
    }
    await ctx.tx((db) => db.execute({ sql: "INSERT INTO effects (k, n) VALUES (?, ?)", args: [p.k, p.n] }));
  },
});
`;
}

withBroker({ [TOPIC]: 2, [`${TOPIC}.dlq`]: 1, [TOPIC_BACK]: 2, [`${TOPIC_BACK}.dlq`]: 1, [TOPIC_IGNORED]: 2, [`${TOPIC_IGNORED}.dlq`]: 1 }, {}, (f) => ({ broker, dir } = f));

type Call = { id: string; event: "start" | "end"; first?: boolean; aborted: boolean; refused?: string | null; pid: number };

const effects = (db: string) => queryRows<{ k: string; n: number }>(db, "SELECT k, n FROM effects").map((e) => `${e.k}:${e.n}`);
const EVERY_EFFECT = ["slow:0", ...[1, 2, 3, 4, 5, 6].map((n) => `x:${n}`)];

/**
 * In `DIR/name`: handler files, a calls log and the HELD marker; `start` runs an instance with its
 * own journal. Instance A (a.db) is started and `topic` filled: partition 0 opens with `slow`, both
 * partitions carry messages that take effect at once. Returns once A runs `slow`.
 */
async function aRunningSlow(name: string, topic: string, ignore = false) {
  const here = join(dir, name);
  await Bun.write(join(here, "handlers", "slow.ts"), handler(topic, false, ignore));
  await Bun.write(join(here, "elsewhere", "slow.ts"), handler(topic, true));
  const { env, calls } = callsLog<Call>(here);
  const start = (db: string, handlers = "handlers") =>
    new WorkerProcess(runArgs(broker.brokers, join(here, handlers), join(here, db)), { env: { ...env, HELD: join(here, "HELD") } });
  const a = start("a.db");
  await a.waitJoined();
  const msgs = [{ key: "slow", value: JSON.stringify({ k: "slow", n: 0 }), partition: 0 }];
  for (let n = 1; n <= 6; n++) msgs.push({ key: `x${n}`, value: JSON.stringify({ k: "x", n }), partition: n % 2 });
  await broker.produce(topic, msgs);
  await waitUntil("A runs slow", () => calls("slow").find((c) => c.event === "start" && c.first) || undefined);
  return { here, calls, start, a };
}

/** Once every message took effect in A's or B's journal (and a moment more): both drain, exit 0. */
async function everyEffectThenStop(here: string, a: WorkerProcess, b: WorkerProcess, every = EVERY_EFFECT): Promise<string[]> {
  const dbs = [join(here, "a.db"), join(here, "b.db")];
  await waitUntil("every message's effect", () => new Set(dbs.flatMap(effects)).size >= every.length || undefined, { timeoutMs: 30_000 });
  await sleep(2000);
  a.kill("SIGTERM");
  b.kill("SIGTERM");
  expect([await a.exited(), await b.exited()]).toEqual([0, 0]);
  return dbs;
}

/** A's run of `slow` ends through its signal, well before its own 30 s bound. */
async function expectAbortedOn(a: WorkerProcess, calls: (id: string) => Call[]): Promise<void> {
  const ended = await waitUntil("A's run of slow ended", () => calls("slow").find((c) => c.event === "end") || undefined, { timeoutMs: 40_000 });
  expect({ pid: ended.pid, aborted: ended.aborted }).toEqual({ pid: a.proc.pid, aborted: true });
}

test("a handler still running past the rebalance grace sees ctx.signal aborted; its message takes effect once", async () => {
  const { here, calls, start, a } = await aRunningSlow("moved", TOPIC);
  const b = start("b.db");
  await b.waitJoined();
  await expectAbortedOn(a, calls);

  const dbs = await everyEffectThenStop(here, a, b);
  // Every message took effect once overall; `slow` by a run after the aborted one, with a live signal.
  expect(dbs.flatMap(effects).sort()).toEqual(EVERY_EFFECT);
  expect(calls("slow").filter((c) => c.event === "start").map((c) => c.aborted)).toEqual([false, false]);
}, 120_000);

test("the partition back on the same instance: the old run's signal aborted, the new epoch's run's not", async () => {
  const { here, calls, start, a } = await aRunningSlow("back", TOPIC_BACK);
  // B takes a share of the partitions for one epoch, handles nothing, and leaves: then every
  // partition, `slow`'s included, is A's again, in a later epoch.
  const b = start("b.db", "elsewhere");
  await b.waitJoined();
  await expectAbortedOn(a, calls);
  b.kill("SIGTERM");
  expect(await b.exited()).toBe(0);

  const db = join(here, "a.db");
  await waitUntil("every message's effect on A", () => effects(db).length >= EVERY_EFFECT.length || undefined, { timeoutMs: 40_000 });
  await sleep(1000);
  a.kill("SIGTERM");
  expect(await a.exited()).toBe(0);
  expect(effects(db).sort()).toEqual(EVERY_EFFECT);
  expect(effects(join(here, "b.db"))).toEqual([]);
  // A ran `slow` again after its aborted run, in a later epoch, with a signal not aborted.
  const mine = calls("slow").filter((c) => c.pid === a.proc.pid && c.event === "start");
  expect(mine.map((c) => ({ first: c.first, aborted: c.aborted }))).toEqual([{ first: true, aborted: false }, { first: false, aborted: false }]);
  expect(a.lines.filter((l) => l.msg === "joined group").length).toBeGreaterThanOrEqual(2);
}, 120_000);

test("a handler that ignores ctx.signal and carries on past the rebalance timeout: its late ctx.tx is refused, the message takes effect once", async () => {
  const { here, calls, start, a } = await aRunningSlow("ignored", TOPIC_IGNORED, true);
  // Partition 1's messages handled (and their offsets committed) in A before B joins. Fetched
  // only after slow's batch returned, past the rebalance timeout, A would run them as a member
  // the group had already dropped, beside B (once in CI). The fence refuses them now, once a
  // heartbeat was answered that the member is out (tests/unit/member-fence), and no batch starts
  // a message while a rebalance is known (tests/rebalance-drop-progress).
  await waitUntil("A handled partition 1", () => ["x:1", "x:3", "x:5"].every((x) => effects(join(here, "a.db")).includes(x)) || undefined, { timeoutMs: 20_000 });
  await sleep(1000);
  const b = start("b.db");
  await b.waitJoined();
  // Produced while slow's batch holds A's fetching: A fetches them only once that batch returned,
  // past the rebalance timeout, when the group has dropped A (its heartbeats answered so).
  const late = [7, 8, 9].map((n) => `x:${n}`);
  await broker.produce(TOPIC_IGNORED, [7, 8, 9].map((n) => ({ key: `x${n}`, value: JSON.stringify({ k: "x", n }), partition: 1 })));
  // A's run of slow carries on 5 s past its abort, past the 10 s rebalance timeout: by then the
  // group went on without A and slow's partition was B's, which ran slow itself.
  const ended = await waitUntil("A's run of slow ended", () => calls("slow").find((c) => c.event === "end") || undefined, { timeoutMs: 40_000 });
  expect({ pid: ended.pid, aborted: ended.aborted, refused: ended.refused }).toEqual({ pid: a.proc.pid, aborted: true, refused: "AbortError" });

  const dbs = await everyEffectThenStop(here, a, b, [...EVERY_EFFECT, ...late]);
  // Before, A's late ctx.tx committed slow's effect in a.db beside the one its next owner made.
  expect(dbs.flatMap(effects).sort()).toEqual([...EVERY_EFFECT, ...late].sort());
}, 120_000);
