// A handler statement that ends the journal's transaction: SQLite's own rollback (INSERT OR
// ROLLBACK, RAISE(ROLLBACK), a full disk) or transaction control in a ctx.tx body. Either would
// leave later statements committing on their own, without their records.
import { expect, test } from "bun:test";
import Database from "libsql";
import { join } from "node:path";
import type { HandlerDb } from "../../src/index.ts";
import { Journal } from "../../src/journal/journal.ts";
import { tempDir } from "../support/tmp.ts";

function open() {
  const path = join(tempDir(), "j.db");
  const journal = Journal.open({ url: `file:${path}`, commitIntervalMs: 5 });
  return { path, journal };
}

const rec = (id: string, offset: number) => ({
  handler: "h", id, status: "completed" as const, topic: "t", partition: 0, offset: String(offset), attempts: 1,
});

const insert = (db: HandlerDb, v: string, how = "INSERT") => db.execute({ sql: `${how} INTO items VALUES (?)`, args: [v] });

function contents(path: string) {
  const other = new Database(path);
  const items = (other.prepare("SELECT v FROM items ORDER BY v").all() as { v: string }[]).map((r) => r.v);
  const done = (other.prepare("SELECT id FROM kexo_messages ORDER BY id").all() as { id: string }[]).map((r) => r.id);
  const txs = (other.prepare("SELECT id FROM kexo_steps ORDER BY id").all() as { id: string }[]).map((r) => r.id);
  other.close();
  return { items, done, txs };
}

