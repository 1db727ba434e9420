// Guarantees 3 and 6: copies of one kexo-id on two partitions at once (an outbox's record published
// again onto another partition: a null key goes round robin) run one after the other, whatever the
// order, so the later copy finds the first one's completion and its ctx.tx writes are not applied
// twice. Before, two copies running side by side (order "key" and "partition") both missed the
// other's completion at their lookup, and the later one's ctx.tx, after the first completed, ran
// its body again. A copy waiting for the other lets go of what the other may need (key order's
// slot: with one slot, the first copy's next try needs it back).
import { expect, test } from "bun:test";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { countIn, queryRows } from "./support/db.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "copies-in";
const COUNT = 200;
let broker: TestBroker;
let dir: string;

const HANDLER = (order: string) => `
import { defineHandler, v } from "kexo";
export default defineHandler({
  topics: ["${TOPIC}"],
  order: "${order}",
  schema: v.object({ n: v.number() }),
  async setup(db) {
    await db.execute("CREATE TABLE IF NOT EXISTS effects_${order} (n INTEGER NOT NULL)");
  },
  async handle(p, ctx) {
    // A call that takes a while before the effect: the copies' runs overlap.
    await new Promise((r) => setTimeout(r, Math.random() * 20));
    await ctx.tx((db) => db.execute({ sql: "INSERT INTO effects_${order} (n) VALUES (?)", args: [p.n] }));
    return { n: p.n };
  },
});
`;

const ORDERS = ["key", "partition", "topic"] as const;

// order "key" with one slot, where every first attempt fails: the copy that runs second must wait
// for the first one without the slot, which the first one needs back for its next try (holding
// it, the two waited for each other for good).
const TOPIC_ONE = "copies-one-in";
const ONE_SLOT = `
import { defineHandler, v } from "kexo";
export default defineHandler({
  topics: ["${TOPIC_ONE}"],
  order: "key",
  concurrency: 1,
  retry: { attempts: 3, initialDelayMs: 200, maxDelayMs: 200 },
  schema: v.object({ n: v.number() }),
  async setup(db) {
    await db.execute("CREATE TABLE IF NOT EXISTS effects_one (n INTEGER NOT NULL)");
  },
  async handle(p, ctx) {
    if (ctx.attempt === 1) throw new Error("first attempt fails");
    await ctx.tx((db) => db.execute({ sql: "INSERT INTO effects_one (n) VALUES (?)", args: [p.n] }));
  },
});
`;
const ONE_COUNT = 5;

withBroker({ [TOPIC]: 2, [TOPIC_ONE]: 2 }, { ...Object.fromEntries(ORDERS.map((o) => [`${o}.ts`, HANDLER(o)])), "one.ts": ONE_SLOT }, (f) => ({ broker, dir } = f));

test("two copies of a kexo-id on two partitions have one effect, in every order", async () => {
  const messages = [];
  for (let n = 0; n < COUNT; n++) {
    for (const partition of [0, 1]) messages.push({ partition, key: null, value: JSON.stringify({ n }), headers: { "kexo-id": `up-${n}:emit:0` } });
  }
  await broker.produce(TOPIC, messages);
  const ones = [];
  for (let n = 0; n < ONE_COUNT; n++) {
    for (const partition of [0, 1]) ones.push({ partition, key: null, value: JSON.stringify({ n }), headers: { "kexo-id": `one-${n}:emit:0` } });
  }
  await broker.produce(TOPIC_ONE, ones);
  const db = join(dir, "journal.db");
  const w = new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), db));
  const handled = () => Math.min(...ORDERS.map((o) => countIn(db, `SELECT count(*) AS n FROM kexo_messages WHERE handler = '${o}'`)));
  await waitUntil("every id completed by each handler", () => handled() >= COUNT || undefined, { timeoutMs: 40_000 });
  await waitUntil("every id completed with one slot", () => countIn(db, "SELECT count(*) AS n FROM kexo_messages WHERE handler = 'one'") >= ONE_COUNT || undefined, { timeoutMs: 20_000 });
  // The second copies are all seen (deduplicated) before the worker stops.
  await sleep(1000);
  w.kill("SIGTERM");
  expect(await w.exited()).toBe(0);

  const twice = Object.fromEntries(ORDERS.map((o) => [o, queryRows<{ n: number; c: number }>(db, `SELECT n, count(*) AS c FROM effects_${o} GROUP BY n HAVING c != 1`)]));
  expect(twice).toEqual({ key: [], partition: [], topic: [] });
  for (const o of ORDERS) expect(countIn(db, `SELECT count(DISTINCT n) AS n FROM effects_${o}`)).toBe(COUNT);
  expect(queryRows(db, "SELECT n, count(*) AS c FROM effects_one GROUP BY n ORDER BY n")).toEqual(Array.from({ length: ONE_COUNT }, (_, n) => ({ n, c: 1 })));
});
