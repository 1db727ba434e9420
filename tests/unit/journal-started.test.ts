// The journal skips dedup lookups only for offsets never started: a started offset stays
// "maybe recorded" across restarts, and a journal with records from before tracking never skips.
import { describe, expect, test } from "bun:test";
import Database from "libsql";
import { join } from "node:path";
import { Journal } from "../../src/journal/journal.ts";
import { tempDir } from "../support/tmp.ts";

describe("journal started offsets", () => {
  test("an offset is fresh once; after a restart every offset started before is not", async () => {
    const path = join(tempDir(), "j.db");
    const j = Journal.open({ url: `file:${path}` });
    expect(j.start("h", "t", 0, "5")).toBe(true);
    expect(j.start("h", "t", 0, "5")).toBe(false);
    expect(j.start("h", "t", 0, "3")).toBe(false);
    expect(j.start("h", "t", 1, "3")).toBe(true);
    // A step recorded for offset 5 commits together with the started mark.
    j.recordStep("h", "kafka-unique-id-t-0-g-5", "step:a", "1");
    await j.close();
    const again = Journal.open({ url: `file:${path}` });
    expect(again.start("h", "t", 0, "5")).toBe(false);
    expect(again.start("h", "t", 0, "6")).toBe(true);
    expect(again.start("other", "t", 0, "5")).toBe(true);
    await again.close();
  });

  test("a journal that already held records when tracking began never reports a fresh offset", async () => {
    const path = join(tempDir(), "j.db");
    const j = Journal.open({ url: `file:${path}` });
    await j.close();
    const raw = new Database(path);
    raw.exec("DELETE FROM kexo_meta WHERE key = 'started_tracking'");
    raw.exec(`INSERT INTO kexo_messages (handler, id, status, topic, partition, "offset", attempts, result, error, finished_at)
              VALUES ('h', 'kafka-unique-id-t-0-g-9', 'completed', 't', 0, 9, 1, NULL, NULL, 0)`);
    raw.close();
    const legacy = Journal.open({ url: `file:${path}` });
    expect(legacy.start("h", "t", 0, "9")).toBe(false);
    expect(legacy.start("h", "t", 0, "1000")).toBe(false);
    expect(legacy.lookup("h", "kafka-unique-id-t-0-g-9")?.status).toBe("completed");
    await legacy.close();
  });

  test("a pending completion is found by lookup before its commit, and supersedes its tx record", async () => {
    const path = join(tempDir(), "j.db");
    const j = Journal.open({ url: `file:${path}`, commitIntervalMs: 1000 });
    await j.handlerDb.execute("CREATE TABLE items (v TEXT)");
    await j.runTx("h", "m1", "tx:1", async (db) => {
      await db.execute({ sql: "INSERT INTO items VALUES (?)", args: ["x"] });
      return 1;
    });
    expect(j.steps("h", "m1").get("tx:1")).toBe("1");
    j.finish({ handler: "h", id: "m1", status: "completed", topic: "t", partition: 0, offset: "0", attempts: 1, result: "2" });
    expect(j.lookup("h", "m1")).toEqual({ status: "completed", result: "2", attempts: 1, topic: "t", partition: 0, offset: 0 });
    await j.flush();
    const other = new Database(path, { readonly: true });
    expect((other.prepare("SELECT count(*) AS n FROM items").get() as { n: number }).n).toBe(1);
    expect((other.prepare("SELECT count(*) AS n FROM kexo_messages").get() as { n: number }).n).toBe(1);
    expect((other.prepare("SELECT count(*) AS n FROM kexo_steps").get() as { n: number }).n).toBe(0);
    other.close();
    await j.close();
  });
});
