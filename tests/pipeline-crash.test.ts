// Guarantee 6: a pipeline A → topic → B of two kexo workers, both SIGKILLed at random points
// several times, ends with B's effects holding every id exactly once: A's outbox publishes after
// its journal commit (at least once, header kexo-id) and B dedups on kexo-id.
import { afterAll, beforeAll, expect, test } from "bun:test";
import Database from "libsql";
import { join } from "node:path";
import { countIn } from "./support/db.ts";
import { startBroker, type TestBroker } from "./support/broker.ts";
import { tempDir } from "./support/tmp.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const IN = "pipe-in";
const MID = "pipe-mid";
const COUNT = 4000;
let broker: TestBroker;
let dir: string;

const A = `
import { defineHandler, v } from "kexo";
export default defineHandler({
  topics: ["${IN}"],
  schema: v.object({ n: v.number() }),
  async handle(p, ctx) {
    ctx.emit("${MID}", { key: String(p.n % 50), value: { n: p.n } });
  },
});
`;

const B = `
import { defineHandler, v } from "kexo";
export default defineHandler({
  topics: ["${MID}"],
  schema: v.object({ n: v.number() }),
  async setup(db) {
    // No primary key: a second effect for an id would show up as a second row.
    await db.execute("CREATE TABLE IF NOT EXISTS effects (n INTEGER NOT NULL)");
  },
  async handle(p, ctx) {
    await ctx.tx((db) => db.execute({ sql: "INSERT INTO effects (n) VALUES (?)", args: [p.n] }));
  },
});
`;

beforeAll(async () => {
  broker = await startBroker({ [IN]: 4, [MID]: 4 });
  dir = tempDir();
  await Bun.write(join(dir, "a", "a.ts"), A);
  await Bun.write(join(dir, "b", "b.ts"), B);
  await broker.produce(IN, Array.from({ length: COUNT }, (_, n) => ({ key: String(n), value: JSON.stringify({ n }) })));
});

afterAll(async () => {
  await broker?.close();
});

const effects = (db: string) => countIn(db, "SELECT count(*) AS n FROM effects");

test("A → topic → B: every id has exactly one effect in B after SIGKILLs of both", async () => {
  const dbA = join(dir, "a.db");
  const dbB = join(dir, "b.db");
  const start = (name: "a" | "b", db: string, env: Record<string, string> = {}) =>
    new WorkerProcess(runArgs(broker.brokers, join(dir, name), db), { env });

  // Round 0: A dies between a broker acknowledgement and the outbox delete (a named crash point),
  // so the restarted A publishes those rows again; B dies a random moment later.
  {
    const a = start("a", dbA, { KEXO_CRASH_AT: "outbox.published", KEXO_CRASH_AFTER: "4" });
    const b = start("b", dbB);
    await b.waitJoined();
    expect(await a.exited()).toBe(137);
    await sleep(Math.floor(Math.random() * 300));
    b.kill("SIGKILL");
    await b.exited();
  }
  // Rounds 1-3: both die at random moments while messages flow.
  for (let round = 1; round <= 3; round++) {
    const a = start("a", dbA);
    const b = start("b", dbB);
    await Promise.all([a.waitJoined(), b.waitJoined()]);
    const target = Math.min(effects(dbB) + 400, COUNT - 100);
    await waitUntil(`${target} effects in B`, () => effects(dbB) >= target || undefined, { timeoutMs: 60_000, intervalMs: 5 });
    await sleep(Math.floor(Math.random() * 30));
    a.kill("SIGKILL");
    await sleep(Math.floor(Math.random() * 30));
    b.kill("SIGKILL");
    await Promise.all([a.exited(), b.exited()]);
  }

  const a = start("a", dbA);
  const b = start("b", dbB);
  await waitUntil("all effects in B", () => effects(dbB) >= COUNT || undefined, { timeoutMs: 90_000 });
  await sleep(1000);
  a.kill("SIGTERM");
  b.kill("SIGTERM");
  expect(await a.exited()).toBe(0);
  expect(await b.exited()).toBe(0);

  const conn = new Database(dbB, { readonly: true });
  const rows = conn.prepare("SELECT n, count(*) AS c FROM effects GROUP BY n").all() as { n: number; c: number }[];
  conn.close();
  expect(rows.length).toBe(COUNT);
  expect(rows.filter((r) => r.c !== 1)).toEqual([]);
  // The relay did publish some records twice (round 0): B's dedup on kexo-id was exercised.
  const admin = broker.kafka.admin();
  await admin.connect();
  const onWire = (await admin.fetchTopicOffsets(MID)).reduce((n, p) => n + Number(p.high), 0);
  await admin.disconnect();
  expect(onWire).toBeGreaterThan(COUNT);
  // A's outbox is empty once everything was acknowledged.
  const connA = new Database(dbA, { readonly: true });
  expect((connA.prepare("SELECT count(*) AS n FROM kexo_outbox").get() as { n: number }).n).toBe(0);
  connA.close();
}, 240_000);
