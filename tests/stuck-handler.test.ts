// A handler stuck in handle() turns /healthz 503 within its TTL (checked over a real socket). On
// SIGTERM, ctx.signal aborts it once --shutdown-timeout runs out and kexo exits 75; a second
// signal during the drain exits at once with 143. Either way the journal stays consistent and the
// next start handles every message exactly once.
import { afterAll, beforeAll, expect, test } from "bun:test";
import Database from "libsql";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { startBroker, type TestBroker } from "./support/broker.ts";
import { tempDir } from "./support/tmp.ts";
import { waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

let broker: TestBroker;
let dir: string;

const handlerFor = (topic: string) => `import { defineHandler } from "kexo";
export default defineHandler({
  topics: ["${topic}"],
  async setup(db) { await db.execute("CREATE TABLE IF NOT EXISTS effects (v TEXT NOT NULL)"); },
  async handle(value, ctx) {
    const v = String(value);
    if (v === "stall" && process.env.STALL === "1") {
      ctx.log.info("stalling");
      await new Promise((_, reject) => ctx.signal.addEventListener("abort", () => reject(new Error("aborted by kexo"))));
    }
    await ctx.tx((db) => db.execute({ sql: "INSERT INTO effects (v) VALUES (?)", args: [v] }));
  },
});`;

// A ctx.tx nested in a body, and a body that never settles and ignores ctx.signal: both hold the
// journal's lock, which every handler's writes and the stop wait for.
const txStall = `import { defineHandler } from "kexo";
export default defineHandler({
  topics: ["stuck-c"],
  async setup(db) { await db.execute("CREATE TABLE IF NOT EXISTS effects (v TEXT NOT NULL)"); },
  async handle(value, ctx) {
    const v = String(value);
    if (v === "nested") await ctx.tx(async () => ctx.tx((db) => db.execute("SELECT 1")));
    await ctx.tx(async (db) => {
      if (v === "stall" && process.env.STALL === "1") {
        ctx.log.info("stalling");
        await new Promise(() => {});
      }
      await db.execute({ sql: "INSERT INTO effects (v) VALUES (?)", args: [v] });
    });
  },
});`;

beforeAll(async () => {
  broker = await startBroker({ "stuck-a": 1, "stuck-b": 1, "stuck-c": 1, "stuck-c.dlq": 1 });
  dir = tempDir();
  await Bun.write(join(dir, "a", "stuck.ts"), handlerFor("stuck-a"));
  await Bun.write(join(dir, "b", "stuck.ts"), handlerFor("stuck-b"));
  await Bun.write(join(dir, "c", "stuck.ts"), txStall);
});

afterAll(async () => {
  await broker?.close();
});

function effects(db: string): string[] {
  if (!existsSync(db)) return [];
  const c = new Database(db, { readonly: true });
  try {
    return (c.prepare("SELECT v FROM effects ORDER BY rowid").all() as { v: string }[]).map((r) => r.v);
  } catch {
    return [];
  } finally {
    c.close();
  }
}

function integrity(db: string): string {
  const c = new Database(db, { readonly: true });
  try {
    return (c.prepare("PRAGMA integrity_check").get() as { integrity_check: string }).integrity_check;
  } finally {
    c.close();
  }
}

const args = (handlers: string, db: string, timeoutMs: number) =>
  runArgs(broker.brokers, join(dir, handlers), db, "--shutdown-timeout", String(timeoutMs));

/** Restarts without the stall: every message's effect appears exactly once. */
async function restartAndCheck(handlers: string, db: string): Promise<void> {
  const again = new WorkerProcess(args(handlers, db, 5000));
  await waitUntil("the stalled message redone", () => effects(db).length >= 3 || undefined, { timeoutMs: 40_000 });
  again.kill("SIGTERM");
  expect(await again.exited()).toBe(0);
  expect(effects(db).sort()).toEqual(["after", "before", "stall"]);
  expect(integrity(db)).toBe("ok");
}

test("a stuck handler flips /healthz within its TTL; SIGTERM aborts it after --shutdown-timeout: exit 75", async () => {
  const db = join(dir, "a.db");
  const ttlMs = 1500;
  const w = new WorkerProcess(args("a", db, 1500), { env: { STALL: "1", KEXO_HANDLER_TTL_MS: String(ttlMs) } });
  const base = `http://${await w.httpAddress()}`;
  await w.waitJoined();
  await waitUntil("ready", async () => (await fetch(`${base}/readyz`)).status === 200 || undefined);
  expect((await fetch(`${base}/healthz`)).status).toBe(200);
  const metrics = await fetch(`${base}/metrics`);
  expect(metrics.status).toBe(200);
  expect(await metrics.text()).toContain("# TYPE kexo_messages_total counter");
  expect(((await (await fetch(`${base}/status`)).json()) as { handlers: unknown[] }).handlers.length).toBe(1);

  await broker.produce("stuck-a", [{ value: "before" }, { value: "stall" }, { value: "after" }]);
  await w.waitForLog("the handler stalls", (l) => l.msg === "stalling");
  const stalledAt = Date.now();
  expect((await fetch(`${base}/healthz`)).status).toBe(200);
  const body = await waitUntil("/healthz 503", async () => {
    const r = await fetch(`${base}/healthz`);
    return r.status === 503 ? ((await r.json()) as { reason: string }) : undefined;
  }, { timeoutMs: 15_000, intervalMs: 100 });
  const flippedMs = Date.now() - stalledAt;
  console.log(`/healthz turned 503 ${flippedMs} ms after the handler stalled (TTL ${ttlMs} ms)`);
  expect(body.reason).toContain("handler TTL");
  expect(flippedMs).toBeLessThan(ttlMs + 5000);
  expect(effects(db)).toEqual(["before"]);

  const termAt = Date.now();
  w.kill("SIGTERM");
  expect(await w.exited()).toBe(75);
  console.log(`exit 75 ${Date.now() - termAt} ms after SIGTERM (--shutdown-timeout 1500)`);
  expect(w.find((l) => l.msg === "shutdown timeout ran out; aborting in-flight handlers")).toBeDefined();
  await restartAndCheck("a", db);
}, 90_000);

test("a second signal during the drain exits at once with 143; the journal stays consistent", async () => {
  const db = join(dir, "b.db");
  const w = new WorkerProcess(args("b", db, 60_000), { env: { STALL: "1" } });
  await w.waitJoined();
  await broker.produce("stuck-b", [{ value: "before" }, { value: "stall" }, { value: "after" }]);
  await w.waitForLog("the handler stalls", (l) => l.msg === "stalling");
  w.kill("SIGTERM");
  await w.waitForLog("draining", (l) => l.msg === "draining");
  // Past the window in which a repeat of the same signal counts as the same request (main.ts).
  await Bun.sleep(400);
  const secondAt = Date.now();
  w.kill("SIGTERM");
  expect(await w.exited()).toBe(143);
  expect(Date.now() - secondAt).toBeLessThan(5000);
  expect(effects(db)).toEqual(["before"]);
  await restartAndCheck("b", db);
}, 90_000);

test("a nested ctx.tx is a dead letter, not a deadlock; a ctx.tx body that ignores ctx.signal cannot keep kexo from exiting (75)", async () => {
  const db = join(dir, "c.db");
  const w = new WorkerProcess(args("c", db, 1000), { env: { STALL: "1" } });
  await w.waitJoined();
  await broker.produce("stuck-c", [{ value: "before" }, { value: "nested" }, { value: "stall" }, { value: "after" }]);
  const [dead] = await broker.readAll("stuck-c.dlq", 1);
  expect(dead!.value!.toString()).toBe("nested");
  expect(dead!.headers["kexo-dlq-reason"]!.toString()).toBe("permanent");
  expect(dead!.headers["kexo-dlq-error"]!.toString()).toContain("ctx.tx called while another ctx.tx of this message runs");
  await w.waitForLog("the handler stalls in its ctx.tx", (l) => l.msg === "stalling");
  const termAt = Date.now();
  w.kill("SIGTERM");
  expect(await w.exited()).toBe(75);
  console.log(`exit 75 ${Date.now() - termAt} ms after SIGTERM with a ctx.tx body holding the journal (--shutdown-timeout 1000)`);
  expect(w.find((l) => l.msg.startsWith("shutdown did not finish: a handler still holds the journal"))).toBeDefined();
  await restartAndCheck("c", db);
}, 90_000);
