// The handler's db over the local libsql driver: a handler's mistake in its args is an error the
// handler sees, never the worker's death (the driver aborts the process when an object of named
// args meets a bare `?` parameter), and named args bind as @libsql/client binds them (the driver
// binds NULL for a key written with its prefix, `{ ":id": 1 }`).
import { expect, test } from "bun:test";
import { join } from "node:path";
import { afterFirstStatement, firstKeyword, hasNamelessParameter, journalTableWritten } from "../../src/journal/handler-db.ts";
import { Journal } from "../../src/journal/journal.ts";
import { tempDir } from "../support/tmp.ts";

test("bare ? parameters are found outside literals, quoted identifiers and comments", () => {
  expect(hasNamelessParameter("INSERT INTO t VALUES (?, ?)")).toBe(true);
  expect(hasNamelessParameter("INSERT INTO t VALUES (:a, ?)")).toBe(true);
  expect(hasNamelessParameter("SELECT * FROM t WHERE a = ?")).toBe(true);
  expect(hasNamelessParameter("INSERT INTO t VALUES (?1, ?2)")).toBe(false);
  expect(hasNamelessParameter("INSERT INTO t VALUES (:a, @b, $c)")).toBe(false);
  expect(hasNamelessParameter("SELECT '?', \"?\", `?`, [?] -- ?\n /* ? */ FROM t WHERE a = :a")).toBe(false);
  expect(hasNamelessParameter("SELECT 'it''s ?' , :a")).toBe(false);
  expect(hasNamelessParameter("SELECT 'it''s' , ?")).toBe(true);
  // ?NNN numbers parameters: the ones it skips have no name.
  expect(hasNamelessParameter("SELECT ?2")).toBe(true);
  expect(hasNamelessParameter("SELECT ?2, :a")).toBe(true);
  expect(hasNamelessParameter("SELECT :a, ?2, :a")).toBe(false);
  expect(hasNamelessParameter("SELECT a$b FROM t WHERE x = :x")).toBe(false);
});

test("the statements of a text are told apart past literals, comments and trigger bodies", () => {
  expect(afterFirstStatement("CREATE TABLE a (x); CREATE TABLE b (y)")).toBe(" CREATE TABLE b (y)");
  expect(afterFirstStatement("INSERT INTO a VALUES (';'); -- done; really\n")).toBeUndefined();
  expect(afterFirstStatement("SELECT 1;;  /* ; */ ;")).toBeUndefined();
  expect(afterFirstStatement("SELECT \"a;b\", [c;d], `e;f` FROM t")).toBeUndefined();
  expect(afterFirstStatement("CREATE TEMP TRIGGER tr AFTER INSERT ON a BEGIN INSERT INTO b VALUES (1); END;")).toBeUndefined();
  expect(afterFirstStatement("SELECT 'open")).toBeUndefined();
  expect(firstKeyword(" -- c\n /* d */ ;; Commit")).toBe("commit");
  expect(firstKeyword("-- only a comment")).toBe("");
});

test("statements that would change kexo's journal tables are told from reads and from the handler's own tables", () => {
  const writes: [string, string][] = [
    ["DROP TABLE kexo_completions", "kexo_completions"],
    ["drop table if exists main.kexo_progress", "kexo_progress"],
    ['DELETE FROM "kexo_outbox" WHERE 1', "kexo_outbox"],
    ["/* c */ update or ignore kexo_meta set value = 1", "kexo_meta"],
    ["INSERT OR REPLACE INTO [kexo_retries] VALUES (1)", "kexo_retries"],
    ["REPLACE INTO `KEXO_Steps` VALUES (1)", "kexo_steps"],
    ["ALTER TABLE kexo_dead_letters ADD COLUMN x", "kexo_dead_letters"],
    ["CREATE TRIGGER t AFTER UPDATE OF a ON main.kexo_completions BEGIN SELECT 1; END", "kexo_completions"],
    ["CREATE UNIQUE INDEX IF NOT EXISTS i ON kexo_outbox (seq)", "kexo_outbox"],
    ["CREATE INDEX kexo_progress_x ON mine (a)", "kexo_progress_x"],
  ];
  for (const [sql, table] of writes) expect({ sql, table: journalTableWritten(sql) }).toEqual({ sql, table });
  for (const sql of [
    "SELECT * FROM kexo_completions",
    "INSERT INTO mine SELECT id FROM kexo_completions",
    "INSERT INTO mine VALUES ('kexo_completions')",
    "CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY)",
    "DELETE FROM orders WHERE id IN (SELECT id FROM kexo_steps)",
    "CREATE TRIGGER t AFTER INSERT ON orders BEGIN SELECT 1; END",
    "UPDATE orders SET note = 'kexo_meta'",
  ]) {
    expect({ sql, table: journalTableWritten(sql) }).toEqual({ sql, table: undefined });
  }
});

