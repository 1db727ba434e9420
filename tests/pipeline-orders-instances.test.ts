// Guarantees 6, 7 and 5 along a chain when the upstream runs as several instances with separate
// journals: A (order "key", some keys retrying) emits to a middle topic keeping each input's key;
// B consumes it as Bk (order "key") and Bt (order "topic"). While inputs flow, a second instance of
// A joins, leaves (SIGTERM), joins again, and A and B are SIGKILLed and restarted. Key order's
// offsets finished above the committed one go to the next owner through the progress log, and what
// an instance ran again is deduplicated downstream on kexo-id. At the end every emitted record has
// exactly one effect in each of Bk and Bt, per key in A's input order, nothing was dead-lettered,
// and both of A's outboxes are empty.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { countIn, queryRows } from "./support/db.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const IN = "pipe-inst-in";
const MID = "pipe-inst-mid";
const COUNT = 3000;
const KEYS = 24;
let broker: TestBroker;
let dir: string;

/** Input n's Kafka key: one in ten is null (all null keys are one key in A). */
const keyOf = (n: number) => (n % 10 === 9 ? null : `k${n % KEYS}`);
/** Records A emits: one per input, a second one (b = 1) for every seventh. */
const EXPECTED = COUNT + Math.ceil(COUNT / 7);

// Every 41st input fails twice (waiting 100–400 ms between tries, across rebalances too); every
// 16th takes 20 ms, so other keys finish above it.
const A = `
import { defineHandler, v } from "kexo";
export default defineHandler({
  topics: ["${IN}"],
  order: "key",
  concurrency: 8,
  schema: v.object({ n: v.number() }),
  retry: { attempts: 8, initialDelayMs: 100, maxDelayMs: 400 },
  async handle(p, ctx) {
    if (p.n % 41 === 0 && ctx.attempt <= 2) throw new Error("fails twice");
    await new Promise((r) => setTimeout(r, p.n % 16 === 0 ? 20 : 1));
    const key = ctx.message.key;
    ctx.emit("${MID}", { key, value: { n: p.n, b: 0 } });
    if (p.n % 7 === 0) ctx.emit("${MID}", { key, value: { n: p.n, b: 1 } });
  },
});
`;

const B = (order: "key" | "topic", table: string, failEvery: number) => `
import { defineHandler, v } from "kexo";
export default defineHandler({
  topics: ["${MID}"],
  order: "${order}",
  concurrency: 8,
  schema: v.object({ n: v.number(), b: v.number() }),
  retry: { attempts: 6, initialDelayMs: 20, maxDelayMs: 100 },
  async setup(db) {
    await db.execute("CREATE TABLE IF NOT EXISTS ${table} (seq INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER NOT NULL, b INTEGER NOT NULL, k TEXT)");
  },
  async handle(p, ctx) {
    if (p.n % ${failEvery} === 0 && ctx.attempt === 1) throw new Error("first attempt fails");
    const k = ctx.message.key === null ? null : ctx.message.key.toString();
    await ctx.tx((db) => db.execute({ sql: "INSERT INTO ${table} (n, b, k) VALUES (?, ?, ?)", args: [p.n, p.b, k] }));
  },
});
`;

withBroker({ [IN]: 4, [MID]: 4 }, {
  "a/a.ts": A,
  "b/bk.ts": B("key", "effects_k", 29),
  "b/bt.ts": B("topic", "effects_t", 37),
}, (f) => ({ broker, dir } = f));

type Effect = { seq: number; n: number; b: number; k: string | null };

