// The worker's journal knows whether the last worker on it stopped cleanly (closed it), and keeps
// per delivery how many attempts were not survived, which an older journal gains on open.
import { describe, expect, test } from "bun:test";
import Database from "libsql";
import { join } from "node:path";
import { Journal } from "../../src/journal/journal.ts";
import { tempDir } from "../support/tmp.ts";

const at = { topic: "t", partition: 0, offset: "7" };

describe("journal unclean start", () => {
  test("only a worker's markStopped() makes the next open clean: not a close alone, nor a CLI open", async () => {
    const path = join(tempDir(), "j.db");
    const first = Journal.open({ url: `file:${path}`, worker: true });
    expect(first.uncleanStart).toBe(false);
    // Killed: never closed. Another connection opens the file as the restarted worker would.
    const second = Journal.open({ url: `file:${path}`, worker: true });
    expect(second.uncleanStart).toBe(true);
    // A start that failed closes the journal without a clean stop: still unclean.
    await second.close();
    const third = Journal.open({ url: `file:${path}`, worker: true });
    expect(third.uncleanStart).toBe(true);
    third.markStopped();
    await third.close();
    // kexo inspect / dlq open it without being the worker: they neither see nor change the state.
    const cli = Journal.open({ url: `file:${path}` });
    expect(cli.uncleanStart).toBe(false);
    cli.setMeta("unrelated", "x");
    await cli.close();
    const fourth = Journal.open({ url: `file:${path}`, worker: true });
    expect(fourth.uncleanStart).toBe(false);
    fourth.markStopped();
    await fourth.close();
    first.markStopped();
  });

  test("a claim counts the attempt until settled; one still open at a clean stop never happened", async () => {
    const path = join(tempDir(), "j.db");
    const j = Journal.open({ url: `file:${path}`, worker: true });
    const other = { ...at, offset: "8" };
    j.recordFailedAttempts("h", at, "id", 1);
    const alone = await j.claimAttempt("h", at, "id", 2, true);
    // COMMITted before the attempt runs: another connection sees it.
    const peek = Journal.open({ url: `file:${path}` });
    expect(peek.failedAttempts("h", at)).toEqual({ attempts: 2, deaths: 1 });
    await peek.close();
    alone.settle(true);
    alone.settle(false);
    expect(j.failedAttempts("h", at)).toEqual({ attempts: 2, deaths: 0 });
    // A first attempt that ran fine leaves no row; one still running at markStopped() neither.
    (await j.claimAttempt("h", other, "id8", 1, false)).settle(false);
    expect(j.failedAttempts("h", other)).toBeUndefined();
    await j.claimAttempt("h", at, "id", 3, true);
    j.markStopped();
    await j.close();
    // Killed with claims open: they stay, and mark the deliveries for the guard.
    const k = Journal.open({ url: `file:${path}`, worker: true });
    expect(k.uncleanStart).toBe(false);
    expect(k.failedAttempts("h", at)).toEqual({ attempts: 2, deaths: 0 });
    await k.claimAttempt("h", at, "id", 3, true);
    const after = Journal.open({ url: `file:${path}`, worker: true });
    expect(after.uncleanStart).toBe(true);
    expect(after.failedAttempts("h", at)).toEqual({ attempts: 3, deaths: 1 });
    expect(after.keptAtStart("h", at)).toBe(true);
    expect(after.keptAtStart("h", other)).toBe(false);
    after.markStopped();
    await after.close();
    k.markStopped();
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
