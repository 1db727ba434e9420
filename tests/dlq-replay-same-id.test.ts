// Guarantees 1 and 2 across `kexo dlq replay`: a replayed dead letter keeps its message's id, so a
// ctx.tx or ctx.step the failed run recorded is not run again by the replay, even for a handler
// whose id comes from the offset (no business key, no kexo-id header).
import { afterAll, beforeAll, expect, test } from "bun:test";
import { existsSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { columnIn } from "./support/db.ts";
import { startBroker, type TestBroker } from "./support/broker.ts";
import { tempDir } from "./support/tmp.ts";
import { waitUntil } from "./support/wait.ts";
import { BUN, ROOT, WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "rpid-in";
let broker: TestBroker;
let dir: string;

beforeAll(async () => {
  broker = await startBroker({ [TOPIC]: 1, [`${TOPIC}.dlq`]: 1 });
  dir = tempDir();
  await Bun.write(
    join(dir, "handlers", "ledger.ts"),
    `import { defineHandler, v, PermanentError } from "kexo";
import { existsSync } from "node:fs";
export default defineHandler({
  topics: ["${TOPIC}"],
  schema: v.object({ n: v.number() }),
  async setup(db) { await db.execute("CREATE TABLE IF NOT EXISTS effects (n INTEGER NOT NULL, id TEXT NOT NULL)"); },
  async handle(p, ctx) {
    await ctx.tx((db) => db.execute({ sql: "INSERT INTO effects (n, id) VALUES (?, ?)", args: [p.n, ctx.id] }));
    if (existsSync(process.env.FAIL_FILE!)) throw new PermanentError("ledger closed");
    return { n: p.n };
  },
});`,
  );
});

afterAll(async () => {
  await broker?.close();
});

test("a dead letter whose ctx.tx committed is replayed without applying that tx again", async () => {
  const db = join(dir, "journal.db");
  const failFile = join(dir, "fail");
  writeFileSync(failFile, "");
  const w = new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), db), { env: { FAIL_FILE: failFile } });
  await w.waitJoined();
  await broker.produce(TOPIC, [{ value: JSON.stringify({ n: 1 }) }]);
  await w.waitForLog("dead letter", (l) => l.msg === "message dead-lettered");
  rmSync(failFile);
  expect(existsSync(failFile)).toBe(false);

  const p = Bun.spawn([BUN, join(ROOT, "main.ts"), "dlq", "replay", "--all", "--brokers", broker.brokers, "--db", `file:${db}`], { cwd: dir, stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  expect(await p.exited).toBe(0);
  const completed = () => columnIn<string>(db, "SELECT status FROM kexo_messages WHERE status = 'completed'");
  await waitUntil("the replay completed", () => completed().length >= 1 || undefined, { timeoutMs: 30_000 });
  w.kill("SIGTERM");
  expect(await w.exited()).toBe(0);

  const id = `kafka-unique-id-${TOPIC}-0-kexo-ledger-${TOPIC}-0`;
  expect(columnIn<string>(db, "SELECT id FROM effects")).toEqual([id]);
  expect(columnIn<string>(db, "SELECT status FROM kexo_messages WHERE id = ?", id)).toEqual(["completed"]);
}, 90_000);
