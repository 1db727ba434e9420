// A failed attempt journals when the next one is due (kexo_retries.next_try_at), so that a delivery
// met again after a restart (or by a new owner of its partition) waits the rest of its backoff in
// the same way as a live retry: deferred (its partition paused) in partition and topic order, the
// lane's wait in key order. Capped at maxDelayMs from now. The end-to-end runs with SIGKILL and
// SIGTERM are tests/retry-wait-restart-*.test.ts.
import { expect, test } from "bun:test";
import Database from "libsql";
import { join } from "node:path";
import { EventBus } from "../../src/events.ts";
import { resolveHandler } from "../../src/handlers/resolve.ts";
import { defineHandler, type KafkaMessage } from "../../src/index.ts";
import { Journal } from "../../src/journal/journal.ts";
import { createLogger } from "../../src/log.ts";
import { CrashGuard } from "../../src/processing/crash-guard.ts";
import { type ExecutorDeps, execute } from "../../src/processing/executor.ts";
import { RetryBook } from "../../src/processing/retry-book.ts";
import { tempDir } from "../support/tmp.ts";

const log = createLogger({ level: "error", write: () => {} });
const signal = new AbortController().signal;
const retry = { attempts: 5, initialDelayMs: 8000, maxDelayMs: 8000 };

function failing(attempts: number[], order: "partition" | "key" = "partition") {
  const problems: unknown[] = [];
  const h = resolveHandler("h.ts", "h", defineHandler({
    topics: ["t"], order, retry,
    async handle(_p: unknown, ctx: { attempt: number }) {
      attempts.push(ctx.attempt);
      throw new Error("downstream is down");
    },
  } as never), problems as never)!;
  expect(problems).toEqual([]);
  return h;
}

const msg = (offset: string): KafkaMessage => ({
  topic: "t", partition: 0, offset, key: null, value: Buffer.from("x"), headers: {}, timestamp: "0",
} as KafkaMessage);

/** Partition order's deps: `deferred` collects the waits handed to the consumer. */
function deferring(journal: Journal, deferred: number[], extra: Partial<ExecutorDeps> = {}): ExecutorDeps {
  return {
    journal, bus: new EventBus(), log, dlq: { publish: async () => {} },
    retries: new RetryBook(), defer: (ms) => void deferred.push(ms), ...extra,
  };
}

const nextTryAt = (path: string): number | null => {
  const c = new Database(path, { readonly: true });
  try {
    const row = c.prepare("SELECT next_try_at FROM kexo_retries").get() as { next_try_at: number | null };
    return row.next_try_at === null ? null : Number(row.next_try_at);
  } finally {
    c.close();
  }
};

test("partition order: after a restart the delivery is deferred for the rest of its backoff, then goes on counting", async () => {
  const path = join(tempDir(), "j.db");
  const attempts: number[] = [];
  const h = failing(attempts);
  let j = Journal.open({ url: `file:${path}`, commitIntervalMs: 1 });
  const first: number[] = [];
  const failedAt = Date.now();
  expect(await execute(h, msg("3"), deferring(j, first), signal)).toBe("deferred");
  expect(attempts).toEqual([1]);
  // Equal jitter on 8 s: 4–8 s, journaled as a due time.
  expect(first[0]).toBeGreaterThanOrEqual(4000);
  expect(first[0]).toBeLessThanOrEqual(8000);
  await j.close();
  const due = nextTryAt(path)!;
  expect(due - failedAt).toBeGreaterThanOrEqual(first[0]!);
  expect(due - Date.now()).toBeLessThanOrEqual(first[0]!);

  // The restart: a new journal and book. The handler does not run; the partition waits the rest.
  j = Journal.open({ url: `file:${path}`, commitIntervalMs: 1 });
  const later: number[] = [];
  const d = deferring(j, later);
  const before = Date.now();
  expect(await execute(h, msg("3"), d, signal)).toBe("deferred");
  expect(attempts).toEqual([1]);
  expect(later).toHaveLength(1);
  expect(later[0]!).toBeGreaterThan(0);
  expect(later[0]!).toBeLessThanOrEqual(due - before);
  expect(later[0]!).toBeGreaterThan(due - before - 1000);
  // Fetched again early (a resumed partition): still waits, still no attempt.
  expect(await execute(h, msg("3"), d, signal)).toBe("deferred");
  expect(attempts).toEqual([1]);
  // Once due, it runs attempt 2 (the count goes on).
  d.retries!.get("t", 0, "3")!.notBefore = Date.now() - 1;
  expect(await execute(h, msg("3"), d, signal)).toBe("deferred");
  expect(attempts).toEqual([1, 2]);
  await j.close();
});

