// The journal's group commit and ctx.tx atomicity, on real libSQL files.
import { describe, expect, test } from "bun:test";
import Database from "libsql";
import { join } from "node:path";
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
