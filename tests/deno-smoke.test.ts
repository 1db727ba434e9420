// The same sources run under Deno (`deno task start …`, i.e. `deno run -A main.ts run …`): a
// handler file from a directory outside the repository imports "kexo" through deno.json's import
// map, its messages are handled with the libSQL journal, and /healthz and /readyz answer.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { startBroker, type TestBroker } from "./support/broker.ts";
import { countRows } from "./support/db.ts";
import { tempDir } from "./support/tmp.ts";
import { waitUntil } from "./support/wait.ts";
import { ROOT, WorkerProcess } from "./support/worker.ts";

const DENO = [join(ROOT, "node_modules/.bin/deno"), "run", "-A", join(ROOT, "main.ts")];
const DENO_TASK_START = [join(ROOT, "node_modules/.bin/deno"), "task", "--cwd", ROOT, "start"];
const TOPIC = "deno-in";
const COUNT = 200;
let broker: TestBroker;
let dir: string;

beforeAll(async () => {
  broker = await startBroker({ [TOPIC]: 2 });
  dir = tempDir("kexo-deno-");
  writeFileSync(
    join(dir, "seen.ts"),
    `import { defineHandler, v } from "kexo";
export default defineHandler({
  topics: ["${TOPIC}"],
  schema: v.object({ id: v.string() }),
  setup: (db) => db.execute("CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY)").then(() => {}),
  handle: (m, ctx) => ctx.tx((db) => db.execute({ sql: "INSERT INTO seen (id) VALUES (?)", args: [m.id] })).then(() => ({ ok: true })),
});
`,
  );
  await broker.produce(TOPIC, Array.from({ length: COUNT }, (_, i) => ({ value: JSON.stringify({ id: `m${i}` }) })));
});

afterAll(async () => {
  await broker?.close();
});

test("deno task start runs the worker: messages handled, /healthz and /readyz 200, drained on SIGTERM", async () => {
  const db = join(dir, "journal.db");
  const w = new WorkerProcess(["--brokers", broker.brokers, "--handlers", dir, "--db", `file:${db}`, "--http", "127.0.0.1:0"], { cmd: DENO_TASK_START, cwd: dir });
  const address = await w.httpAddress();
  await w.waitJoined(1, 60_000);
  await waitUntil("every message handled", () => countRows(db, "seen") >= COUNT || undefined, { timeoutMs: 60_000 });
  expect((await fetch(`http://${address}/healthz`)).status).toBe(200);
  await waitUntil("/readyz 200", async () => (await fetch(`http://${address}/readyz`)).status === 200 || undefined);
  w.kill("SIGTERM");
  expect(await w.exited()).toBe(0);
  expect(countRows(db, "kexo_messages")).toBe(COUNT);
}, 120_000);

test("kexo dev under Deno says it needs Bun; exit 64", async () => {
  const w = new WorkerProcess(["dev", "--handlers", dir, "--db", `file:${join(dir, "dev.db")}`], { cmd: DENO, cwd: dir });
  expect(await w.exited()).toBe(64);
  await waitUntil("the error on stderr", () => w.raw.join("\n").includes("kexo dev needs Bun") || undefined, { timeoutMs: 5000 });
}, 60_000);