test("a handler's db refuses to write kexo's journal tables, with what to do; reads go through", async () => {
  const journal = Journal.open({ url: `file:${join(tempDir(), "j.db")}`, commitIntervalMs: 5 });
  try {
    const db = journal.handlerDb;
    await expect(db.execute("DROP TABLE kexo_meta")).rejects.toThrow(
      /would change kexo_meta, which belongs to kexo's journal: "DROP TABLE kexo_meta".*without the kexo_ prefix/,
    );
    await expect(db.batch(["CREATE TABLE mine (a)", "DELETE FROM kexo_meta"])).rejects.toThrow(/would change kexo_meta/);
    expect((await db.execute("SELECT count(*) AS n FROM kexo_meta WHERE key = 'schema_version'")).rows[0]).toEqual({ n: 1 });
  } finally {
    await journal.close();
  }
});

test("execute() with two statements in its text fails with what to do, rather than running the first alone", async () => {
  const journal = Journal.open({ url: `file:${join(tempDir(), "j.db")}`, commitIntervalMs: 5 });
  try {
    const db = journal.handlerDb;
    await expect(db.execute("CREATE TABLE a (x); CREATE TABLE b (y)")).rejects.toThrow(
      /execute\(\) runs one statement, and this text holds more after its first ";" \("CREATE TABLE a \(x\);.*" then "CREATE TABLE b \(y\)"\).*batch\(\)/,
    );
    expect((await db.execute("SELECT count(*) AS n FROM sqlite_master WHERE name = 'a'")).rows[0]).toEqual({ n: 0 });
    await db.execute("CREATE TABLE a (x);  -- trailing comment");
    await db.batch(["CREATE TABLE b (y)", "CREATE TRIGGER tr AFTER INSERT ON a BEGIN INSERT INTO b VALUES (NEW.x); INSERT INTO b VALUES (NEW.x); END"]);
    await db.execute({ sql: "INSERT INTO a VALUES (?)", args: [7] });
    expect((await db.execute("SELECT count(*) AS n FROM b WHERE y = 7")).rows[0]).toEqual({ n: 2 });
  } finally {
    await journal.close();
  }
});

