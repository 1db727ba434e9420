// Guarantees 5 and 7 with order: "topic" across instances with separate journals, while a message
// waits for its next try: it holds its whole topic for the group, not only in its own instance.
// An instance joining does not run the topic's other messages beside it; when its instance leaves
// (SIGTERM in the backoff), the topic's next owner runs it before the rest of the topic; when the
// topic comes back to the first instance (its journal still holding the failed attempts of a
// message done elsewhere since), nothing holds it and nothing runs again; and every message takes
// effect once overall.
import { expect, test } from "bun:test";
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { PROGRESS_TOPIC } from "../src/kafka/progress-log.ts";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { queryRows } from "./support/db.ts";
import { callsLog } from "./support/tmp.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const HELD = "topic-retry-inst-held";
const OTHER = "topic-retry-inst-other";
let broker: TestBroker;
let dir: string;

// p0:0 fails while the file FAIL exists, retrying every 1–2 s.
const HANDLER = `
import { defineHandler, v } from "kexo";
import { appendFileSync, existsSync } from "node:fs";

export default defineHandler({
  topics: ["${HELD}", "${OTHER}"],
  schema: v.object({ id: v.string() }),
  order: "topic",
  retry: { attempts: 100, initialDelayMs: 2000, maxDelayMs: 2000 },
  async setup(db) { await db.execute("CREATE TABLE IF NOT EXISTS effects (id TEXT NOT NULL)"); },
  async handle(p, ctx) {
    appendFileSync(process.env.CALLS_LOG, JSON.stringify({ id: p.id, topic: ctx.message.topic, attempt: ctx.attempt, pid: process.pid, ok: !(p.id === "p0:0" && existsSync(process.env.FAIL)) }) + "\\n");
    if (p.id === "p0:0" && existsSync(process.env.FAIL)) throw new Error("downstream is down");
    await ctx.tx((db) => db.execute({ sql: "INSERT INTO effects (id) VALUES (?)", args: [p.id] }));
  },
});
`;

// p0 of the held topic lives on broker 2, everything else on broker 1: slowing broker 2 down when
// the topic moves makes its next owner fetch p1 and p2 before p0, so it must know that p0:0 holds
// the topic (else which partition it fetches first decides, and the old code passed now and then).
withBroker({ [HELD]: 3, [OTHER]: 1, [`${HELD}.dlq`]: 1 }, { "ordered.ts": HANDLER }, (f) => {
  ({ broker, dir } = f);
  for (const [t, p, id] of [[HELD, 0, 2], [HELD, 1, 1], [HELD, 2, 1], [OTHER, 0, 1], [`${HELD}.dlq`, 0, 1], [PROGRESS_TOPIC, 0, 1]] as const) {
    broker.cluster.setPartitionLeader(t, p, id);
  }
  broker.cluster.setGroupCoordinator(`kexo-ordered-${HELD}-${OTHER}`, 1);
}, { brokers: 2 });

type Call = { id: string; topic: string; attempt: number; pid: number; ok: boolean };

