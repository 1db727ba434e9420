// Guarantee 5 with order: "topic": a message waiting for its next try holds up its whole topic,
// every partition, not only its own, also across a SIGKILL in its backoff and the restart: no
// other message of the topic runs between its first attempt and its outcome.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { countIn, queryRows } from "./support/db.ts";
import { callsLog } from "./support/tmp.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "topic-retry-in";
const OTHER = "topic-retry-other";
let broker: TestBroker;
let dir: string;

// p0:0 fails its first two attempts; the retry waits 1.5–3 s (equal jitter on 3 s).
const HANDLER = `
import { defineHandler, v } from "kexo";
import { appendFileSync } from "node:fs";

export default defineHandler({
  topics: ["${TOPIC}", "${OTHER}"],
  schema: v.object({ id: v.string() }),
  order: "topic",
  retry: { attempts: 4, initialDelayMs: 3000, maxDelayMs: 3000 },
  async setup(db) { await db.execute("CREATE TABLE IF NOT EXISTS effects (id TEXT)"); },
  async handle(p, ctx) {
    appendFileSync(process.env.CALLS_LOG!, JSON.stringify({ id: p.id, topic: ctx.message.topic, attempt: ctx.attempt, pid: process.pid }) + "\\n");
    if (p.id === "p0:0" && ctx.attempt < 3) throw new Error("downstream is down");
    await ctx.tx((db) => db.execute({ sql: "INSERT INTO effects (id) VALUES (?)", args: [p.id] }));
  },
});
`;

withBroker({ [TOPIC]: 3, [OTHER]: 1, [`${TOPIC}.dlq`]: 1 }, { "ordered.ts": HANDLER }, (f) => ({ broker, dir } = f));

type Call = { id: string; topic: string; attempt: number; pid: number };

test("a retrying message holds up every partition of its topic, across a SIGKILL in its backoff", async () => {
  const db = join(dir, "journal.db");
  const { env, calls } = callsLog<Call>(dir);
  const start = () => new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), db), { env });
  const produce = (round: number) => broker.produce(TOPIC, [1, 2].flatMap((p) =>
    Array.from({ length: 5 }, (_, i) => ({ value: JSON.stringify({ id: `p${p}:${round}-${i}` }), partition: p }))));

  const first = start();
  await first.waitJoined();
  await broker.produce(TOPIC, [{ value: JSON.stringify({ id: "p0:0" }), partition: 0 }]);
  await waitUntil("p0:0's first attempt", () => calls("p0:0").length >= 1 || undefined);
  // Produced while p0:0 waits: partitions 1 and 2 must wait too; the other topic does not.
  await produce(1);
  await broker.produce(OTHER, [{ value: JSON.stringify({ id: "other" }) }]);
  await waitUntil("p0:0's second attempt journaled", () =>
    countIn(db, "SELECT count(*) AS n FROM kexo_retries WHERE attempts = 2") === 1 || undefined, { timeoutMs: 20_000 });
  first.kill("SIGKILL");
  await first.exited();
  await produce(2);

  const second = start();
  await second.waitJoined();
  const effects = () => queryRows<{ id: string }>(db, "SELECT id FROM effects").map((r) => r.id);
  await waitUntil("every message's effect", () => effects().length >= 22 || undefined, { timeoutMs: 30_000 });
  await sleep(500);
  second.kill("SIGTERM");
  expect(await second.exited()).toBe(0);

  const mine = calls().filter((c) => c.topic === TOPIC).map((c) => `${c.id}#${c.attempt}`);
  // p0:0's attempts come first, one after the other, then the rest of the topic.
  expect(mine.slice(0, 3)).toEqual(["p0:0#1", "p0:0#2", "p0:0#3"]);
  expect(mine.length).toBe(3 + 20);
  // The other topic was not held: it ran while p0:0 waited, before the kill.
  expect(calls("other").map((c) => c.pid)).toEqual([first.proc.pid]);
  // Each message took effect once.
  expect(effects().length).toBe(new Set(effects()).size);
}, 90_000);
