// Guarantees 6 and 5 along a chain with order "key" and "topic": A (order "key") emits to a middle
// topic, keeping each input's Kafka key (a null key stays null, so its records are spread round
// robin); B consumes that topic twice, as Bk (order "key") and Bt (order "topic"), each writing its
// effect with ctx.tx. Some messages fail their first attempt at both ends. A dies after a broker
// acknowledged outbox rows and before their delete (crash point outbox.published), so a restart
// publishes them again, and the null-keyed copies land on other partitions than the first ones;
// then A and B are SIGKILLed at random moments while messages flow. At the end every emitted record
// has exactly one effect in each of Bk and Bt, per key in A's input order, and nothing was
// dead-lettered.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { countIn, queryRows } from "./support/db.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const IN = "pipe-orders-in";
const MID = "pipe-orders-mid";
const COUNT = 2000;
const KEYS = 24;
let broker: TestBroker;
let dir: string;

/** Input n's Kafka key: one in ten is null (all null keys are one key in A). */
const keyOf = (n: number) => (n % 10 === 9 ? null : `k${n % KEYS}`);
/** Records A emits: one per input, a second one (b = 1) for every seventh. */
const EXPECTED = COUNT + Math.ceil(COUNT / 7);

const A = `
import { defineHandler, v } from "kexo";
export default defineHandler({
  topics: ["${IN}"],
  order: "key",
  concurrency: 8,
  schema: v.object({ n: v.number() }),
  retry: { attempts: 6, initialDelayMs: 20, maxDelayMs: 100 },
  async handle(p, ctx) {
    if (p.n % 31 === 0 && ctx.attempt === 1) throw new Error("first attempt fails");
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
    // No unique constraint: a second effect of a record shows as a second row; seq is the effects' order.
    await db.execute("CREATE TABLE IF NOT EXISTS ${table} (seq INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER NOT NULL, b INTEGER NOT NULL, k TEXT, id TEXT)");
  },
  async handle(p, ctx) {
    if (p.n % ${failEvery} === 0 && ctx.attempt === 1) throw new Error("first attempt fails");
    await new Promise((r) => setTimeout(r, p.n % 3));
    const k = ctx.message.key === null ? null : ctx.message.key.toString();
    await ctx.tx((db) => db.execute({ sql: "INSERT INTO ${table} (n, b, k, id) VALUES (?, ?, ?, ?)", args: [p.n, p.b, k, ctx.id] }));
  },
});
`;

// The second test's chain: A2 emits null-keyed records only, and B2's handlers (order "key" and the
// default "partition"; "topic" runs one message at a time) take a while before their ctx.tx (a
// slow call), so a copy the restarted A2 publishes again reaches B2 while the first one still
// runs, on another partition.
const IN2 = "pipe-orders-in2";
const MID2 = "pipe-orders-mid2";
const SLOW = 2500;
const A2 = `
import { defineHandler, v } from "kexo";
export default defineHandler({
  topics: ["${IN2}"],
  order: "key",
  schema: v.object({ n: v.number() }),
  async handle(p, ctx) {
    ctx.emit("${MID2}", { key: null, value: { n: p.n, b: 0 } });
  },
});
`;
const B2 = (order: "key" | "partition", table: string) => `
import { defineHandler, v } from "kexo";
export default defineHandler({
  topics: ["${MID2}"],
  order: "${order}",
  concurrency: 8,
  schema: v.object({ n: v.number(), b: v.number() }),
  async setup(db) {
    await db.execute("CREATE TABLE IF NOT EXISTS ${table} (seq INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER NOT NULL, b INTEGER NOT NULL, k TEXT, id TEXT)");
  },
  async handle(p, ctx) {
    await new Promise((r) => setTimeout(r, ${SLOW}));
    await ctx.tx((db) => db.execute({ sql: "INSERT INTO ${table} (n, b, k, id) VALUES (?, ?, ?, ?)", args: [p.n, p.b, null, ctx.id] }));
  },
});
`;

withBroker({ [IN]: 4, [MID]: 4, [IN2]: 1, [MID2]: 8 }, {
  "a/a.ts": A,
  "b/bk.ts": B("key", "effects_k", 29),
  "b/bt.ts": B("topic", "effects_t", 37),
  "a2/a.ts": A2,
  "b2/bk.ts": B2("key", "effects_k"),
  "b2/bp.ts": B2("partition", "effects_p"),
}, (f) => ({ broker, dir } = f));

type Effect = { seq: number; n: number; b: number; k: string | null; id: string };

