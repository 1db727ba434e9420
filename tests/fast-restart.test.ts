// A worker restarted after SIGKILL resumes processing in under 10 s: it rejoins its group as the
// member the crashed process was, so the coordinator need not wait for that session to expire.
import { afterAll, beforeAll, expect, test } from "bun:test";
import Database from "libsql";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { startBroker, type TestBroker } from "./support/broker.ts";
import { tempDir } from "./support/tmp.ts";
import { waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "restart-in";
let broker: TestBroker;
let dir: string;

beforeAll(async () => {
  broker = await startBroker({ [TOPIC]: 4 });
  dir = tempDir();
  await Bun.write(
    join(dir, "handlers", "restart.ts"),
    `import { defineHandler } from "kexo";
export default defineHandler({
  topics: ["${TOPIC}"],
  async setup(db) { await db.execute("CREATE TABLE IF NOT EXISTS seen (v TEXT)"); },
  async handle(value, ctx) { await ctx.tx((db) => db.execute({ sql: "INSERT INTO seen VALUES (?)", args: [String(value)] })); },
});`,
  );
});

afterAll(async () => {
  await broker?.close();
});

function seen(db: string): number {
  if (!existsSync(db)) return 0;
  const c = new Database(db, { readonly: true });
  try {
    return (c.prepare("SELECT count(*) AS n FROM seen").get() as { n: number }).n;
  } catch {
    return 0;
  } finally {
    c.close();
  }
}

test("restart after SIGKILL resumes processing within 10 s", async () => {
  const db = join(dir, "journal.db");
  const args = runArgs(broker.brokers, join(dir, "handlers"), db);
  await broker.produce(TOPIC, Array.from({ length: 200 }, (_, i) => ({ value: `a${i}` })));
  const first = new WorkerProcess(args);
  await first.waitJoined();
  await waitUntil("first 200", () => seen(db) >= 200 || undefined);
  first.kill("SIGKILL");
  await first.exited();

  await broker.produce(TOPIC, Array.from({ length: 200 }, (_, i) => ({ value: `b${i}` })));
  const started = Date.now();
  const second = new WorkerProcess(args);
  await waitUntil("processing resumed", () => seen(db) > 200 || undefined, { timeoutMs: 30_000, intervalMs: 20 });
  const resumedMs = Date.now() - started;
  await waitUntil("all 400", () => seen(db) >= 400 || undefined);
  second.kill("SIGTERM");
  expect(await second.exited()).toBe(0);
  console.log(`restart after SIGKILL: processing resumed after ${resumedMs} ms`);
  expect(resumedMs).toBeLessThan(10_000);
  expect(seen(db)).toBe(400);
}, 90_000);
