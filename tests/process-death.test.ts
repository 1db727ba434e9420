// A message whose handler kills the process (out of memory, a native crash, process.exit) does not
// crash-loop its partition: after an unclean stop each attempt is journaled before it starts, a
// message that was running then runs again alone, and once its attempts are used up, the process
// dying in those run alone, it is dead-lettered as exhausted. Every other message, on its partition
// and beside it, is handled exactly once and never blamed.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { columnIn, countIn } from "./support/db.ts";
import { callsLog, tempDir } from "./support/tmp.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { runArgs, WorkerProcess } from "./support/worker.ts";

const TOPIC = "process-death-in";
const HANG_TOPIC = "process-death-hang";
let broker: TestBroker;
let dir: string;

// "killer" takes the whole process down, as the kernel's OOM killer would.
const HANDLER = `
import { defineHandler, v } from "kexo";
import { appendFileSync } from "node:fs";

export default defineHandler({
  topics: ["${TOPIC}"],
  schema: v.object({ id: v.string() }),
  retry: { attempts: 3, initialDelayMs: 50, maxDelayMs: 100 },
  async setup(db) {
    await db.execute("CREATE TABLE IF NOT EXISTS seen (id TEXT NOT NULL)");
  },
  async handle(p, ctx) {
    appendFileSync(process.env.CALLS_LOG!, JSON.stringify({ id: p.id, attempt: ctx.attempt }) + "\\n");
    if (p.id === "killer") process.kill(process.pid, "SIGKILL");
    await ctx.tx(async (db) => {
      await db.execute({ sql: "INSERT INTO seen (id) VALUES (?)", args: [p.id] });
    });
  },
});
`;

// Never kills anything: fails its first attempt, and its second ignores ctx.signal and hangs
// (a downstream call with no timeout) unless HANG=0.
const HANGING = `
import { defineHandler, v } from "kexo";
import { appendFileSync } from "node:fs";

export default defineHandler({
  topics: ["${HANG_TOPIC}"],
  schema: v.object({ id: v.string() }),
  retry: { attempts: 2, initialDelayMs: 3000, maxDelayMs: 3000 },
  async handle(p, ctx) {
    appendFileSync(process.env.CALLS_LOG!, JSON.stringify({ id: p.id, attempt: ctx.attempt }) + "\\n");
    if (ctx.attempt === 1) throw new Error("downstream is down");
    if (process.env.HANG !== "0") await new Promise((r) => setTimeout(r, 120_000));
  },
});
`;

withBroker({ [TOPIC]: 2, [`${TOPIC}.dlq`]: 1, [HANG_TOPIC]: 1, [`${HANG_TOPIC}.dlq`]: 1 }, { "deadly.ts": HANDLER }, (f) => ({ broker, dir } = f));