test("named args on a statement with bare ? parameters fail that call with what to do, in setup() and in ctx.tx, and the worker carries on; prefixed names bind", async () => {
  const journal = Journal.open({ url: `file:${join(tempDir(), "j.db")}`, commitIntervalMs: 5 });
  try {
    const db = journal.handlerDb;
    await db.execute("CREATE TABLE t (a, b)");
    const advice = /named args \(an object\) given to a statement with bare \? parameters: "INSERT INTO t VALUES \(:a, \?\)".*Pass args as an array/;
    await expect(db.execute({ sql: "INSERT INTO t VALUES (:a, ?)", args: { a: 1 } })).rejects.toThrow(advice);
    await expect(db.execute({ sql: "INSERT INTO t VALUES (?, ?)", args: {} })).rejects.toThrow(/named args/);
    await expect(db.execute({ sql: "INSERT INTO t VALUES ('?', ?2)", args: { 2: 1 } })).rejects.toThrow(/named args/);
    await expect(db.batch([{ sql: "INSERT INTO t VALUES (?, ?)", args: { a: 1, b: 2 } }])).rejects.toThrow(/named args/);
    await expect(
      journal.runTx("h", "m1", "tx:1", async (tx) => {
        await tx.execute({ sql: "INSERT INTO t VALUES (?, ?)", args: [1, 2] });
        await tx.execute({ sql: "INSERT INTO t VALUES (:a, ?)", args: { a: 3 } });
      }),
    ).rejects.toThrow(advice);
    // Arrays bind by position, objects by name with or without the prefix.
    await journal.runTx("h", "m2", "tx:1", async (tx) => {
      await tx.execute({ sql: "INSERT INTO t VALUES (?, ?)", args: ["x", 1] });
      await tx.execute({ sql: "INSERT INTO t VALUES (:a, $b)", args: { a: "y", $b: 2 } });
      await tx.execute({ sql: "INSERT INTO t VALUES (@a, :b)", args: { "@a": "z", ":b": 4 } });
      await tx.execute({ sql: "INSERT INTO t VALUES ('?', ?1)", args: { 1: 3 } });
    });
    // Booleans, Dates and ArrayBuffers as @libsql/client binds them (a boolean aborted the process).
    const at = new Date(1_700_000_000_000);
    await journal.runTx("h", "m3", "tx:1", async (tx) => {
      await tx.execute({ sql: "INSERT INTO t VALUES (?, ?)", args: ["true", true] });
      await tx.execute({ sql: "INSERT INTO t VALUES (:a, :b)", args: { a: "false", b: false } });
      await tx.execute({ sql: "INSERT INTO t VALUES (?, ?)", args: ["date", at] });
      await tx.execute({ sql: "INSERT INTO t VALUES (?, ?)", args: ["buffer", new Uint8Array([1, 2]).buffer] });
    });
    const rows = await db.execute("SELECT a, b FROM t ORDER BY a");
    expect(rows.rows.map((r) => [r.a, r.b instanceof ArrayBuffer ? [...new Uint8Array(r.b)] : r.b])).toEqual([
      ["?", 3], ["buffer", [1, 2]], ["date", at.valueOf()], ["false", 0], ["true", 1], ["x", 1], ["y", 2], ["z", 4],
    ]);
  } finally {
    await journal.close();
  }
});

test("integers read as numbers while exact, else as BigInt (never rounded), as on a libSQL server", async () => {
  const journal = Journal.open({ url: `file:${join(tempDir(), "j.db")}`, commitIntervalMs: 5 });
  try {
    const r = await journal.handlerDb.execute("SELECT 42 AS small, 9007199254740993 AS big, -9223372036854775808 AS min, 1.5 AS real");
    expect(r.rows[0]).toEqual({ small: 42, big: 9007199254740993n, min: -9223372036854775808n, real: 1.5 });
  } finally {
    await journal.close();
  }
});

test("after setup(), a db written outside a ctx.tx body is refused even while no group is open (it would commit an effect without a record)", async () => {
  const journal = Journal.open({ url: `file:${join(tempDir(), "j.db")}`, commitIntervalMs: 5 });
  try {
    const kept = journal.handlerDb; // what a handler keeps from setup(db)
    await kept.execute("CREATE TABLE t (a)");
    await kept.batch([{ sql: "INSERT INTO t VALUES (?)", args: [1] }]);
    journal.endSetup();
    await journal.flush(); // no group open now: the write below would autocommit
    const advice = /db written outside setup\(\) and outside a ctx\.tx body \("INSERT INTO t VALUES \(\?\)"\).*without a message's record.*inside that body/;
    await expect(kept.execute({ sql: "INSERT INTO t VALUES (?)", args: [2] })).rejects.toThrow(advice);
    await expect(kept.batch([{ sql: "INSERT INTO t VALUES (?)", args: [3] }])).rejects.toThrow(advice);
    await expect(kept.execute("CREATE TABLE u (b)")).rejects.toThrow(/outside setup\(\)/);
    // Reads still work, and ctx.tx bodies write as before.
    expect((await kept.execute("SELECT count(*) AS n FROM t")).rows[0]).toEqual({ n: 1 });
    await journal.runTx("h", "m1", "tx:1", (tx) => tx.execute({ sql: "INSERT INTO t VALUES (?)", args: [4] }));
    await journal.flush();
    expect((await kept.execute("SELECT a FROM t ORDER BY a")).rows.map((r) => r.a)).toEqual([1, 4]);
  } finally {
    await journal.close();
  }
});