test("a message waiting for its next try holds its topic across instances: a join, then its owner's SIGTERM", async () => {
  const dbs = ["a", "b"].map((n) => join(dir, `${n}.db`)) as [string, string];
  const { env, calls } = callsLog<Call>(dir);
  const fail = join(dir, "FAIL");
  writeFileSync(fail, "");
  const start = (db: string) => new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), db), { env: { ...env, FAIL: fail } });
  const effects = (db: string) => queryRows<{ id: string }>(db, "SELECT id FROM effects").map((e) => e.id);
  const produce = (round: string) => broker.produce(HELD, [1, 2].flatMap((p) =>
    Array.from({ length: 3 }, (_, i) => ({ value: JSON.stringify({ id: `p${p}:${round}${i}` }), partition: p }))));

  const a = start(dbs[0]);
  await a.waitJoined();
  await broker.produce(HELD, [{ value: JSON.stringify({ id: "p0:0" }), partition: 0 }]);
  await waitUntil("p0:0's first attempt", () => calls("p0:0").length >= 1 || undefined);
  await produce("a");
  await broker.produce(OTHER, [{ value: JSON.stringify({ id: "o:a" }) }]);

  // B joins while p0:0 waits: the held topic's other partitions must not run, in A or in B.
  const b = start(dbs[1]);
  await b.waitJoined();
  await a.waitJoined(2);
  await broker.produce(OTHER, [{ value: JSON.stringify({ id: "o:b" }) }]);
  await produce("b");
  await waitUntil("o:b handled", () => calls("o:b").length >= 1 || undefined, { timeoutMs: 15_000 });
  await sleep(2500);

  // A leaves in p0:0's backoff: the held topic goes to B, which must run p0:0 before the rest.
  const attemptsInA = calls("p0:0").length;
  broker.cluster.setRtt(2, 1500);
  a.kill("SIGTERM");
  expect(await a.exited()).toBe(0);
  await b.waitJoined(2);
  await waitUntil("p0:0 tried in B", () => calls("p0:0").some((c) => c.pid === b.proc.pid) || undefined, { timeoutMs: 20_000 });
  broker.cluster.setRtt(2, 0);
  await sleep(1500);
  rmSync(fail);
  const all = () => dbs.flatMap(effects);
  await waitUntil("every message's effect", () => new Set(all()).size >= 1 + 12 + 2 || undefined, { timeoutMs: 20_000 });
  const doneInB = calls().length;

  // A comes back with its journal, then B leaves: both topics return to A, p0:0 done by B.
  const a2 = start(dbs[0]);
  await a2.waitJoined();
  await b.waitJoined(3);
  b.kill("SIGTERM");
  expect(await b.exited()).toBe(0);
  await a2.waitJoined(2);
  await produce("c");
  await broker.produce(HELD, [{ value: JSON.stringify({ id: "p0:c" }), partition: 0 }]);
  await waitUntil("the last messages' effects", () => new Set(all()).size >= 1 + 18 + 1 + 2 || undefined, { timeoutMs: 20_000 });
  await sleep(500);
  a2.kill("SIGTERM");
  expect(await a2.exited()).toBe(0);

  const log = calls();
  const who = (pid: number) => (pid === a.proc.pid ? "A" : pid === b.proc.pid ? "B" : "A2");
  console.log(log.map((c) => `${who(c.pid)} ${c.id}#${c.attempt}${c.ok ? "" : " failed"}`).join("\n"));
  expect(attemptsInA).toBeGreaterThanOrEqual(2);
  // The held topic: p0:0's attempts (in A, then in B) come first, nothing else of it in between.
  const held = log.filter((c) => c.topic === HELD).map((c) => c.id);
  const lastP00 = held.lastIndexOf("p0:0");
  expect(held.slice(0, lastP00 + 1).filter((id) => id !== "p0:0")).toEqual([]);
  expect(held.length).toBe(lastP00 + 1 + 12 + 7);
  // Back in A: only the new messages ran (p0:0 not again, nothing of B's again).
  expect(log.slice(doneInB).map((c) => `${who(c.pid)} ${c.id}`).sort()).toEqual(
    ["p0:c", ...[1, 2].flatMap((p) => [0, 1, 2].map((i) => `p${p}:c${i}`))].map((id) => `A2 ${id}`).sort());
  // The other topic flowed while p0:0 waited: before the rebalance in A, after it in B.
  expect(calls("o:a").map((c) => c.pid)).toEqual([a.proc.pid]);
  expect(calls("o:b").map((c) => c.pid)).toEqual([b.proc.pid]);
  // Every message took effect exactly once overall.
  const effs = all();
  expect(effs.filter((x, i) => effs.indexOf(x) !== i)).toEqual([]);
  expect(effs.length).toBe(1 + 18 + 1 + 2);
}, 90_000);