test("a message that kills the process is dead-lettered after retry.attempts deaths; the rest run exactly once", async () => {
  const db = join(dir, "journal.db");
  const { env, calls } = callsLog(dir);
  const start = () => new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), db), { env });
  const ids = ["a1", "a2", "killer", "a3", "a4", "b1", "b2", "b3"];

  const first = start();
  await first.waitJoined();
  await broker.produce(TOPIC, [
    ...["a1", "a2", "killer", "a3", "a4"].map((id) => ({ value: JSON.stringify({ id }), partition: 0 })),
    ...["b1", "b2", "b3"].map((id) => ({ value: JSON.stringify({ id }), partition: 1 })),
  ]);
  // Killed by its own handler: nothing logged a clean stop.
  expect(await first.exited()).not.toBe(0);
  expect(first.find((l) => l.msg.includes("did not stop cleanly"))).toBeUndefined();

  // The first restart tracks it (attempt 1, journaled first); the next two run it alone, and the
  // process dies in attempts 2 and 3: attempts/deaths of its delivery (partition 0, offset 2).
  for (const expected of ["1/0", "2/1", "3/2"]) {
    const w = start();
    expect(await w.exited()).not.toBe(0);
    expect(w.find((l) => l.msg.includes("did not stop cleanly"))).toBeDefined();
    expect(columnIn<string>(db, `SELECT attempts || '/' || deaths FROM kexo_retries WHERE partition = 0 AND "offset" = 2`)).toEqual([expected]);
  }
  expect(calls("killer").map((c) => c.attempt)).toEqual([1, 1, 2, 3]);

  // The fourth restart dead-letters it without running it, and the partition moves on.
  const last = start();
  await last.waitJoined();
  const [dead] = await broker.readAll(`${TOPIC}.dlq`, 1, 30_000);
  expect(JSON.parse(dead!.value!.toString())).toEqual({ id: "killer" });
  expect(dead!.headers["kexo-dlq-reason"]?.toString()).toBe("exhausted");
  expect(dead!.headers["kexo-dlq-error-type"]?.toString()).toBe("ProcessDied");
  expect(dead!.headers["kexo-dlq-attempts"]?.toString()).toBe("3");
  expect(dead!.headers["kexo-dlq-error"]?.toString()).toContain("in 2 of its 3 attempts");
  await waitUntil("every other message handled", () => countIn(db, "SELECT count(*) AS n FROM seen") >= ids.length - 1 || undefined, {
    timeoutMs: 30_000,
  });
  await sleep(500);
  last.kill("SIGTERM");
  expect(await last.exited()).toBe(0);

  expect(calls("killer")).toHaveLength(4);
  const seen = columnIn<string>(db, "SELECT id FROM seen ORDER BY id");
  expect(seen).toEqual(ids.filter((id) => id !== "killer").sort());
  expect(countIn(db, "SELECT count(*) AS n FROM kexo_retries")).toBe(0);

  // A drained stop is clean: the next start suspects nothing.
  const after = start();
  await after.waitJoined();
  expect(after.find((l) => l.msg.includes("did not stop cleanly"))).toBeUndefined();
  after.kill("SIGTERM");
  expect(await after.exited()).toBe(0);
}, 240_000);

test("a message running alone when a clean stop's shutdown timeout cuts it is not counted as a death", async () => {
  const hangDir = tempDir();
  await Bun.write(join(hangDir, "handlers", "hanging.ts"), HANGING);
  const db = join(hangDir, "journal.db");
  const { env, calls } = callsLog(hangDir);
  const start = (hang: boolean) =>
    new WorkerProcess(runArgs(broker.brokers, join(hangDir, "handlers"), db, "--shutdown-timeout", "1000"), { env: { ...env, HANG: hang ? "1" : "0" } });

  // Attempt 1 fails and is journaled; killed while it waits for attempt 2: an unclean stop.
  const first = start(true);
  await first.waitJoined();
  await broker.produce(HANG_TOPIC, [{ value: JSON.stringify({ id: "slow" }) }]);
  await waitUntil("attempt 1 journaled", () => countIn(db, "SELECT count(*) AS n FROM kexo_retries WHERE attempts = 1") === 1 || undefined, {
    timeoutMs: 30_000,
  });
  first.kill("SIGKILL");
  await first.exited();

  // It runs alone (counted as a death while it runs), hangs, and the drain's timeout cuts it: exit 75.
  const second = start(true);
  await waitUntil("attempt 2 running", () => calls("slow").length === 2 || undefined, { timeoutMs: 30_000 });
  expect(columnIn<string>(db, "SELECT attempts || '/' || deaths FROM kexo_retries")).toEqual(["2/1"]);
  second.kill("SIGTERM");
  expect(await second.exited()).toBe(75);
  // The process survived it: neither the attempt nor a death counts.
  expect(columnIn<string>(db, "SELECT attempts || '/' || deaths FROM kexo_retries")).toEqual(["1/0"]);

  // So the next start runs attempt 2 again instead of dead-lettering it as ProcessDied.
  const third = start(false);
  await waitUntil("attempt 2 ran to its end", () => calls("slow").length === 3 || undefined, { timeoutMs: 30_000 });
  await waitUntil("done", () => countIn(db, "SELECT count(*) AS n FROM kexo_retries") === 0 || undefined, { timeoutMs: 10_000 });
  third.kill("SIGTERM");
  expect(await third.exited()).toBe(0);
  expect(calls("slow").map((c) => c.attempt)).toEqual([1, 2, 2]);
  expect(await broker.readAll(`${HANG_TOPIC}.dlq`, 1, 3000)).toEqual([]);
}, 120_000);
