// Guarantee 1 without completion rows: a handler that returns nothing (default dedup id, partition
// order) is recorded by partition progress alone, and after SIGKILLs and restarts its ctx.tx
// effects still appear exactly once.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { countIn } from "./support/db.ts";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "noresult-in";
// Enough that the third SIGKILL (at 4500 effects) still lands mid-stream at ≈ 70k msg/s.
const COUNT = 60_000;
let broker: TestBroker;
let dir: string;

const HANDLER = `
import { defineHandler, v } from "kexo";
export default defineHandler({
  topics: ["${TOPIC}"],
  schema: v.object({ n: v.number() }),
  async setup(db) {
    // No primary key: a duplicate insert would show up as a second row.
    await db.execute("CREATE TABLE IF NOT EXISTS effects (id TEXT NOT NULL)");
  },
  async handle(p, ctx) {
    await ctx.tx((db) => db.execute({ sql: "INSERT INTO effects (id) VALUES (?)", args: [ctx.id] }));
  },
});
`;

withBroker({ [TOPIC]: 4 }, { "noresult.ts": HANDLER }, async (f) => {
  ({ broker, dir } = f);
  await broker.produce(TOPIC, Array.from({ length: COUNT }, (_, i) => ({ value: JSON.stringify({ n: i }) })));
});

test("no-result handlers: exactly-once ctx.tx effects across SIGKILLs, with few or no completion rows", async () => {
  const db = join(dir, "journal.db");
  const effects = () => countIn(db, "SELECT count(*) AS n FROM effects");
  const start = () => new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), db));
  for (const threshold of [1500, 3000, 4500]) {
    const w = start();
    await w.waitJoined();
    await waitUntil(`${threshold} effects`, () => effects() >= threshold || undefined, { timeoutMs: 60_000, intervalMs: 5 });
    await sleep(Math.floor(Math.random() * 20));
    w.kill("SIGKILL");
    await w.exited();
  }
  expect(effects()).toBeLessThan(COUNT);

  const last = start();
  await last.waitJoined();
  await waitUntil("all effects", () => effects() >= COUNT || undefined, { timeoutMs: 90_000 });
  await sleep(500);
  last.kill("SIGTERM");
  expect(await last.exited()).toBe(0);

  expect(countIn(db, "SELECT count(DISTINCT id) AS n FROM effects")).toBe(COUNT);
  expect(countIn(db, "SELECT count(*) AS n FROM (SELECT id FROM effects GROUP BY id HAVING count(*) > 1)")).toBe(0);
  // Rows are left only where a COMMIT ran before the consumer moved progress past the message.
  const rows = countIn(db, "SELECT count(*) AS n FROM kexo_messages");
  console.log(`completion rows: ${rows} of ${COUNT}`);
  expect(rows).toBeLessThan(3000);
}, 240_000);