/** Problems with one handler's effects: records without exactly one effect, keys out of A's input order. */
function check(db: string, table: string): { missing: number; twice: string[]; outOfOrder: string[] } {
  const effects = queryRows<Effect>(db, `SELECT seq, n, b, k FROM ${table} ORDER BY seq`);
  const seen = new Map<string, number>();
  for (const e of effects) seen.set(`${e.n}.${e.b}`, (seen.get(`${e.n}.${e.b}`) ?? 0) + 1);
  let missing = 0;
  for (let n = 0; n < COUNT; n++) for (const b of n % 7 === 0 ? [0, 1] : [0]) if (!seen.has(`${n}.${b}`)) missing++;
  const twice = [...seen].filter(([, c]) => c !== 1).map(([r, c]) => `${r}×${c}`);
  const last = new Map<string, Effect>();
  const outOfOrder: string[] = [];
  for (const e of effects) {
    if (e.k === null) continue;
    const prev = last.get(e.k);
    if (prev && (prev.n > e.n || (prev.n === e.n && prev.b >= e.b))) outOfOrder.push(`${e.k}: ${prev.n}.${prev.b} then ${e.n}.${e.b}`);
    last.set(e.k, e);
  }
  return { missing, twice, outOfOrder };
}

test("A (order key, two instances with their own journals) → topic → B (order key, order topic): one effect per record, per key in order", async () => {
  const [dbA1, dbA2, dbB] = ["a1", "a2", "b"].map((n) => join(dir, `${n}.db`)) as [string, string, string];
  const start = (name: "a" | "b", db: string) => new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers", name), db));
  const effects = () => Math.min(countIn(dbB, "SELECT count(*) AS n FROM effects_k"), countIn(dbB, "SELECT count(*) AS n FROM effects_t"));
  const joins = (w: WorkerProcess) => w.lines.filter((l) => l.msg === "joined group").length;

  let b = start("b", dbB);
  let a1 = start("a", dbA1);
  await Promise.all([a1.waitJoined(), b.waitJoined(2)]);
  let produced = 0;
  const producing = (async () => {
    while (produced < COUNT) {
      const batch = Array.from({ length: 100 }, (_, i) => ({ key: keyOf(produced + i), value: JSON.stringify({ n: produced + i }) }));
      await broker.produce(IN, batch);
      produced += batch.length;
      await sleep(400);
    }
  })();

  // A second instance joins, then leaves gracefully.
  await sleep(1000);
  let a2 = start("a", dbA2);
  await a2.waitJoined();
  await waitUntil("A1 rejoined with A2", () => joins(a1) >= 2 || undefined);
  await sleep(1000 + Math.random() * 1000);
  a2.kill("SIGTERM");
  expect(await a2.exited()).toBe(0);
  await waitUntil("A1 took every partition back", () => joins(a1) >= 3 || undefined);

  // It joins again; then A1 and B die at random moments and restart at once.
  a2 = start("a", dbA2);
  await a2.waitJoined();
  await sleep(Math.random() * 1500);
  a1.kill("SIGKILL");
  await sleep(Math.random() * 50);
  b.kill("SIGKILL");
  await Promise.all([a1.exited(), b.exited()]);
  a1 = start("a", dbA1);
  b = start("b", dbB);
  await Promise.all([a1.waitJoined(), b.waitJoined(2)]);

  await producing;
  await waitUntil("every record's effect in Bk and Bt", () => effects() >= EXPECTED || undefined, { timeoutMs: 40_000 });
  await sleep(1000);
  for (const w of [a1, a2, b]) w.kill("SIGTERM");
  expect([await a1.exited(), await a2.exited(), await b.exited()]).toEqual([0, 0, 0]);

  expect({ table: "effects_k", ...check(dbB, "effects_k") }).toEqual({ table: "effects_k", missing: 0, twice: [], outOfOrder: [] });
  expect({ table: "effects_t", ...check(dbB, "effects_t") }).toEqual({ table: "effects_t", missing: 0, twice: [], outOfOrder: [] });
  for (const db of [dbA1, dbA2, dbB]) expect({ db, dead: countIn(db, "SELECT count(*) AS n FROM kexo_dead_letters") }).toEqual({ db, dead: 0 });
  for (const db of [dbA1, dbA2]) expect({ db, outbox: countIn(db, "SELECT count(*) AS n FROM kexo_outbox") }).toEqual({ db, outbox: 0 });
  // Both instances of A did part of the work.
  const ran = [dbA1, dbA2].map((db) => countIn(db, "SELECT count(*) AS n FROM kexo_messages"));
  console.log(`A1 completed ${ran[0]}, A2 ${ran[1]} of ${COUNT} inputs`);
  expect(Math.min(...ran)).toBeGreaterThan(0);
}, 120_000);