/** Problems with one handler's effects: records without exactly one effect, keys out of A's input order. */
function check(db: string, table: string, count = COUNT): { missing: string[]; twice: string[]; outOfOrder: string[] } {
  const effects = queryRows<Effect>(db, `SELECT seq, n, b, k, id FROM ${table} ORDER BY seq`);
  const seen = new Map<string, number>();
  for (const e of effects) seen.set(`${e.n}.${e.b}`, (seen.get(`${e.n}.${e.b}`) ?? 0) + 1);
  const missing: string[] = [];
  for (let n = 0; n < count; n++) for (const b of count === COUNT && n % 7 === 0 ? [0, 1] : [0]) if (!seen.has(`${n}.${b}`)) missing.push(`${n}.${b}`);
  const twice = [...seen].filter(([, c]) => c !== 1).map(([r, c]) => `${r}×${c}`);
  // Within a key, inputs were produced in increasing n, and a record's b = 0 before its b = 1.
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

test("A (order key) → topic → B (order key, order topic): one effect per record, per key in order, after SIGKILLs", async () => {
  const dbA = join(dir, "a.db");
  const dbB = join(dir, "b.db");
  const start = (name: "a" | "b", db: string, env: Record<string, string> = {}) =>
    new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers", name), db), { env });
  const effects = () => Math.min(countIn(dbB, "SELECT count(*) AS n FROM effects_k"), countIn(dbB, "SELECT count(*) AS n FROM effects_t"));

  await broker.produce(IN, Array.from({ length: COUNT }, (_, n) => ({ key: keyOf(n), value: JSON.stringify({ n }) })));

  // Round 0: A alone dies right after its outbox's third acknowledged request; its restart
  // publishes those rows again. B is down, so it later finds both copies waiting.
  {
    const a = start("a", dbA, { KEXO_CRASH_AT: "outbox.published", KEXO_CRASH_AFTER: "3" });
    expect(await a.exited()).toBe(137);
  }
  // Rounds 1-2: both run and die at random moments.
  for (let round = 1; round <= 2; round++) {
    const a = start("a", dbA);
    const b = start("b", dbB);
    await Promise.all([a.waitJoined(), b.waitJoined()]);
    const target = Math.min(effects() + 500, EXPECTED - 200);
    await waitUntil(`${target} effects in B`, () => effects() >= target || undefined, { timeoutMs: 30_000, intervalMs: 5 });
    await sleep(Math.floor(Math.random() * 30));
    a.kill("SIGKILL");
    await sleep(Math.floor(Math.random() * 30));
    b.kill("SIGKILL");
    await Promise.all([a.exited(), b.exited()]);
  }

  const a = start("a", dbA);
  const b = start("b", dbB);
  await waitUntil("every record's effect in Bk and Bt", () => effects() >= EXPECTED || undefined, { timeoutMs: 40_000 });
  await sleep(1000);
  a.kill("SIGTERM");
  b.kill("SIGTERM");
  expect([await a.exited(), await b.exited()]).toEqual([0, 0]);

  expect({ table: "effects_k", ...check(dbB, "effects_k") }).toEqual({ table: "effects_k", missing: [], twice: [], outOfOrder: [] });
  expect({ table: "effects_t", ...check(dbB, "effects_t") }).toEqual({ table: "effects_t", missing: [], twice: [], outOfOrder: [] });
  // Nothing dead-lettered, at either end.
  expect(countIn(dbA, "SELECT count(*) AS n FROM kexo_dead_letters")).toBe(0);
  expect(countIn(dbB, "SELECT count(*) AS n FROM kexo_dead_letters")).toBe(0);
  // The relay did publish records twice: B's dedup on kexo-id was exercised.
  const admin = broker.kafka.admin();
  await admin.connect();
  const onWire = (await admin.fetchTopicOffsets(MID)).reduce((n, p) => n + Number(p.high), 0);
  await admin.disconnect();
  expect(onWire).toBeGreaterThan(EXPECTED);
  expect(countIn(dbA, "SELECT count(*) AS n FROM kexo_outbox")).toBe(0);
}, 120_000);

test("a copy published again while the first one still runs downstream, on another partition, has no second effect", async () => {
  const COPIES = 4;
  const dbA = join(dir, "a2.db");
  const dbB = join(dir, "b2.db");
  const start = (name: "a2" | "b2", db: string, env: Record<string, string> = {}) =>
    new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers", name), db), { env });
  const b = start("b2", dbB);
  await b.waitJoined(2);
  await broker.produce(IN2, Array.from({ length: COPIES }, (_, n) => ({ key: null, value: JSON.stringify({ n }) })));
  // A publishes its records, then dies before deleting them from its outbox, twice; restarted at
  // once, it publishes them again each time (round robin from another place, so mostly onto
  // partitions B is not busy on).
  for (let crash = 0; crash < 2; crash++) {
    const crashed = start("a2", dbA, { KEXO_CRASH_AT: "outbox.published" });
    expect(await crashed.exited()).toBe(137);
  }
  // The second crashed start may have sent its JoinGroup (with the member id the journal kept)
  // before it died. librdkafka's mock holds a JoinGroup up to the session timeout (6 s) less 1 s
  // without noticing its connection closed, and asserts (aborting its thread) when the same member
  // id joins again meanwhile: the next start waits that out. Real Kafka answers such a rejoin.
  await sleep(6000);
  const a = start("a2", dbA);
  await a.waitJoined();
  const done = () => Math.min(countIn(dbB, "SELECT count(DISTINCT n) AS n FROM effects_k"), countIn(dbB, "SELECT count(DISTINCT n) AS n FROM effects_p"));
  await waitUntil("every record's effect in Bk and Bp", () => done() >= COPIES || undefined, { timeoutMs: 30_000 });
  // Copies still running finish.
  await sleep(SLOW + 1000);
  a.kill("SIGTERM");
  b.kill("SIGTERM");
  expect([await a.exited(), await b.exited()]).toEqual([0, 0]);
  // Every record went out three times.
  const admin = broker.kafka.admin();
  await admin.connect();
  const onWire = (await admin.fetchTopicOffsets(MID2)).reduce((n, p) => n + Number(p.high), 0);
  await admin.disconnect();
  expect(onWire).toBe(3 * COPIES);
  const effects = (table: string) => {
    const { missing, twice } = check(dbB, table, COPIES);
    return { missing, twice };
  };
  expect({ key: effects("effects_k"), partition: effects("effects_p") }).toEqual({ key: { missing: [], twice: [] }, partition: { missing: [], twice: [] } });
}, 60_000);