for (const savepoint of [false, true]) {
  test(`SQLite rolling the transaction back under a ctx.tx statement keeps the other messages' writes, and nothing after it autocommits (${savepoint ? "savepoint" : "redo"} run)`, async () => {
    const { path, journal } = open();
    await journal.handlerDb.execute("CREATE TABLE items (v TEXT PRIMARY KEY)");
    if (savepoint) {
      // A failed body puts handler h on savepoints for its next runs.
      await expect(journal.runTx("h", "m0", "tx:1", () => Promise.reject(new Error("first failure")))).rejects.toThrow("first failure");
    }
    await journal.runTx("h", "m1", "tx:1", (db) => insert(db, "a"));
    journal.finish(rec("m1", 1));
    await journal.runTx("h", "m2", "tx:1", (db) => insert(db, "b"));
    const caught: string[] = [];
    // OR ROLLBACK on a duplicate: SQLite ends the whole transaction, not just the statement.
    const failing = journal.runTx("h", "m3", "tx:1", async (db) => {
      await insert(db, "c");
      try {
        await insert(db, "a", "INSERT OR ROLLBACK");
      } catch (err) {
        caught.push((err as Error).message);
      }
      // The handler carries on: this must not commit on its own.
      await insert(db, "after-rollback");
      return 3;
    });
    await expect(failing).rejects.toThrow(/ended the journal's transaction/);
    expect(caught.join()).toMatch(/UNIQUE|constraint/i);
    await journal.runTx("h", "m4", "tx:1", (db) => insert(db, "d"));
    journal.finish(rec("m4", 4));
    // Nothing of the group is in the file before its COMMIT.
    expect(contents(path).items).toEqual([]);
    await journal.durable();
    expect(contents(path)).toEqual({ items: ["a", "b", "d"], done: ["m1", "m4"], txs: ["m2"] });
    await journal.close();
  });
}

test("transaction control in a ctx.tx body is refused with what to do instead, and the group is untouched", async () => {
  const { path, journal } = open();
  await journal.handlerDb.execute("CREATE TABLE items (v TEXT PRIMARY KEY)");
  await journal.runTx("h", "m1", "tx:1", (db) => insert(db, "a"));
  for (const sql of ["COMMIT", "  -- a comment\n end transaction", "/* x */ROLLBACK", "BEGIN", "SAVEPOINT s", "release s", ";COMMIT", " ; ;\nrollback"]) {
    await expect(journal.runTx("h", `m-${sql}`, "tx:1", (db) => db.execute(sql))).rejects.toThrow(/runs inside kexo's transaction.*db\.batch/);
  }
  await expect(journal.runTx("h", "m2", "tx:1", (db) => db.batch(["INSERT INTO items VALUES ('b')", "COMMIT"]))).rejects.toThrow(/runs inside kexo's transaction/);
  expect(contents(path).items).toEqual([]);
  await journal.runTx("h", "m3", "tx:1", (db) => insert(db, "c"));
  await journal.durable();
  expect(contents(path)).toEqual({ items: ["a", "c"], done: [], txs: ["m1", "m3"] });
  // Outside a ctx.tx (setup()), statements are the handler's own business.
  await journal.handlerDb.execute("BEGIN");
  await journal.handlerDb.execute("INSERT INTO items VALUES ('setup')");
  await journal.handlerDb.execute("COMMIT");
  expect(contents(path).items).toEqual(["a", "c", "setup"]);
  await journal.close();
});

/** An items table, and a disk that is full a few pages from now: SQLITE_FULL rolls the whole transaction back. */
async function fullSoon(journal: Journal): Promise<void> {
  await journal.handlerDb.execute("CREATE TABLE items (v TEXT PRIMARY KEY)");
  const pages = ((await journal.handlerDb.execute("PRAGMA page_count")).rows[0] as { page_count: number }).page_count;
  await journal.handlerDb.execute(`PRAGMA max_page_count = ${pages + 4}`);
}

test("a full disk under a ctx.tx statement fails that tx alone; under the journal's own write it stops the journal with nothing acknowledged", async () => {
  const { path, journal } = open();
  await fullSoon(journal);
  await journal.runTx("h", "m1", "tx:1", (db) => insert(db, "a"));
  await expect(journal.runTx("h", "m2", "tx:1", (db) => insert(db, "x".repeat(200_000)))).rejects.toThrow(/ended the journal's transaction.*full/);
  await journal.runTx("h", "m3", "tx:1", (db) => insert(db, "c"));
  await journal.durable();
  expect(contents(path)).toEqual({ items: ["a", "c"], done: [], txs: ["m1", "m3"] });

  await journal.runTx("h", "m4", "tx:1", (db) => insert(db, "d"));
  // One of kexo's own statements written at once (the outbox relay's deletes, dead letters).
  expect(() => journal.write("INSERT INTO items VALUES (?)", "y".repeat(200_000))).toThrow(/full/);
  await expect(journal.durable()).rejects.toThrow(/journal write failed and SQLite rolled back the group transaction/);
  // m4's effect must not have committed on its own, nor anything after it.
  await expect(journal.runTx("h", "m5", "tx:1", (db) => insert(db, "e"))).rejects.toThrow(/journal write failed/);
  expect(contents(path)).toEqual({ items: ["a", "c"], done: [], txs: ["m1", "m3"] });
  await journal.close().catch(() => undefined);
});

test("a full disk under the rows written at COMMIT (a step's result) fails the COMMIT: nothing of the group is acknowledged", async () => {
  const { path, journal } = open();
  await fullSoon(journal);
  await journal.runTx("h", "m1", "tx:1", (db) => insert(db, "a"));
  await journal.durable();
  await journal.runTx("h", "m2", "tx:1", (db) => insert(db, "b"));
  // Kept in memory until the COMMIT, whose multi-row INSERT meets the full disk.
  journal.recordStep("h", "m2", "step:big", JSON.stringify("y".repeat(200_000)));
  await expect(journal.durable()).rejects.toThrow(/journal commit failed.*full/);
  await expect(journal.runTx("h", "m3", "tx:1", (db) => insert(db, "c"))).rejects.toThrow(/journal commit failed/);
  expect(contents(path)).toEqual({ items: ["a"], done: [], txs: ["m1"] });
  await journal.close().catch(() => undefined);
});

test("a db kept outside a ctx.tx body may read the open group but not write into it", async () => {
  const { path, journal } = open();
  const db = journal.handlerDb;
  await db.execute("CREATE TABLE items (v TEXT PRIMARY KEY)");
  await journal.runTx("h", "m1", "tx:1", (tx) => insert(tx, "a"));
  // The group is open (not committed): a handler using setup()'s db in handle(), say.
  expect((await db.execute("SELECT count(*) AS n FROM items")).rows[0]).toEqual({ n: 1 });
  for (const sql of ["INSERT OR ROLLBACK INTO items VALUES ('a')", "INSERT INTO items VALUES ('x')", "COMMIT"]) {
    await expect(db.execute(sql)).rejects.toThrow(/db written outside a ctx\.tx body while kexo's transaction is open/);
  }
  await expect(db.batch(["INSERT INTO items VALUES ('y')"])).rejects.toThrow(/outside a ctx\.tx body/);
  await journal.runTx("h", "m2", "tx:1", (tx) => insert(tx, "b"));
  await journal.durable();
  expect(contents(path)).toEqual({ items: ["a", "b"], done: [], txs: ["m1", "m2"] });
  await journal.close();
});
