// The journal's group commit and ctx.tx atomicity, on real libSQL files.
import { describe, expect, test } from "bun:test";
import Database from "libsql";
import { join } from "node:path";
import type { HandlerDb, InValue } from "../../src/index.ts";
import { Journal } from "../../src/journal/journal.ts";
import { tempDir } from "../support/tmp.ts";

function open() {
  const path = join(tempDir(), "j.db");
  const journal = Journal.open({ url: `file:${path}`, commitIntervalMs: 5 });
  return { path, journal };
}

const rec = (id: string, offset: number) => ({
  handler: "h", id, status: "completed" as const, topic: "t", partition: 0, offset: String(offset), attempts: 1, result: `{"n":${offset}}`,
});

describe("journal", () => {
  test("writes are invisible to other connections until the group commit, then durable", async () => {
    const { path, journal } = open();
    journal.finish(rec("a", 1));
    journal.finish(rec("b", 2));
    const other = new Database(path);
    expect((other.prepare("SELECT count(*) AS n FROM kexo_messages").get() as { n: number }).n).toBe(0);
    await journal.durable();
    expect((other.prepare("SELECT count(*) AS n FROM kexo_messages").get() as { n: number }).n).toBe(2);
    expect(journal.lookup("h", "a")?.status).toBe("completed");
    other.close();
    await journal.close();
  });

  test("a failing tx rolls back only its own writes, not other messages' records written meanwhile", async () => {
    const { path, journal } = open();
    await journal.handlerDb.execute("CREATE TABLE items (v TEXT)");
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const failing = journal.runTx("h", "m1", "tx:1", async (db) => {
      await db.execute({ sql: "INSERT INTO items VALUES (?)", args: ["from-m1"] });
      await gate;
      throw new Error("boom");
    });
    // Another message completes while m1's savepoint is open: its write must wait, not join it.
    journal.finish(rec("m2", 2));
    const ok = journal.runTx("h", "m3", "tx:1", async (db) => {
      await db.execute({ sql: "INSERT INTO items VALUES (?)", args: ["from-m3"] });
      return 7;
    });
    release();
    await expect(failing).rejects.toThrow("boom");
    expect(await ok).toBe(7);
    await journal.durable();
    const other = new Database(path);
    expect(other.prepare("SELECT v FROM items ORDER BY v").all()).toEqual([{ v: "from-m3" }]);
    expect((other.prepare("SELECT id FROM kexo_messages").all() as { id: string }[]).map((r) => r.id)).toEqual(["m2"]);
    expect(other.prepare("SELECT id, name, result FROM kexo_steps").all()).toEqual([{ id: "m3", name: "tx:1", result: "7" }]);
    other.close();
    await journal.close();
  });

  test("failed txs in one group (undone by redo, then by savepoint) leave exactly the other txs' writes", async () => {
    const { path, journal } = open();
    await journal.handlerDb.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT, b BLOB)");
    const args: InValue[] = ["m1", Buffer.from("m1")];
    const ids: bigint[] = [];
    const insert = (db: HandlerDb, v: string) => db.execute({ sql: "INSERT INTO items (v, b) VALUES (?, ?)", args: [v, Buffer.from(v)] });
    ids.push((await journal.runTx("h", "m1", "tx:1", async (db) => {
      const r = await db.execute({ sql: "INSERT INTO items (v, b) VALUES (?, ?)", args });
      // The handler reuses its array and buffer: a redo must bind what was bound then.
      args[0] = "changed";
      (args[1] as Buffer).fill(0);
      return r;
    })).lastInsertRowid!);
    journal.recordStep("h", "m1", "step:a", "1");
    // First failure of handler h: no savepoint, so the transaction is rolled back and redone.
    await expect(journal.runTx("h", "m2", "tx:1", async (db) => {
      await insert(db, "m2-a");
      await insert(db, "m2-b");
      throw new Error("boom m2");
    })).rejects.toThrow("boom m2");
    ids.push((await journal.runTx("h", "m3", "tx:1", async (db) => {
      const named: Record<string, InValue> = { v: "m3", b: Buffer.from("m3") };
      const r = await db.execute({ sql: "INSERT INTO items (v, b) VALUES (:v, :b)", args: named });
      named.v = "changed";
      return r;
    })).lastInsertRowid!);
    // h failed lately, so this one runs in a savepoint; its statements must not be redone later.
    await expect(journal.runTx("h", "m4", "tx:1", async (db) => {
      await insert(db, "m4");
      throw new Error("boom m4");
    })).rejects.toThrow("boom m4");
    ids.push((await journal.runTx("h", "m5", "tx:1", (db) => insert(db, "m5"))).lastInsertRowid!);
    // Another handler's first failure: a second redo, over the savepoint-era writes.
    await expect(journal.runTx("g", "m6", "tx:1", async (db) => {
      await db.execute({ sql: "UPDATE items SET v = 'ruined'", args: [] });
      throw new Error("boom m6");
    })).rejects.toThrow("boom m6");
    await journal.durable();
    const other = new Database(path);
    expect(other.prepare("SELECT id, v, CAST(b AS TEXT) AS b FROM items ORDER BY id").all()).toEqual([
      { id: 1, v: "m1", b: "m1" },
      { id: 2, v: "m3", b: "m3" },
      { id: 3, v: "m5", b: "m5" },
    ]);
    // A ctx.tx result is what JSON kept (as on a replay): the ResultSet's bigint rowid as a number.
    expect(ids).toEqual([1, 2, 3] as unknown as bigint[]);
    expect(other.prepare("SELECT id, name FROM kexo_steps ORDER BY id, name").all()).toEqual([
      { id: "m1", name: "step:a" }, { id: "m1", name: "tx:1" }, { id: "m3", name: "tx:1" }, { id: "m5", name: "tx:1" },
    ]);
    other.close();
    await journal.close();
  });

  test("a redo that returns other rows than the handler saw fails the journal, and later runs use savepoints", async () => {
    const { path, journal } = open();
    await journal.handlerDb.execute("CREATE TABLE items (v TEXT, r INTEGER)");
    const lucky = (db: HandlerDb) => db.execute({ sql: "INSERT INTO items VALUES ('kept', random()) RETURNING r", args: [] });
    const failing = async (db: HandlerDb) => {
      await db.execute("INSERT INTO items VALUES ('undone', 0)");
      throw new Error("boom");
    };
    await journal.runTx("h", "m1", "tx:1", lucky);
    await expect(journal.runTx("h", "m2", "tx:1", failing)).rejects.toThrow("boom");
    await expect(journal.durable()).rejects.toThrow(/could not undo the failed ctx\.tx of h message m2.*returned rows/);
    const other = new Database(path);
    // Nothing of the group was acknowledged, so nothing of it is in the file.
    expect(other.prepare("SELECT count(*) AS n FROM items").all()).toEqual([{ n: 0 }]);
    expect(other.prepare("SELECT value FROM kexo_meta WHERE key = 'tx_undo'").all()).toEqual([{ value: "savepoint" }]);
    other.close();
    await journal.close();

    const again = Journal.open({ url: `file:${path}`, commitIntervalMs: 5 });
    await again.runTx("h", "m1", "tx:1", lucky);
    await expect(again.runTx("h", "m2", "tx:1", failing)).rejects.toThrow("boom");
    await again.durable();
    expect(again.query<{ v: string }>("SELECT v FROM items")).toEqual([{ v: "kept" }]);
    await again.close();
  });

  test("step records: seen by lookups before their COMMIT, written with it, and kept after the message completes", async () => {
    const { path, journal } = open();
    journal.recordStep("h", "m1", "step:a", "1");
    journal.recordStep("h", "m2", "step:a", "2");
    journal.recordStep("h", "m1", "step:b", '"x"');
    const other = new Database(path);
    const rows = () => other.prepare("SELECT id, name, result FROM kexo_steps ORDER BY id, name").all();
    expect(rows()).toEqual([]);
    expect([...journal.steps("h", "m1")]).toEqual([["step:a", "1"], ["step:b", '"x"']]);
    expect([...journal.steps("g", "m1")]).toEqual([]);
    journal.finish(rec("m1", 1));
    await journal.durable();
    // A completion drops the message's pending tx records, not its steps: `kexo inspect` shows them.
    expect(rows()).toEqual([
      { id: "m1", name: "step:a", result: "1" }, { id: "m1", name: "step:b", result: '"x"' }, { id: "m2", name: "step:a", result: "2" },
    ]);
    expect([...journal.steps("h", "m2")]).toEqual([["step:a", "2"]]);
    other.close();
    await journal.close();
    expect(() => journal.recordStep("h", "m3", "step:a", "3")).toThrow(/closed/);
  });

  test("a recorded tx is not run again and returns its recorded result", async () => {
    const { journal } = open();
    let runs = 0;
    const fn = async () => {
      runs++;
      return { receipt: "r-1" };
    };
    expect(await journal.runTx("h", "m", "tx:1", fn)).toEqual({ receipt: "r-1" });
    expect(await journal.runTx("h", "m", "tx:1", fn)).toEqual({ receipt: "r-1" });
    expect(runs).toBe(1);
    await journal.close();
  });

  test("commit hooks write progress in the same commit and hear back after it", async () => {
    const { path, journal } = open();
    let next = 10n;
    const seen: bigint[] = [];
    journal.addCommitHook({
      progress: () => [{ groupId: "g", topic: "t", partition: 3, nextOffset: next }],
      hasProgress: () => true,
      committed: (entries) => seen.push(...entries.map((e) => e.nextOffset)),
    });
    journal.finish(rec("x", 9));
    await journal.durable();
    next = 12n;
    journal.requestCommit();
    await new Promise((r) => setTimeout(r, 30));
    expect(seen).toEqual([10n, 12n]);
    const other = new Database(path);
    expect(other.prepare("SELECT next_offset FROM kexo_progress").all()).toEqual([{ next_offset: 12 }]);
    other.close();
    await journal.close();
  });
});
