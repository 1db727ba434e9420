// The journal's count of failed attempts (kexo_retries) belongs to one delivery: a restart
// delivering the same offset goes on counting (tests/retry-across-restart.test.ts), while a dlq
// replay or another copy of the id starts at 1, and the count is gone in every COMMIT that holds
// the message's outcome. Found by a review, which wrote these three tests against the first
// version (keyed by id, cleared after the outcome).
import type { WireHeaders } from "../../src/kafka/headers.ts";
import { expect, test } from "bun:test";
import { copyFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import Database from "libsql";
import { EventBus } from "../../src/events.ts";
import { resolveHandler } from "../../src/handlers/resolve.ts";
import { defineHandler, type KafkaMessage, PermanentError, v } from "../../src/index.ts";
import { Journal } from "../../src/journal/journal.ts";
import { tempDir } from "../support/tmp.ts";
import { createLogger } from "../../src/log.ts";
import { execute } from "../../src/processing/executor.ts";
import { RetryBook } from "../../src/processing/retry-book.ts";

const tick = (ms = 5) => new Promise((r) => setTimeout(r, ms));
const log = createLogger({ level: "error", write: () => {} });
const signal = new AbortController().signal;

function mk(def: Record<string, unknown>) {
  const problems: unknown[] = [];
  const h = resolveHandler("h.ts", "h", defineHandler(def as never), problems as never)!;
  expect(problems).toEqual([]);
  return h;
}
const msg = (offset: string, value: string, headers: Record<string, Buffer> = {}, partition = 0): KafkaMessage => ({
  topic: "t", partition, offset, key: null, value: Buffer.from(value), headers, timestamp: "0",
} as KafkaMessage);

function deps(journal: Journal, dlq: { topic: string; headers: WireHeaders }[], bus = new EventBus()) {
  return {
    journal, bus, log,
    dlq: { publish: async (topic: string, r: { headers: WireHeaders }) => void dlq.push({ topic, headers: r.headers }) },
    retries: new RetryBook(),
    defer: () => {},
  };
}
/** Runs a message until "done" (deferred runs are fetched again, as the consumer would). */
async function runToDone(h: ReturnType<typeof mk>, m: KafkaMessage, d: ReturnType<typeof deps>) {
  for (let i = 0; i < 20; i++) {
    const verdict = await execute(h, m, d, signal);
    if (verdict === "done") return;
    await tick();
  }
  throw new Error("never done");
}

test("a dlq replay of a message whose count was left by a poison dead letter starts at attempt 1", async () => {
  const url = `file:${join(tempDir(), "j.db")}`;
  const retry = { attempts: 4, initialDelayMs: 1, maxDelayMs: 1 };
  // Run 1: handler v1 fails twice (transient), then the process stops (SIGTERM/redeploy).
  const v1 = mk({ topics: ["t"], schema: v.object({ id: v.string() }), retry, async handle() { throw new Error("down"); } });
  let j = Journal.open({ url, commitIntervalMs: 1 });
  const dlq: { topic: string; headers: WireHeaders }[] = [];
  let d = deps(j, dlq);
  expect(await execute(v1, msg("5", '{"id":"a"}'), d, signal)).toBe("deferred");
  await tick();
  expect(await execute(v1, msg("5", '{"id":"a"}'), d, signal)).toBe("deferred");
  await j.close();

  // Run 2: redeployed handler with a changed schema: the message is poison now -> dead-lettered.
  const v2 = mk({ topics: ["t"], schema: v.object({ id: v.string(), amount: v.number() }), retry, async handle() {} });
  j = Journal.open({ url, commitIntervalMs: 1 });
  d = deps(j, dlq);
  await runToDone(v2, msg("5", '{"id":"a"}'), d);
  await j.flush();
  expect(dlq.map((x) => x.headers["kexo-dlq-reason"]!.toString())).toEqual(["poison"]);
  // The two failed attempts before the restart count: this was the third.
  expect(dlq[0]!.headers["kexo-dlq-attempts"]!.toString()).toBe("3");
  const [dead] = j.query<{ message_id: string }>("SELECT message_id FROM kexo_dead_letters");

  // Replay (kexo dlq replay adds kexo-id = message_id) to a fixed handler that fails twice, then succeeds.
  const seen: number[] = [];
  const v3 = mk({
    topics: ["t"], schema: v.object({ id: v.string() }), retry,
    async handle(_p: unknown, ctx: { attempt: number }) {
      seen.push(ctx.attempt);
      if (seen.length <= 2) throw new Error("still flaky");
    },
  });
  d = deps(j, dlq);
  await runToDone(v3, msg("40", '{"id":"a"}', { "kexo-id": Buffer.from(dead!.message_id) }), d);
  // Fresh count would be [1,2,3] and success.
  expect(seen).toEqual([1, 2, 3]);
  await j.close();
});

test("no COMMIT holds a dead letter without the delete of its count (a size-triggered COMMIT in between)", async () => {
  const dir = tempDir();
  const path = join(dir, "j.db");
  const retry = { attempts: 2, initialDelayMs: 1, maxDelayMs: 1 };
  const h = mk({ topics: ["t"], retry, async handle() { throw new Error("down"); } });
  // maxPendingWrites small to hit the size trigger deterministically (default 4000: the same happens
  // whenever the dead letter's finish() is the 4000th pending write).
  const j = Journal.open({ url: `file:${path}`, commitIntervalMs: 1, maxPendingWrites: 2 });
  const bus = new EventBus();
  const snap = join(dir, "snap.db");
  bus.on("message.handled", (e: { outcome: string }) => {
    if (e.outcome !== "dead_lettered") return;
    // What a SIGKILL right now leaves on disk: the committed state.
    copyFileSync(path, snap);
    if (existsSync(`${path}-wal`)) copyFileSync(`${path}-wal`, `${snap}-wal`);
  });
  const dlq: { topic: string; headers: WireHeaders }[] = [];
  await runToDone(h, msg("3", "x"), deps(j, dlq, bus));
  await j.close();
  const c = new Database(snap);
  const status = c.prepare("SELECT status FROM kexo_messages").all();
  const rows = c.prepare("SELECT id, attempts FROM kexo_retries").all();
  c.close();
  expect(rows).toEqual([]);
});

test("a second copy of the same id on another partition has its own count", async () => {
  const url = `file:${join(tempDir(), "j.db")}`;
  const retry = { attempts: 4, initialDelayMs: 1, maxDelayMs: 1 };
  const seen: string[] = [];
  const h = mk({
    topics: ["t"], schema: v.object({ id: v.string() }), key: (p: { id: string }) => p.id, retry,
    async handle(_p: unknown, ctx: { attempt: number; message: KafkaMessage }) {
      seen.push(`p${ctx.message.partition}:${ctx.attempt}`);
      throw new Error("down");
    },
  });
  const j = Journal.open({ url, commitIntervalMs: 1 });
  const dlq: { topic: string; headers: WireHeaders }[] = [];
  const d = deps(j, dlq);
  const m1 = msg("1", '{"id":"evt-1"}', {}, 0);
  for (let i = 0; i < 3; i++) {
    expect(await execute(h, m1, d, signal)).toBe("deferred");
    await tick();
  }
  // A re-published copy on partition 1 arrives while partition 0 still retries.
  await runToDone(h, msg("9", '{"id":"evt-1"}', {}, 1), d);
  expect(seen.filter((s) => s.startsWith("p1"))).toEqual(["p1:1", "p1:2", "p1:3", "p1:4"]);
  await j.close();
});

test("deadLetter: false: a PermanentError's retries are counted across a restart too", async () => {
  const url = `file:${join(tempDir(), "j.db")}`;
  const seen: number[] = [];
  const h = mk({
    topics: ["t"], deadLetter: false, retry: { attempts: 2, initialDelayMs: 1, maxDelayMs: 1 },
    async handle(_p: unknown, ctx: { attempt: number }) {
      seen.push(ctx.attempt);
      throw new PermanentError("ledger closed");
    },
  });
  let j = Journal.open({ url, commitIntervalMs: 1 });
  const dlq: { topic: string; headers: WireHeaders }[] = [];
  let d = deps(j, dlq);
  const m = msg("7", "x");
  expect(await execute(h, m, d, signal)).toBe("deferred");
  await tick();
  expect(await execute(h, m, d, signal)).toBe("deferred");
  await j.close();
  // Restart: no retry book entry; the journal's count goes on.
  j = Journal.open({ url, commitIntervalMs: 1 });
  d = deps(j, dlq);
  expect(await execute(h, m, d, signal)).toBe("deferred");
  await j.close();
  expect(seen).toEqual([1, 2, 3]);
  expect(dlq).toEqual([]);
});

test("a handler that gave up before a restart is not run again: the restart only writes its dead letter", async () => {
  const url = `file:${join(tempDir(), "j.db")}`;
  const seen: string[] = [];
  const h = mk({
    topics: ["t"], retry: { attempts: 2, initialDelayMs: 1, maxDelayMs: 1 },
    async handle(p: Buffer, ctx: { attempt: number }) {
      seen.push(`${p}:${ctx.attempt}`);
      throw p.toString() === "permanent" ? new PermanentError("refused") : new Error("down");
    },
  });
  // Run 1: the dead-letter topic can't be written; the process stops (a SIGKILL leaves the same COMMITs).
  let j = Journal.open({ url, commitIntervalMs: 1 });
  const failing = { ...deps(j, []), dlq: { publish: () => Promise.reject(new Error("dead-letter topic unavailable")) } };
  for (const m of [msg("1", "permanent"), msg("2", "exhausted", {}, 1)]) {
    for (let i = 0; i < 4; i++) {
      expect(await execute(h, m, failing, signal)).toBe("deferred");
      await tick();
    }
  }
  await j.close();
  expect(seen).toEqual(["permanent:1", "exhausted:1", "exhausted:2"]);
  // Run 2: the topic is back. Before: permanent:1 and exhausted:2 ran again.
  j = Journal.open({ url, commitIntervalMs: 1 });
  const dlq: { topic: string; headers: WireHeaders }[] = [];
  await runToDone(h, msg("1", "permanent"), deps(j, dlq));
  await runToDone(h, msg("2", "exhausted", {}, 1), deps(j, dlq));
  expect(seen).toEqual(["permanent:1", "exhausted:1", "exhausted:2"]);
  expect(dlq.map((d) => `${d.headers["kexo-dlq-reason"]}:${d.headers["kexo-dlq-attempts"]}`)).toEqual(["permanent:1", "exhausted:2"]);
  expect(j.query("SELECT * FROM kexo_retries")).toEqual([]);
  await j.close();
});
