// Guarantees 1 and 2: after SIGKILLs at different moments and restarts, every message's ctx.tx
// effects appear exactly once, and every ctx.step ran at least once and at most once more per kill.
// The handlers live in a temporary directory outside the repository.
import { afterAll, beforeAll, expect, test } from "bun:test";
import Database from "libsql";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { countIn } from "./support/db.ts";
import { startBroker, type TestBroker } from "./support/broker.ts";
import { tempDir } from "./support/tmp.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { ROOT, WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "crash-in";
const COUNT = 5000;
let broker: TestBroker;
let dir: string;

const HANDLER = `
import { defineHandler, v } from "kexo";
import { appendFileSync } from "node:fs";

export default defineHandler({
  topics: ["${TOPIC}"],
  schema: v.object({ n: v.number() }),
  async setup(db) {
    // No primary key: a duplicate insert would show up as a second row.
    await db.execute("CREATE TABLE IF NOT EXISTS effects (id TEXT NOT NULL, n INTEGER NOT NULL)");
  },
  async handle(p, ctx) {
    await ctx.step("append", async () => {
      appendFileSync(process.env.STEP_LOG!, ctx.id + "\\n");
      await new Promise((r) => setTimeout(r, 1));
      return p.n;
    });
    await ctx.tx(async (db) => {
      await db.execute({ sql: "INSERT INTO effects (id, n) VALUES (?, ?)", args: [ctx.id, p.n] });
    });
    return { n: p.n };
  },
});
`;

beforeAll(async () => {
  broker = await startBroker({ [TOPIC]: 4 });
  dir = tempDir();
  const handlers = join(dir, "handlers");
  await Bun.write(join(handlers, "crash.ts"), HANDLER);
  await broker.produce(TOPIC, Array.from({ length: COUNT }, (_, i) => ({ key: `k${i % 97}`, value: JSON.stringify({ n: i }) })));
});

afterAll(async () => {
  await broker?.close();
});

const effects = (db: string) => countIn(db, "SELECT count(*) AS n FROM effects");

test("exactly-once effects and at-least-once steps across SIGKILLs", async () => {
  expect(dir.startsWith(ROOT)).toBe(false);
  const db = join(dir, "journal.db");
  const stepLog = join(dir, "steps.log");
  writeFileSync(stepLog, "");
  const start = () =>
    new WorkerProcess(
      runArgs(broker.brokers, join(dir, "handlers"), db),
      { env: { STEP_LOG: stepLog } },
    );

  // Kill points: right after joining (maybe mid-first-batch), then at rising effect counts, the
  // last one after a random extra delay so it may land inside a step or a tx.
  const killAt: (() => Promise<void>)[] = [];
  let kills = 0;
  for (const [i, threshold] of [0, 1200, 2600, 3900].entries()) {
    killAt.push(async () => {
      const w = start();
      await w.waitJoined();
      if (threshold > 0) await waitUntil(`${threshold} effects`, () => effects(db) >= threshold || undefined, { timeoutMs: 60_000, intervalMs: 5 });
      if (i === 3) await sleep(Math.floor(Math.random() * 20));
      w.kill("SIGKILL");
      await w.exited();
      kills++;
    });
  }
  for (const k of killAt) await k();
  expect(effects(db)).toBeLessThan(COUNT);

  const last = start();
  await last.waitJoined();
  await waitUntil("all effects", () => effects(db) >= COUNT || undefined, { timeoutMs: 90_000 });
  await sleep(500);
  last.kill("SIGTERM");
  expect(await last.exited()).toBe(0);

  const conn = new Database(db, { readonly: true });
  const rows = conn.prepare("SELECT id, count(*) AS c FROM effects GROUP BY id").all() as { id: string; c: number }[];
  const completed = (conn.prepare("SELECT count(*) AS n FROM kexo_messages WHERE status = 'completed'").get() as { n: number }).n;
  conn.close();
  expect(rows.length).toBe(COUNT);
  expect(rows.filter((r) => r.c !== 1)).toEqual([]);
  expect(completed).toBe(COUNT);

  const runs = new Map<string, number>();
  for (const id of readFileSync(stepLog, "utf8").split("\n").filter(Boolean)) runs.set(id, (runs.get(id) ?? 0) + 1);
  expect(runs.size).toBe(COUNT);
  const over = [...runs.values()].filter((c) => c > 1 + kills);
  expect(over).toEqual([]);
}, 300_000);