test("the wait is capped at maxDelayMs from now: a due time far ahead (a clock that jumped) does not park the message", async () => {
  const path = join(tempDir(), "j.db");
  const attempts: number[] = [];
  const h = failing(attempts);
  let j = Journal.open({ url: `file:${path}`, commitIntervalMs: 1 });
  expect(await execute(h, msg("3"), deferring(j, []), signal)).toBe("deferred");
  await j.close();
  const c = new Database(path);
  c.prepare("UPDATE kexo_retries SET next_try_at = ?").run(Date.now() + 86_400_000);
  c.close();
  j = Journal.open({ url: `file:${path}`, commitIntervalMs: 1 });
  const waits: number[] = [];
  expect(await execute(h, msg("3"), deferring(j, waits), signal)).toBe("deferred");
  expect(waits).toHaveLength(1);
  expect(waits[0]!).toBeLessThanOrEqual(retry.maxDelayMs);
  expect(waits[0]!).toBeGreaterThan(retry.maxDelayMs - 1000);
  // A due time in the past, or none (an older kexo's row, a claimed attempt), runs at once.
  await j.close();
  for (const dueAt of [Date.now() - 5000, null]) {
    const c2 = new Database(path);
    c2.exec(`UPDATE kexo_retries SET next_try_at = ${dueAt ?? "NULL"}`);
    c2.close();
    j = Journal.open({ url: `file:${path}`, commitIntervalMs: 1 });
    const none: number[] = [];
    const before = attempts.length;
    expect(await execute(h, msg("3"), deferring(j, none), signal)).toBe("deferred");
    expect(attempts.length).toBe(before + 1);
    expect(none).toHaveLength(1); // only the backoff after the attempt that ran
    await j.close();
  }
});

test("key order: the delivery waits the rest in place (the lane's wait), then runs its next attempt", async () => {
  const path = join(tempDir(), "j.db");
  const attempts: number[] = [];
  const h = failing(attempts, "key");
  let j = Journal.open({ url: `file:${path}`, commitIntervalMs: 1 });
  // The first run fails, and its wait ends as a drain ends it.
  const drained = async () => {
    throw new Error("drained");
  };
  expect(await execute(h, msg("9"), { journal: j, bus: new EventBus(), log, dlq: { publish: async () => {} }, wait: drained }, signal)).toBe("aborted");
  expect(attempts).toEqual([1]);
  await j.close();
  const due = nextTryAt(path)!;

  j = Journal.open({ url: `file:${path}`, commitIntervalMs: 1 });
  const later: number[] = [];
  let calls = 0;
  const before = Date.now();
  const verdict = await execute(h, msg("9"), { journal: j, bus: new EventBus(), log, dlq: { publish: async () => {} }, wait: async (ms) => {
    later.push(ms);
    // The restored wait comes first: no attempt ran before it. The second wait (after attempt 2)
    // ends the run.
    if (++calls === 1) expect(attempts).toEqual([1]);
    else throw new Error("stop");
  } }, signal);
  expect(verdict).toBe("aborted");
  expect(attempts).toEqual([1, 2]);
  expect(later[0]!).toBeLessThanOrEqual(due - before);
  expect(later[0]!).toBeGreaterThan(due - before - 1000);
  await j.close();
});

test("after an unclean start, a delivery deferred for the rest of its backoff still runs its next attempt alone", async () => {
  const path = join(tempDir(), "j.db");
  const deathsSeen: number[] = [];
  const problems: unknown[] = [];
  const h = resolveHandler("h.ts", "h", defineHandler({
    topics: ["t"], retry,
    async handle() {
      // An attempt run alone is counted as not survived (deaths) until it ends, COMMITted before it starts.
      const c = new Database(path, { readonly: true });
      deathsSeen.push((c.prepare("SELECT deaths FROM kexo_retries").get() as { deaths: number } | undefined)?.deaths ?? -1);
      c.close();
      throw new Error("down");
    },
  } as never), problems as never)!;
  let j = Journal.open({ url: `file:${path}`, commitIntervalMs: 1, worker: true });
  expect(await execute(h, msg("4"), deferring(j, []), signal)).toBe("deferred");
  await j.flush();
  // Killed: never marked stopped. The restart is unclean.
  j = Journal.open({ url: `file:${path}`, commitIntervalMs: 1, worker: true });
  expect(j.uncleanStart).toBe(true);
  const d = deferring(j, [], { guard: new CrashGuard() });
  expect(await execute(h, msg("4"), d, signal)).toBe("deferred");
  expect(deathsSeen).toEqual([-1]);
  expect(d.retries!.get("t", 0, "4")?.alone).toBe(true);
  d.retries!.get("t", 0, "4")!.notBefore = Date.now() - 1;
  expect(await execute(h, msg("4"), d, signal)).toBe("deferred");
  // Attempt 2 ran alone (deaths 1 while it ran).
  expect(deathsSeen).toEqual([-1, 1]);
  j.markStopped();
  await j.close();
});
