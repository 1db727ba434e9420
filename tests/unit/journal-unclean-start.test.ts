// The worker's journal knows whether the last worker on it stopped cleanly (closed it), and keeps
// per delivery how many attempts were not survived, which an older journal gains on open.
import { describe, expect, test } from "bun:test";
import Database from "libsql";
import { join } from "node:path";
import { Journal } from "../../src/journal/journal.ts";
import { tempDir } from "../support/tmp.ts";

const at = { topic: "t", partition: 0, offset: "7" };

describe("journal unclean start", () => {
  test("a worker's journal not closed makes the next open unclean; a close, or a CLI open, does not", async () => {
    const path = join(tempDir(), "j.db");
    const first = Journal.open({ url: `file:${path}`, worker: true });
    expect(first.uncleanStart).toBe(false);
    // Killed: never closed. Another connection opens the file as the restarted worker would.
    const second = Journal.open({ url: `file:${path}`, worker: true });
    expect(second.uncleanStart).toBe(true);
    await second.close();
    // kexo inspect / dlq open it without being the worker: they neither see nor change the state.
    const cli = Journal.open({ url: `file:${path}` });
    expect(cli.uncleanStart).toBe(false);
    await cli.close();
    const third = Journal.open({ url: `file:${path}`, worker: true });
    expect(third.uncleanStart).toBe(false);
    await third.close();
  });

  test("deaths add up across writes and never go below zero; attempts are replaced", async () => {
    const j = Journal.open({ url: `file:${join(tempDir(), "j.db")}` });
    j.recordFailedAttempts("h", at, "id", 1, 1);
    j.recordFailedAttempts("h", at, "id", 2, 1);
    await j.flush();
    expect(j.failedAttempts("h", at)).toEqual({ attempts: 2, deaths: 2 });
    j.recordFailedAttempts("h", at, "id", 2, -1);
    j.recordFailedAttempts("h", at, "id", 3, 0);
    await j.flush();
    expect(j.failedAttempts("h", at)).toEqual({ attempts: 3, deaths: 1 });
    j.recordFailedAttempts("h", { ...at, offset: "8" }, "id8", 1, -1);
    await j.flush();
    expect(j.failedAttempts("h", { ...at, offset: "8" })).toEqual({ attempts: 1, deaths: 0 });
    await j.close();
  });

  test("a journal from before deaths gains the column, its rows counting none", async () => {
    const path = join(tempDir(), "j.db");
    const raw = new Database(path);
    raw.exec(`CREATE TABLE kexo_retries (handler TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL,
      "offset" INTEGER NOT NULL, id TEXT NOT NULL, attempts INTEGER NOT NULL, updated_at INTEGER NOT NULL,
      PRIMARY KEY (handler, topic, partition, "offset")) WITHOUT ROWID`);
    raw.prepare(`INSERT INTO kexo_retries VALUES ('h', 't', 0, 7, 'id', 2, ?)`).run(Date.now());
    raw.close();
    const j = Journal.open({ url: `file:${path}` });
    expect(j.failedAttempts("h", at)).toEqual({ attempts: 2, deaths: 0 });
    j.recordFailedAttempts("h", at, "id", 3, 1);
    await j.flush();
    expect(j.failedAttempts("h", at)).toEqual({ attempts: 3, deaths: 1 });
    await j.close();
  });
});
