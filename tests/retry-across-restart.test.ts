// retry.attempts counts every attempt, across restarts: a message that failed twice before a
// SIGKILL gets the rest of its attempts after the restart, not a fresh set, and its dead letter
// says how many there were in all. A message that succeeds on a later try leaves no count behind.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { columnIn, countIn } from "./support/db.ts";
import { callsLog } from "./support/tmp.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { BUN, ROOT, WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "retry-restart-in";
let broker: TestBroker;
let dir: string;

// "always" fails every time; "third" fails until its third attempt. Backoff 1.5–3 s (equal jitter
// on 3 s): a wide window to kill the worker while a retry waits.
const HANDLER = `
import { defineHandler, v } from "kexo";
import { appendFileSync } from "node:fs";

export default defineHandler({
  topics: ["${TOPIC}"],
  schema: v.object({ id: v.string() }),
  retry: { attempts: 4, initialDelayMs: 3000, maxDelayMs: 3000 },
  async handle(p, ctx) {
    appendFileSync(process.env.CALLS_LOG!, JSON.stringify({ id: p.id, attempt: ctx.attempt }) + "\\n");
    if (p.id === "always" || (p.id === "third" && ctx.attempt < 3)) throw new Error("downstream is down");
  },
});
`;

withBroker({ [TOPIC]: 2, [`${TOPIC}.dlq`]: 1 }, { "flaky.ts": HANDLER }, (f) => ({ broker, dir } = f));

test("failed attempts survive a SIGKILL: the restart goes on counting, and the dead letter says 4 of 4", async () => {
  const db = join(dir, "journal.db");
  const { env, calls } = callsLog(dir);
  const start = () => new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), db), { env });

  const first = start();
  await first.waitJoined();
  await broker.produce(TOPIC, [
    { value: JSON.stringify({ id: "always" }), partition: 0 },
    { value: JSON.stringify({ id: "third" }), partition: 1 },
  ]);
  // Two failed attempts each, committed to the journal; the third waits for its backoff.
  await waitUntil("two failed attempts of each recorded", () => {
    const rows = countIn(db, "SELECT count(*) AS n FROM kexo_retries WHERE attempts = 2");
    return rows === 2 || undefined;
  }, { timeoutMs: 30_000 });
  for (const id of ["always", "third"]) expect(calls(id).map((c) => c.attempt)).toEqual([1, 2]);
  first.kill("SIGKILL");
  await first.exited();

  // kexo inspect shows the count while the message waits.
  const [waitingId] = columnIn<string>(db, "SELECT id FROM kexo_retries ORDER BY id LIMIT 1");
  const inspect = Bun.spawnSync([BUN, join(ROOT, "main.ts"), "inspect", waitingId!, "--db", `file:${db}`, "--json"]);
  const entry = JSON.parse(inspect.stdout.toString()) as { status: string; failedAttempts: number };
  expect([entry.status, entry.failedAttempts]).toEqual(["retrying", 2]);

  const second = start();
  await second.waitJoined();
  const [dead] = await broker.readAll(`${TOPIC}.dlq`, 1, 30_000);
  expect(dead).toBeDefined();
  expect(dead!.headers["kexo-dlq-reason"]?.toString()).toBe("exhausted");
  expect(dead!.headers["kexo-dlq-attempts"]?.toString()).toBe("4");
  await waitUntil("third succeeded", () => calls("third").length >= 3 || undefined, { timeoutMs: 30_000 });
  await sleep(500);
  second.kill("SIGTERM");
  expect(await second.exited()).toBe(0);

  // Attempts 3 and 4 after the restart, not a fresh 1–4.
  expect(calls("always").map((c) => c.attempt)).toEqual([1, 2, 3, 4]);
  expect(calls("third").map((c) => c.attempt)).toEqual([1, 2, 3]);
  // Done messages leave no count behind.
  expect(countIn(db, "SELECT count(*) AS n FROM kexo_retries")).toBe(0);
}, 120_000);
