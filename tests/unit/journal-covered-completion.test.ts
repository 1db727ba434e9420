// A completion marked coveredBy leaves no kexo_messages row exactly when the same COMMIT writes
// its group's partition progress past its offset; otherwise the row is written. `kexo inspect`
// answers for such an id from kexo_progress.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { type CommitHook, Journal } from "../../src/journal/journal.ts";
import { columnIn } from "../support/db.ts";
import { tempDir } from "../support/tmp.ts";
import { BUN, ROOT } from "../support/worker.ts";

const id = (offset: number) => `kafka-unique-id-my-topic-1-my-group-${offset}`;
const rec = (offset: number, coveredBy?: string) => ({
  handler: "h", id: id(offset), status: "completed" as const, topic: "my-topic", partition: 1, offset: String(offset),
  attempts: 1, result: "null", ...(coveredBy ? { coveredBy } : {}),
});

function setup(opts: { maxPendingWrites?: number } = {}) {
  const path = join(tempDir(), "j.db");
  const journal = Journal.open({ url: `file:${path}`, commitIntervalMs: 60_000, ...opts });
  // The consumer's view of partition my-topic/1: done below `next`.
  const view = { next: -1n, durable: -1n };
  const hook: CommitHook = {
    progress: () => (view.next > view.durable ? [{ groupId: "my-group", topic: "my-topic", partition: 1, nextOffset: view.next }] : []),
    hasProgress: () => view.next > view.durable,
    committed: (entries) => {
      for (const e of entries) view.durable = e.nextOffset;
    },
  };
  journal.addCommitHook(hook);
  const rows = () => columnIn<string>(path, "SELECT id FROM kexo_messages ORDER BY id");
  return { path, journal, view, rows };
}

test("covered completions leave no row; uncovered, other-group and unmarked ones keep theirs", async () => {
  const { journal, view, rows } = setup();
  journal.finish(rec(5, "my-group"));
  journal.finish(rec(6, "other-group"));
  journal.finish(rec(7));
  journal.finish(rec(9, "my-group")); // progress below stays at 8: not covered
  view.next = 8n;
  await journal.flush();
  expect(view.durable).toBe(8n);
  expect(rows()).toEqual([id(6), id(7), id(9)]);
  await journal.close();
});

test("a size-triggered COMMIT that runs before the consumer moved progress writes the row", async () => {
  const { journal, view, rows } = setup({ maxPendingWrites: 1 });
  journal.finish(rec(3, "my-group")); // commits inline, before `next` passes 3
  view.next = 4n;
  await journal.flush();
  expect(rows()).toEqual([id(3)]);
  await journal.close();
});

test("kexo inspect answers for an id recorded only by partition progress", async () => {
  const { path, journal, view, rows } = setup();
  journal.finish(rec(2, "my-group"));
  view.next = 3n;
  await journal.flush();
  await journal.close();
  expect(rows()).toEqual([]);
  const inspect = (offset: number, json = false) => {
    const p = Bun.spawnSync([BUN, join(ROOT, "main.ts"), "inspect", id(offset), "--db", `file:${path}`, ...(json ? ["--json"] : [])]);
    return { code: p.exitCode, out: p.stdout.toString() };
  };
  const text = inspect(2);
  expect(text.code).toBe(0);
  expect(text.out).toContain("status     completed (recorded by partition progress; no result)");
  expect(text.out).toContain("message    my-topic/1@2");
  expect(JSON.parse(inspect(2, true).out)).toMatchObject({ status: "completed", recordedBy: "partition progress", group: "my-group", offset: "2" });
  // At or above progress: not handled yet.
  expect(inspect(3).code).toBe(64);
});

test("a covered completion is found by its position before the COMMIT, and after it by progress or row", async () => {
  const { journal, view, rows } = setup();
  journal.finish(rec(4, "my-group"));
  // A redelivery of offset 4 before the COMMIT: the lookup by id alone can't see it, by position it does.
  const at = { topic: "my-topic", partition: 1, offset: "4" };
  expect(journal.lookup("h", id(4), at)).toMatchObject({ status: "completed", result: "null", attempts: 1, offset: 4 });
  expect(journal.lookup("h", id(4), { ...at, offset: "5" })).toBeUndefined();
  expect(journal.lookup("other-handler", id(4), at)).toBeUndefined();
  view.next = 3n; // progress below 4: the row is written
  await journal.flush();
  expect(rows()).toEqual([id(4)]);
  expect(journal.lookup("h", id(4), at)?.status).toBe("completed");
  await journal.close();
});

test("fresh ctx.tx records: a retry finds them before the COMMIT, and a completion drops them", async () => {
  const { path, journal, view } = setup();
  await journal.handlerDb.execute("CREATE TABLE items (v TEXT)");
  const steps = () => columnIn<string>(path, "SELECT id || ' ' || name || ' ' || result FROM kexo_steps ORDER BY id");
  let runs = 0;
  const body = async (db: import("../../src/index.ts").HandlerDb) => {
    runs++;
    await db.execute({ sql: "INSERT INTO items VALUES (?)", args: ["x"] });
    return runs;
  };
  // Message 1: first attempt (fresh) runs its tx, then fails after it; the retry's lookup
  // (defaultId) finds the record in memory and does not run the body again.
  const fresh1: unknown[][] = [];
  expect(await journal.runTx("h", id(1), "tx:1", body, fresh1)).toBe(1);
  expect(await journal.runTx("h", id(1), "tx:1", body, undefined, true)).toBe(1);
  expect(runs).toBe(1);
  // Message 2 ran its tx and completes before the COMMIT: its record is dropped.
  const fresh2: unknown[][] = [];
  await journal.runTx("h", id(2), "tx:1", body, fresh2);
  journal.finish(rec(2, "my-group"), [], fresh2);
  view.next = 3n;
  await journal.flush();
  // Message 1 never completed: its record stays, so a later run does not repeat the tx.
  expect(steps()).toEqual([`${id(1)} tx:1 1`]);
  expect(columnIn<string>(path, "SELECT v FROM items")).toEqual(["x", "x"]);
  await journal.close();
});
