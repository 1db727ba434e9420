// A graceful stop during a retry's backoff (SIGTERM: a redeploy, a Kubernetes crash loop) exits 0
// at once, and the next start waits the rest of the backoff before the next attempt, in partition
// and in key order; a drain during that restored wait ends it at once too. Before, each restart ran
// the next attempt at once. The same with SIGKILL: retry-wait-restart-kill.test.ts.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { columnIn, countIn } from "./support/db.ts";
import { callsLog } from "./support/tmp.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { kexoSync, WorkerProcess, runArgs } from "./support/worker.ts";

const PART = "retry-due-term-part";
const KEYED = "retry-due-term-keyed";
// Backoff after attempt 1: 8–16 s, longer than two restarts here (≈ 3–4 s each).
const DELAY = 16_000;
const FLOOR = DELAY / 2;
let broker: TestBroker;
let dir: string;

const handler = (topic: string, order: string) => `
import { defineHandler, v } from "kexo";
import { appendFileSync } from "node:fs";

export default defineHandler({
  topics: ["${topic}"],
  schema: v.object({ id: v.string() }),
  order: "${order}",
  retry: { attempts: 3, initialDelayMs: ${DELAY}, maxDelayMs: ${DELAY} },
  async handle(p, ctx) {
    appendFileSync(process.env.CALLS_LOG!, JSON.stringify({ id: p.id, attempt: ctx.attempt, at: Date.now(), pid: process.pid }) + "\\n");
    throw new Error("downstream is down");
  },
});
`;

withBroker(
  { [PART]: 1, [`${PART}.dlq`]: 1, [KEYED]: 1, [`${KEYED}.dlq`]: 1 },
  { "part.ts": handler(PART, "partition"), "keyed.ts": handler(KEYED, "key") },
  (f) => ({ broker, dir } = f),
);

type Call = { id: string; attempt: number; at: number; pid: number };

/** The backoff a worker drew after attempt 1 of "p" (PART) or "k" (KEYED), from its log. */
const backoffOf = (w: WorkerProcess) => (id: string): number => {
  const l = w.find((l) => l.msg === "handler failed; retrying" && l.topic === (id === "p" ? PART : KEYED) && l.attempt === 1);
  expect(l).toBeDefined();
  return Number(l!.nextAttemptInMs);
};

/** SIGTERM, then the exit code and how long the drain took. */
async function drain(w: WorkerProcess): Promise<{ code: number; ms: number }> {
  const t = Date.now();
  w.kill("SIGTERM");
  const code = await w.exited();
  return { code, ms: Date.now() - t };
}

test("after a graceful stop the next start waits the rest of the backoff (partition and key order); a drain ends that wait at once", async () => {
  const db = join(dir, "journal.db");
  const { env, calls } = callsLog<Call>(dir);
  const start = () => new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), db), { env });

  const first = start();
  await first.waitJoined(2);
  await broker.produce(PART, [{ value: JSON.stringify({ id: "p" }), partition: 0 }]);
  await broker.produce(KEYED, [{ key: "k", value: JSON.stringify({ id: "k" }) }]);
  await waitUntil("both first failures journaled", () => countIn(db, "SELECT count(*) AS n FROM kexo_retries") === 2 || undefined, { timeoutMs: 20_000 });
  // A drain during the live backoff: exit 0 at once (the waits end), attempt 2 not run.
  const drawn = backoffOf(first);
  const d1 = await drain(first);
  expect(d1.code).toBe(0);
  expect(d1.ms).toBeLessThan(5000);

  // The second start meets both again inside their backoff: they wait, and a drain ends that wait.
  const second = start();
  await second.waitJoined(2);
  const waiting = (w: WorkerProcess) => w.lines.filter((l) => l.msg === "message failed before; waiting the rest of its backoff").length;
  // Both fetched and waiting, or (without the wait) attempt 2 already run.
  await waitUntil("both met again", () => (waiting(second) >= 2 || calls().length > 2) || undefined, { timeoutMs: 10_000 });
  await sleep(300);
  const d2 = await drain(second);
  expect(calls().map((c) => `${c.id}${c.attempt}`).sort()).toEqual(["k1", "p1"]);
  expect(d2.code).toBe(0);
  expect(d2.ms).toBeLessThan(5000);

  // kexo inspect says when the next try is due.
  const [id] = columnIn<string>(db, "SELECT id FROM kexo_retries WHERE topic = ?", PART);
  const inspect = kexoSync(["inspect", id!, "--db", `file:${db}`, "--json"]);
  expect(inspect.code).toBe(0);
  const entry = JSON.parse(inspect.stdout) as { status: string; failedAttempts: number; nextTryAt: string };
  expect([entry.status, entry.failedAttempts]).toEqual(["retrying", 1]);
  expect(Math.abs(Date.parse(entry.nextTryAt) - (calls("p")[0]!.at + drawn("p")))).toBeLessThan(1000);
  expect(kexoSync(["inspect", id!, "--db", `file:${db}`]).stdout).toContain(`next try at ${entry.nextTryAt}`);

  // The third start runs attempt 2 once it is due, not before.
  const third = start();
  await third.waitJoined(2);
  await waitUntil("attempt 2 of both", () => (calls("p").length >= 2 && calls("k").length >= 2) || undefined, { timeoutMs: 30_000 });
  for (const id of ["p", "k"]) {
    const [a1, a2] = calls(id);
    expect([a1!.attempt, a2!.attempt]).toEqual([1, 2]);
    expect(a2!.pid).toBe(third.proc.pid);
    const gap = a2!.at - a1!.at;
    expect(gap).toBeGreaterThanOrEqual(FLOOR - 100);
    // And not before the backoff the first run drew for it (logged with its failure).
    expect(gap).toBeGreaterThanOrEqual(drawn(id) - 100);
    expect(gap).toBeLessThanOrEqual(DELAY + 4000);
  }
  const d3 = await drain(third);
  expect(d3.code).toBe(0);
  expect(calls()).toHaveLength(4);
}, 60_000);
