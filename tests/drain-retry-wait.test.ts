// Partition and topic order: a SIGTERM while a message waits for its next try drains at once,
// exit 0 (tests/key-order-drain-retry.test.ts pins key order). The waiting message is not in
// flight: its partition is paused (and, in topic order, the topic's other partitions with it)
// and its batch returned, so the drain has nothing to wait for; its failed attempt is journaled
// and the restart goes on counting. Nothing after it is committed past it: after the restart
// every message takes effect exactly once.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { countIn, queryRows } from "./support/db.ts";
import { callsLog } from "./support/tmp.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { runArgs, WorkerProcess } from "./support/worker.ts";

const ORDERS = ["partition", "topic"] as const;
const SHUTDOWN_TIMEOUT_MS = 20_000;
let broker: TestBroker;
let dir: string;

// "first" fails its first attempt and waits 10-20 s for the next.
const handler = (order: string) => `
import { defineHandler, v } from "kexo";
import { appendFileSync } from "node:fs";

export default defineHandler({
  topics: ["drt-${order}"],
  schema: v.object({ id: v.string() }),
  order: "${order}",
  retry: { attempts: 3, initialDelayMs: 20000, maxDelayMs: 20000 },
  async setup(db) { await db.execute("CREATE TABLE IF NOT EXISTS effects (handler TEXT, id TEXT)"); },
  async handle(p, ctx) {
    appendFileSync(process.env.CALLS_LOG!, JSON.stringify({ id: "${order}:" + p.id, attempt: ctx.attempt, pid: process.pid }) + "\\n");
    if (p.id === "first" && ctx.attempt === 1) throw new Error("downstream is down");
    await ctx.tx((db) => db.execute({ sql: "INSERT INTO effects VALUES (?, ?)", args: ["${order}", p.id] }));
  },
});
`;

withBroker(
  Object.fromEntries(ORDERS.map((o) => [`drt-${o}`, 2])),
  Object.fromEntries(ORDERS.map((o) => [`${o}.ts`, handler(o)])),
  (f) => ({ broker, dir } = f),
);

type Call = { id: string; attempt: number; pid: number };

test("partition and topic order: SIGTERM while a message waits for its next try drains at once, exit 0", async () => {
  const db = join(dir, "journal.db");
  const { env, calls } = callsLog<Call>(dir);
  const start = () => new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), db, "--shutdown-timeout", String(SHUTDOWN_TIMEOUT_MS)), { env });
  const effects = () => queryRows<{ handler: string; id: string }>(db, "SELECT handler, id FROM effects").map((e) => `${e.handler}/${e.id}`);
  // Partition 0: first, then two behind it; partition 1: two (topic order: held up by first).
  const messages = [["first", 0], ["p0-b", 0], ["p0-c", 0], ["p1-a", 1], ["p1-b", 1]] as const;

  const w = start();
  await w.waitJoined(ORDERS.length);
  for (const o of ORDERS) await broker.produce(`drt-${o}`, [messages[0]].map(([id, partition]) => ({ value: JSON.stringify({ id }), partition })));
  await waitUntil("attempt 1 of both journaled", () => countIn(db, "SELECT count(*) AS n FROM kexo_retries WHERE attempts = 1") === ORDERS.length || undefined, { timeoutMs: 20_000 });
  for (const o of ORDERS) await broker.produce(`drt-${o}`, messages.slice(1).map(([id, partition]) => ({ value: JSON.stringify({ id }), partition })));
  // Partition order: the other partition's messages run; topic order: the topic is held.
  await waitUntil("partition 1 done in partition order", () => effects().filter((e) => e.startsWith("partition/p1-")).length === 2 || undefined, { timeoutMs: 10_000 });
  await sleep(500);
  expect(effects().sort()).toEqual(["partition/p1-a", "partition/p1-b"]);

  const t0 = performance.now();
  w.kill("SIGTERM");
  const code = await w.exited();
  const seconds = (performance.now() - t0) / 1000;
  console.log(`SIGTERM to exit: ${seconds.toFixed(1)} s, exit ${code}`);
  expect({ code, aborted: w.lines.some((l) => l.msg.startsWith("shutdown timeout ran out")) }).toEqual({ code: 0, aborted: false });
  expect(seconds).toBeLessThan(10);

  const again = start();
  await again.waitJoined(ORDERS.length);
  await waitUntil("every message's effect", () => effects().length >= ORDERS.length * messages.length || undefined, { timeoutMs: 30_000 });
  await sleep(300);
  again.kill("SIGTERM");
  expect(await again.exited()).toBe(0);

  expect(effects().sort()).toEqual(ORDERS.flatMap((o) => messages.map(([id]) => `${o}/${id}`)).sort());
  // The restart went on counting: attempt 2 (once the rest of its backoff had passed).
  for (const o of ORDERS) expect(calls(`${o}:first`).map((c) => c.attempt)).toEqual([1, 2]);
  expect(calls().filter((c) => !c.id.endsWith(":first")).every((c) => c.attempt === 1)).toBe(true);
  expect(calls().length).toBe(ORDERS.length * (messages.length + 1));
  expect(countIn(db, "SELECT count(*) AS n FROM kexo_retries")).toBe(0);
}, 90_000);
