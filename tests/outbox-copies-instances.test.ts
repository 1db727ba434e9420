// Guarantee 6 with a downstream of several instances, each with its own journal: A emits records
// without a key and dies after the broker acknowledged a batch of them, before their outbox rows
// were deleted (crash point outbox.published), so its restart publishes that batch again. A copy
// goes to the partition of its first (the outbox places a keyless record by its kexo-id, not round
// robin), so the B instance that owns that partition and saw the id deduplicates it. Round robin
// sent copies to partitions the other instance owned, whose journal did not know the id: a second
// effect.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { countIn, queryRows } from "./support/db.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const IN = "copies-in";
const MID = "copies-mid";
const COUNT = 400;
let broker: TestBroker;
let dir: string;

const A = `
import { defineHandler, v } from "kexo";
export default defineHandler({
  topics: ["${IN}"],
  schema: v.object({ n: v.number() }),
  async handle(p, ctx) {
    ctx.emit("${MID}", { key: null, value: { n: p.n } });
  },
});
`;

const B = `
import { defineHandler, v } from "kexo";
export default defineHandler({
  topics: ["${MID}"],
  schema: v.object({ n: v.number() }),
  async setup(db) { await db.execute("CREATE TABLE IF NOT EXISTS effects (n INTEGER NOT NULL)"); },
  async handle(p, ctx) {
    await ctx.tx((db) => db.execute({ sql: "INSERT INTO effects (n) VALUES (?)", args: [p.n] }));
  },
});
`;

withBroker({ [IN]: 1, [MID]: 8 }, { "a/a.ts": A, "b/b.ts": B }, (f) => ({ broker, dir } = f));

test("copies of keyless emits republished after a crash are deduplicated by a downstream of two instances with their own journals", async () => {
  const dbA = join(dir, "a.db");
  const dbsB = [join(dir, "b1.db"), join(dir, "b2.db")];
  const startB = (db: string) => new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers", "b"), db));
  const b = [startB(dbsB[0]!)];
  await b[0]!.waitJoined();
  b.push(startB(dbsB[1]!));
  await b[1]!.waitJoined();
  await b[0]!.waitJoined(2);
  // The downstream's assignment holds still from here: each instance owns 4 of the 8 partitions.

  await broker.produce(IN, Array.from({ length: COUNT }, (_, n) => ({ value: JSON.stringify({ n }) })));
  const a1 = new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers", "a"), dbA), { env: { KEXO_CRASH_AT: "outbox.published" } });
  expect(await a1.exited()).toBe(137);
  const a2 = new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers", "a"), dbA));
  await a2.waitJoined();

  const effects = () => dbsB.flatMap((db) => queryRows<{ n: number }>(db, "SELECT n FROM effects").map((e) => e.n));
  await waitUntil(`${COUNT} distinct effects`, () => new Set(effects()).size >= COUNT || undefined, { timeoutMs: 30_000 });
  await waitUntil("A's outbox empty", () => countIn(dbA, "SELECT count(*) AS n FROM kexo_outbox") === 0 || undefined, { timeoutMs: 20_000 });
  await sleep(1500);
  a2.kill("SIGTERM");
  for (const w of b) w.kill("SIGTERM");
  expect([await a2.exited(), ...(await Promise.all(b.map((w) => w.exited())))]).toEqual([0, 0, 0]);

  // Both instances handled records, and some were copies (the crash republished a batch).
  expect(dbsB.map((db) => countIn(db, "SELECT count(*) AS n FROM effects") > 0)).toEqual([true, true]);
  const admin = broker.kafka.admin();
  await admin.connect();
  const published = (await admin.fetchTopicOffsets(MID)).reduce((n, p) => n + Number(p.high), 0);
  await admin.disconnect();
  expect(published).toBeGreaterThan(COUNT);
  const all = effects();
  const twice = [...new Set(all.filter((n, i) => all.indexOf(n) !== i))];
  console.log(JSON.stringify({ published, copies: published - COUNT, effects: all.length }));
  expect({ effects: all.length, twice }).toEqual({ effects: COUNT, twice: [] });
}, 90_000);
