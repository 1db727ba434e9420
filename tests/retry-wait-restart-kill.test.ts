// A restart does not cut a retry's backoff short: the failed attempt journals when the next one is
// due, and after a SIGKILL the restarted worker waits the rest of the backoff before attempt 2,
// in partition order (partition paused, the others flow) and in key order (the lane waits, other
// keys flow). Before, the restart ran attempt 2 at once: a crash-looping pod hammered a failing
// downstream with no backoff at all. The same with a graceful stop: retry-wait-restart-term.test.ts.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { countIn } from "./support/db.ts";
import { callsLog } from "./support/tmp.ts";
import { waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const PART = "retry-due-kill-part";
const KEYED = "retry-due-kill-keyed";
// Backoff after attempt 1: 8–16 s (equal jitter on 16 s), so attempt 2 comes 8 s after attempt 1 at
// the earliest; a restart takes ≈ 4–5 s here (the group join), so running at once lands well before.
const DELAY = 16_000;
const FLOOR = DELAY / 2;
let broker: TestBroker;
let dir: string;

// Ids starting with "ok" succeed; the others always fail.
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
    if (!p.id.startsWith("ok")) throw new Error("downstream is down");
  },
});
`;

withBroker(
  { [PART]: 2, [`${PART}.dlq`]: 1, [KEYED]: 1, [`${KEYED}.dlq`]: 1 },
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

test("after a SIGKILL the restarted worker waits the rest of the backoff (partition and key order); other partitions and keys flow", async () => {
  const db = join(dir, "journal.db");
  const { env, calls } = callsLog<Call>(dir);
  const start = () => new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), db), { env });

  const first = start();
  await first.waitJoined(2);
  await broker.produce(PART, [{ value: JSON.stringify({ id: "p" }), partition: 0 }]);
  await broker.produce(KEYED, [{ key: "k", value: JSON.stringify({ id: "k" }) }]);
  // Attempt 1 of each failed and is journaled; killed well inside the backoff.
  await waitUntil("both first failures journaled", () => countIn(db, "SELECT count(*) AS n FROM kexo_retries") === 2 || undefined, { timeoutMs: 20_000 });
  first.kill("SIGKILL");
  await first.exited();
  const [p1, k1] = [calls("p"), calls("k")];
  const drawn = backoffOf(first);
  expect(p1.map((c) => c.attempt)).toEqual([1]);
  expect(k1.map((c) => c.attempt)).toEqual([1]);
  expect(Date.now() - Math.max(p1[0]!.at, k1[0]!.at)).toBeLessThan(1500);

  const second = start();
  await second.waitJoined(2);
  // While p and k wait: the topic's other partition, and another key, are handled.
  await broker.produce(PART, [{ value: JSON.stringify({ id: "ok-p" }), partition: 1 }]);
  await broker.produce(KEYED, [{ key: "other", value: JSON.stringify({ id: "ok-k" }) }]);
  await waitUntil("attempt 2 of both", () => (calls("p").length >= 2 && calls("k").length >= 2) || undefined, { timeoutMs: 30_000 });

  for (const id of ["p", "k"]) {
    const [a1, a2] = calls(id);
    expect([a1!.attempt, a2!.attempt]).toEqual([1, 2]);
    expect(a2!.pid).toBe(second.proc.pid);
    // Not before the backoff's floor, and not much past its ceiling.
    const gap = a2!.at - a1!.at;
    expect(gap).toBeGreaterThanOrEqual(FLOOR - 100);
    // And not before the backoff the first run drew for it (logged with its failure).
    expect(gap).toBeGreaterThanOrEqual(drawn(id) - 100);
    expect(gap).toBeLessThanOrEqual(DELAY + 4000);
  }
  // The other partition and the other key did not wait for them.
  expect(calls("ok-p")[0]!.at).toBeLessThan(calls("p")[1]!.at);
  expect(calls("ok-k")[0]!.at).toBeLessThan(calls("k")[1]!.at);
  expect(second.find((l) => l.msg === "message failed before; waiting the rest of its backoff")).toBeDefined();

  // A drain ends the wait after attempt 2 at once.
  second.kill("SIGTERM");
  expect(await second.exited()).toBe(0);
  expect(calls("p")).toHaveLength(2);
  expect(calls("k")).toHaveLength(2);
}, 60_000);
