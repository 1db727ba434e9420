// A file journal commits with synchronous = NORMAL and fsyncs the WAL itself, off the JS thread,
// before it acknowledges anything (see src/journal/wal-sync.ts). These tests try to see an
// acknowledgement before that fsync, an outbox seq from a later transaction, and a failed
// fsync that acknowledges anyway.
import { expect, test } from "bun:test";
import Database from "libsql";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { EventBus } from "../../src/events.ts";
import { type CommitHook, Journal, type MessageRecord, type OutboxRecord } from "../../src/journal/journal.ts";
import { WalSync } from "../../src/journal/wal-sync.ts";
import { tempDir } from "../support/tmp.ts";

const rec = (id: string, offset: number): MessageRecord => ({
  handler: "h", id, status: "completed", topic: "t", partition: 0, offset: String(offset), attempts: 1, result: "null",
});
const out = (id: string): OutboxRecord => ({ handler: "h", messageId: id, topic: "out", key: null, value: Buffer.from(id), headers: {} });

test("the journal runs WAL with synchronous = NORMAL; :memory: keeps FULL", async () => {
  const path = join(tempDir(), "j.db");
  const journal = Journal.open({ url: `file:${path}` });
  expect(journal.query<{ synchronous: number }>("PRAGMA synchronous")[0]!.synchronous).toBe(1);
  expect(journal.query<{ journal_mode: string }>("PRAGMA journal_mode")[0]!.journal_mode).toBe("wal");
  await journal.close();
  const mem = Journal.open({ url: ":memory:" });
  expect(mem.query<{ synchronous: number }>("PRAGMA synchronous")[0]!.synchronous).toBe(2);
  await mem.close();
});

test("a COMMIT is acknowledged only after its fsync, in commit order, and later commits share one", async () => {
  const path = join(tempDir(), "j.db");
  const journal = Journal.open({ url: `file:${path}`, commitIntervalMs: 60_000 });
  const acked: bigint[] = [];
  let next = 0n;
  let taken = 0n;
  const hook: CommitHook = {
    progress: () => {
      if (next <= taken) return [];
      taken = next;
      return [{ groupId: "g", topic: "t", partition: 0, nextOffset: next }];
    },
    hasProgress: () => next > taken,
    committed: (entries) => {
      for (const e of entries) acked.push(e.nextOffset);
    },
  };
  journal.addCommitHook(hook);
  journal.finish(rec("m0", 0));
  next = 1n;
  const first = journal.flush();
  // COMMIT ran inside flush(); its acknowledgement waits for the fsync on the thread pool.
  expect(acked).toEqual([]);
  const other = new Database(path);
  expect((other.prepare("SELECT next_offset AS n FROM kexo_progress").get() as { n: number }).n).toBe(1);
  journal.finish(rec("m1", 1));
  next = 2n;
  const second = journal.flush();
  expect(acked).toEqual([]);
  await first;
  expect(acked[0]).toBe(1n);
  await second;
  expect(acked).toEqual([1n, 2n]);
  // durable() with nothing new still waits for an fsync in flight.
  journal.finish(rec("m2", 2));
  next = 3n;
  const third = journal.flush();
  await journal.durable();
  expect(acked).toEqual([1n, 2n, 3n]);
  await third;
  other.close();
  await journal.close();
});

test("journal.committed reports the outbox seq of its own COMMIT, not of the transaction opened after it", async () => {
  const bus = new EventBus();
  const journal = Journal.open({ url: `file:${join(tempDir(), "j.db")}`, bus, commitIntervalMs: 60_000 });
  const seqs: (number | undefined)[] = [];
  bus.on("journal.committed", (e) => seqs.push(e.outboxSeq));
  journal.finish(rec("m0", 0), [out("m0"), out("m0")]);
  const first = journal.flush();
  // The next transaction writes a row before the first COMMIT's fsync has ended.
  journal.finish(rec("m1", 1), [out("m1")]);
  expect(journal.query<{ m: number }>("SELECT max(seq) AS m FROM kexo_outbox")[0]!.m).toBe(3);
  await first;
  expect(seqs).toEqual([2]);
  await journal.flush();
  expect(seqs).toEqual([2, 3]);
  journal.finish(rec("m2", 2));
  await journal.flush();
  expect(seqs).toEqual([2, 3, undefined]);
  await journal.close();
});

test("a failed fsync acknowledges nothing and fails the journal", async () => {
  const bus = new EventBus();
  const path = join(tempDir(), "j.db");
  const journal = Journal.open({ url: `file:${path}`, bus, commitIntervalMs: 60_000 });
  const errors: unknown[] = [];
  bus.on("worker.error", (e) => errors.push(e.error));
  let committed = 0;
  journal.addCommitHook({ progress: () => [{ groupId: "g", topic: "t", partition: 0, nextOffset: 1n }], hasProgress: () => true, committed: () => void committed++ });
  // SQLite keeps writing to its open WAL; the journal's own descriptor, opened at the first sync,
  // finds no file to sync.
  rmSync(`${path}-wal`);
  journal.finish(rec("m0", 0));
  const err = await journal.flush().then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(Error);
  expect((err as { code?: string }).code).toBe("journal_sync_failed");
  expect((err as Error).message).toContain("could not be made durable");
  expect((err as Error).message).toContain("-wal");
  expect(committed).toBe(0);
  expect(errors.length).toBe(1);
  expect(() => journal.finish(rec("m1", 1))).toThrow(/could not be made durable/);
  await journal.close();
});

test("WalSync: an acknowledgement registered during an fsync waits for the next one", async () => {
  const path = join(tempDir(), "w.db");
  const db = new Database(path);
  db.exec("PRAGMA journal_mode = WAL; CREATE TABLE t (x)");
  const sync = new WalSync(`${path}-wal`, (e) => {
    throw e;
  });
  const order: string[] = [];
  sync.after({ run: () => order.push("a"), fail: () => order.push("a failed") });
  expect(sync.busy).toBe(true);
  // Registered while a's fsync runs: must not ride on it.
  sync.after({ run: () => order.push("b"), fail: () => order.push("b failed") });
  sync.after({ run: () => order.push("c"), fail: () => order.push("c failed") });
  await new Promise<void>((resolve) => sync.whenIdle(resolve));
  expect(order).toEqual(["a", "b", "c"]);
  expect(sync.busy).toBe(false);
  sync.close();
  db.close();
});
