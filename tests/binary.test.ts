// The compiled binary, copied alone into an empty directory and run with a PATH holding no bun or
// node, checks its plan, runs a handler directory loaded at run time against a broker with exactly-
// once effects across a SIGKILL, and runs `kexo dev --demo` with the handlers compiled into it.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { copyFileSync, mkdirSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { startBroker, type TestBroker } from "./support/broker.ts";
import { countRows, queryRows } from "./support/db.ts";
import { countOn, startSqld, sqldSupported } from "./support/sqld.ts";
import { tempDir } from "./support/tmp.ts";
import { waitUntil } from "./support/wait.ts";
import { BUN, ROOT, WorkerProcess } from "./support/worker.ts";

const TOPIC = "binary-in";
const COUNT = 3000;
let broker: TestBroker;
let app: string;
/** A PATH with nothing in it: no bun, no node, no shell tools. */
let emptyPath: string;

// No primary key on effects: a duplicate insert would show up as a second row.
const HANDLER = `import { defineHandler, v } from "kexo";
const insert = { sql: "INSERT INTO effects (id, n) VALUES (?, ?)" };
export default defineHandler({
  topics: ["${TOPIC}"],
  schema: v.object({ n: v.number() }),
  setup: (db) => db.execute("CREATE TABLE IF NOT EXISTS effects (id TEXT NOT NULL, n INTEGER NOT NULL)").then(() => {}),
  handle: (p, ctx) => ctx.tx((db) => db.execute({ ...insert, args: [ctx.id, p.n] })).then(() => ({ n: p.n })),
});
`;

