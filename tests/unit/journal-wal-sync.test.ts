// A file journal commits with synchronous = NORMAL and fsyncs the WAL itself, off the JS thread,
// before it acknowledges anything (see src/journal/wal-sync.ts). These tests try to see an
// acknowledgement before that fsync, an outbox seq from a later transaction, and a failed
// fsync that acknowledges anyway.
import { expect, test } from "bun:test";
import Database from "libsql";
import { closeSync, mkdirSync, readdirSync, readFileSync, readlinkSync, symlinkSync } from "node:fs";
import { join } from "node:path";
import { EventBus } from "../../src/events.ts";
import { type CommitHook, Journal, type MessageRecord, type OutboxRecord } from "../../src/journal/journal.ts";
import { WalSync } from "../../src/journal/wal-sync.ts";
import { tempDir } from "../support/tmp.ts";

const rec = (id: string, offset: number): MessageRecord => ({
  handler: "h", id, status: "completed", topic: "t", partition: 0, offset: String(offset), attempts: 1, result: "null",
});
/**
 * Closes the journal's own read-only descriptor of the WAL (SQLite's is read-write), so its next
 * fsync fails for real, with EBADF.
 */
function breakWalDescriptor(walPath: string): void {
  let closed = 0;
  for (const fd of readdirSync("/proc/self/fd")) {
    let target: string;
    try {
      target = readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue;
    }
    if (target !== walPath) continue;
    const flags = /flags:\s+(\d+)/.exec(readFileSync(`/proc/self/fdinfo/${fd}`, "utf8"))?.[1];
    if (flags !== undefined && (parseInt(flags, 8) & 3) === 0) {
      closeSync(Number(fd));
      closed++;
    }
  }
  if (closed !== 1) throw new Error(`expected one read-only descriptor of ${walPath}, closed ${closed}`);
}

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
  breakWalDescriptor(`${path}-wal`);
  journal.finish(rec("m0", 0));
  const err = await journal.flush().then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(Error);
  expect((err as { code?: string }).code).toBe("journal_sync_failed");
  expect((err as Error).message).toContain("could not be made durable");
  expect((err as Error).message).toContain("-wal");
  expect(committed).toBe(0);
  expect(errors.length).toBe(1);
  expect(() => journal.finish(rec("m1", 1))).toThrow(/could not be made durable/);
  // Nothing waits forever on a failed journal.
  await expect(journal.commit()).rejects.toThrow(/could not be made durable/);
  await expect(journal.durable()).rejects.toThrow(/could not be made durable/);
  await journal.close();
  await expect(journal.commit()).rejects.toThrow(/could not be made durable|closed/);
});

test("a queued write that fails rejects commit() and durable() waiters instead of leaving them pending", async () => {
  const bus = new EventBus();
  const errors: unknown[] = [];
  bus.on("worker.error", (e) => errors.push(e.error));
  const journal = Journal.open({ url: `file:${join(tempDir(), "j.db")}`, bus, commitIntervalMs: 4 });
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const tx = journal.runTx("h", "id1", "tx:1", async () => {
    await gate;
    return 1;
  });
  // Queued behind the open ctx.tx; fails when it runs (NOT NULL).
  journal.write("INSERT INTO kexo_outbox (handler, message_id, topic, headers, created_at) VALUES (NULL, 'a', 't', '{}', 0)");
  const committed = journal.commit().then(() => "resolved", () => "rejected");
  const durable = journal.durable().then(() => "resolved", () => "rejected");
  release();
  await tx.catch(() => {});
  expect(await committed).toBe("rejected");
  expect(await durable).toBe("rejected");
  expect(errors.length).toBeGreaterThan(0);
  await journal.close();
});

test("durable() with only an fsync in flight resolves after the next fsync, however busy other writers keep the journal", async () => {
  const journal = Journal.open({ url: `file:${join(tempDir(), "j.db")}`, commitIntervalMs: 1 });
  journal.setMeta("k", "0");
  await journal.commit(); // the COMMIT ran; its fsync may be in flight
  let i = 0;
  let writing = true;
  // Another handler writes all the time: WalSync never goes idle while this runs.
  const writer = (async () => {
    while (writing) {
      journal.setMeta("k", String(++i));
      await journal.commit();
      // A turn of the event loop, where fsync completions arrive.
      await new Promise((r) => setImmediate(r));
    }
  })();
  const t0 = performance.now();
  await journal.durable();
  const waited = performance.now() - t0;
  writing = false;
  await writer;
  await journal.close();
  // Two fsyncs at most (this machine: well under a millisecond each); it used to wait for the
  // writer to stop.
  expect(waited).toBeLessThan(500);
  expect(i).toBeGreaterThan(0);
});

test("a symlinked journal path: the WAL beside the link's target is the one synced", async () => {
  const dir = tempDir();
  mkdirSync(join(dir, "real"));
  symlinkSync(join(dir, "real", "kexo.db"), join(dir, "kexo.db"));
  const journal = Journal.open({ url: `file:${join(dir, "kexo.db")}` });
  journal.finish(rec("m0", 0));
  await journal.flush();
  expect(journal.lookup("h", "m0")?.status).toBe("completed");
  await journal.close();
});

test("WalSync: an acknowledgement registered during an fsync waits for the next one", async () => {
  const path = join(tempDir(), "w.db");
  const db = new Database(path);
  db.exec("PRAGMA journal_mode = WAL; CREATE TABLE t (x)");
  const sync = new WalSync(`${path}-wal`);
  const order: string[] = [];
  sync.after({ run: () => order.push("a"), fail: () => order.push("a failed") });
  expect(sync.busy).toBe(true);
  // Registered while a's fsync runs: must not ride on it.
  sync.after({ run: () => order.push("b"), fail: () => order.push("b failed") });
  sync.after({ run: () => order.push("c"), fail: () => order.push("c failed") });
  await new Promise<void>((resolve) => sync.after({ run: resolve, fail: () => resolve() }));
  expect(order).toEqual(["a", "b", "c"]);
  expect(sync.busy).toBe(false);
  sync.close();
  db.close();
});