beforeAll(async () => {
  const build = tempDir("kexo-build-");
  const r = Bun.spawnSync([BUN, join(ROOT, "src/build/compile.ts"), "--outfile", join(build, "kexo")], { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`build failed (${r.exitCode}): ${r.stderr.toString()}`);
  app = tempDir("kexo-app-");
  copyFileSync(join(build, "kexo"), join(app, "kexo"));
  mkdirSync(join(app, "handlers"));
  writeFileSync(join(app, "handlers", "effects.ts"), HANDLER);
  emptyPath = tempDir("kexo-path-");
  broker = await startBroker({ [TOPIC]: 4 });
  await broker.produce(TOPIC, Array.from({ length: COUNT }, (_, i) => ({ key: `k${i % 31}`, value: JSON.stringify({ n: i }) })));
}, 120_000);

afterAll(async () => {
  await broker?.close();
});

function binary(args: string[]): WorkerProcess {
  return new WorkerProcess(args, { cmd: [join(app, "kexo")], cwd: app, env: { PATH: emptyPath } });
}

test("the directory holds only the binary and handlers, and PATH finds no bun or node", () => {
  expect(readdirSync(app).sort()).toEqual(["handlers", "kexo"]);
  expect(Bun.which("bun", { PATH: emptyPath })).toBeNull();
  expect(Bun.which("node", { PATH: emptyPath })).toBeNull();
});

test("kexo check: the compiled-in handlers by default, a directory with --handlers", async () => {
  const builtIn = binary(["check", "--json"]);
  expect(await builtIn.exited()).toBe(0);
  const plan = JSON.parse(builtIn.stdout);
  expect(plan.handlersFrom).toBe("the binary (compiled in)");
  expect(plan.handlers.map((h: { name: string }) => h.name)).toEqual(["orders", "payments"]);

  const fromDir = binary(["check", "--handlers", "./handlers"]);
  expect(await fromDir.exited()).toBe(0);
  expect(fromDir.stdout).toContain("1 handler from ./handlers");
  expect(fromDir.stdout).toMatch(new RegExp(`effects\\s+${TOPIC}\\s+kexo-effects-${TOPIC}\\s+partition`));
}, 30_000);

test("an unwritable TMPDIR (where the binary extracts libSQL's addon) is named, exit 69", async () => {
  const w = new WorkerProcess(["check"], { cmd: [join(app, "kexo")], cwd: app, env: { PATH: emptyPath, TMPDIR: join(app, "missing") } });
  expect(await w.exited()).toBe(69);
  await waitUntil("the message", () => w.raw.join("\n").includes("set TMPDIR to a writable directory") || undefined, { timeoutMs: 5000 });
});

test("kexo run with run-time handlers: every message's effects exactly once across a SIGKILL", async () => {
  const db = join(app, "journal.db");
  const run = () => binary(["run", "--brokers", broker.brokers, "--handlers", "./handlers", "--db", "file:journal.db", "--http", "127.0.0.1:0"]);
  const first = run();
  await first.waitJoined();
  await waitUntil("some effects", () => countRows(db, "effects") >= 500 || undefined, { timeoutMs: 60_000, intervalMs: 5 });
  first.kill("SIGKILL");
  await first.exited();
  expect(countRows(db, "effects")).toBeLessThan(COUNT);

  const second = run();
  await second.waitJoined();
  await waitUntil("all effects", () => countRows(db, "effects") >= COUNT || undefined, { timeoutMs: 90_000 });
  const health = await fetch(`http://${await second.httpAddress()}/healthz`);
  expect(health.status).toBe(200);
  second.kill("SIGTERM");
  expect(await second.exited()).toBe(0);

  const dupes = queryRows<{ id: string; c: number }>(db, "SELECT id, count(*) AS c FROM effects GROUP BY id HAVING c > 1");
  expect(dupes).toEqual([]);
  expect(queryRows<{ n: number }>(db, "SELECT count(DISTINCT n) AS n FROM effects")[0]?.n).toBe(COUNT);
  expect(countRows(db, "kexo_messages")).toBe(COUNT);
}, 180_000);

// The remote journal's connection thread is a second entrypoint inside the binary (see
// src/build/compile.ts): the binary must find it in its own embedded files.
test.skipIf(!sqldSupported)("kexo run with --db on a libSQL server: the journal and the effects are on the server", async () => {
  const sqld = await startSqld();
  // Its own handler name, so its own group: the topic is read from the start again.
  mkdirSync(join(app, "remote-handlers"));
  writeFileSync(join(app, "remote-handlers", "remote.ts"), HANDLER);
  try {
    const run = binary(["run", "--brokers", broker.brokers, "--handlers", "./remote-handlers", "--db", sqld.url, "--http", "127.0.0.1:0", "--client-id", "bin"]);
    await run.waitJoined();
    const c = sqld.client();
    await waitUntil("all effects on the server", async () => (await countOn(c, "SELECT count(DISTINCT n) AS n FROM effects")) >= COUNT || undefined, { timeoutMs: 90_000 });
    run.kill("SIGTERM");
    expect(await run.exited()).toBe(0);
    expect(await countOn(c, "SELECT count(*) AS n FROM effects")).toBe(COUNT);
    expect((await c.execute("SELECT value FROM kexo_meta WHERE key = 'run_state@bin'")).rows[0]?.value).toBe("stopped");
  } finally {
    await sqld.close();
  }
}, 180_000);

test("kexo dev --demo runs the compiled-in handlers on the embedded broker", async () => {
  const dir = join(app, "dev");
  mkdirSync(dir);
  const demo = async () => {
    const dev = new WorkerProcess(["dev", "--demo", "--demo-count", "100", "--http", "127.0.0.1:0"], { cmd: [join(app, "kexo")], cwd: dir, env: { PATH: emptyPath } });
    await waitUntil("the demo to finish", () => {
      if (dev.proc.exitCode !== null) throw new Error(`kexo dev exited with ${dev.proc.exitCode}: ${dev.raw.slice(-5).join("\n")}`);
      return dev.stdout.includes("demo: all messages handled") || undefined;
    }, { timeoutMs: 60_000 });
    dev.kill("SIGTERM");
    expect(await dev.exited()).toBe(0);
    return dev.stdout;
  };
  const first = await demo();
  expect(first).not.toContain("demo: note");
  expect(first).toContain("processed 200 · deduplicated 2 ·");
  expect(countRows(join(dir, "kexo.db"), "orders")).toBeGreaterThan(0);
  expect(countRows(join(dir, "kexo.db"), "balances")).toBeGreaterThan(0);
  // Again in the same directory: kexo.db has the first run's progress, and the new development
  // broker's offsets start from 0 again, so every message counts as deduplicated. It is said.
  const again = await demo();
  expect(again).toContain("demo: note: the journal (file:kexo.db) holds an earlier run's progress on");
  expect(again).toContain("processed 0 ·");
}, 120_000);
