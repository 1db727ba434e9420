// A journal on a real libSQL server (sqld): the group transaction, a ctx.tx undone after a failed
// statement without losing the group's other writes (the `libsql` driver's own remote mode would
// run the rest outside the transaction), values that must come back exactly, instance-keyed meta,
// and what an unreachable server says.
import { describe, expect, test } from "bun:test";
import { hostname } from "node:os";
import { join } from "node:path";
import { Journal } from "../../src/journal/journal.ts";
import { tempDir } from "../support/tmp.ts";
import { sleep } from "../support/wait.ts";
import { parseRemoteUrl } from "../../src/journal/remote.ts";
import { KexoError } from "../../src/errors.ts";
import { countOn, sqldSupported, type TestSqld, withSqld } from "../support/sqld.ts";

let sqld: TestSqld;

describe.skipIf(!sqldSupported)("journal on a libSQL server", () => {
  withSqld((s) => (sqld = s));

  test("a statement the server's SQLite ends the transaction under breaks the connection: nothing after it commits, nothing of the group is acknowledged", async () => {
    const j = Journal.open({ url: sqld.url, commitIntervalMs: 60_000 });
    await j.handlerDb.execute("CREATE TABLE IF NOT EXISTS orb (k TEXT PRIMARY KEY)");
    await j.runTx("h", "r1", "tx", (db) => db.execute({ sql: "INSERT INTO orb VALUES (?)", args: ["a"] }));
    const failing = j.runTx("h", "r2", "tx", async (db) => {
      await db.execute({ sql: "INSERT OR ROLLBACK INTO orb VALUES (?)", args: ["a"] }).catch(() => undefined);
      await db.execute({ sql: "INSERT INTO orb VALUES (?)", args: ["after"] });
    });
    await expect(failing).rejects.toThrow(/transaction on the server ended under this statement \(SQLite rolled it back/);
    await expect(j.flush()).rejects.toThrow(/journal commit failed.*transaction on the server ended under this statement/);
    expect(await countOn(sqld.client(), "SELECT count(*) AS n FROM orb")).toBe(0);
    await j.close().catch(() => undefined);
  });

  test("one running instance per client id: a second start is refused while the first beats, a crashed one's lease is taken over, a displaced holder stops", async () => {
    const holder = join(tempDir(), "holder.ts");
    await Bun.write(holder, `import { Journal } from ${JSON.stringify(join(import.meta.dir, "..", "..", "src", "journal", "journal.ts"))};
Journal.open({ url: process.argv[2], worker: true, instance: "dup" });
console.log("ready");
setInterval(() => {}, 1000);
`);
    const child = Bun.spawn([process.execPath, holder, sqld.url], { stdout: "pipe", stderr: "ignore" });
    let refused: unknown;
    try {
      const reader = child.stdout.getReader();
      expect(new TextDecoder().decode((await reader.read()).value)).toContain("ready");
      Journal.open({ url: sqld.url, worker: true, instance: "dup", leaseWatchMs: 2500 }).close();
    } catch (err) {
      refused = err;
    } finally {
      child.kill("SIGKILL");
    }
    expect(refused).toBeInstanceOf(KexoError);
    expect((refused as KexoError).exitCode).toBe(78);
    expect((refused as KexoError).message).toMatch(new RegExp(`another kexo instance \\(host .*, pid ${child.pid}\\) runs with --client-id dup on the shared journal http://127\\.0\\.0\\.1:\\d+: its lease moved.*set --client-id or KEXO_CLIENT_ID`));

    // Killed: its lease stays, its pid is gone on this host, so it is taken over at once.
    await child.exited;
    const t0 = performance.now();
    const next = Journal.open({ url: sqld.url, worker: true, instance: "dup" });
    expect(performance.now() - t0).toBeLessThan(2000);
    expect(next.uncleanStart).toBe(true);

    // A holder judged gone (here: the same pid, as a restarted container's) stopping cleanly
    // leaves the row and the run state of the one that took over as they are.
    const usurper = Journal.open({ url: sqld.url, worker: true, instance: "dup" });
    next.markStopped();
    await expect(next.flush()).rejects.toThrow(/another kexo instance \(host .*\) took over --client-id dup/);
    expect(await countOn(sqld.client(), "SELECT count(*) AS n FROM kexo_meta WHERE key = 'lease@dup'")).toBe(1);
    expect((await sqld.client().execute("SELECT value FROM kexo_meta WHERE key = 'run_state@dup'")).rows[0]!.value).toBe("running");
    // And one that keeps running learns at its next beat.
    const third = Journal.open({ url: sqld.url, worker: true, instance: "dup" });
    await sleep(1100);
    await expect(usurper.flush()).rejects.toThrow(/another kexo instance \(host .*\) took over --client-id dup/);
    // A stall is transient: the restart decides (takes the row back, or refuses with 78).
    await expect(usurper.flush()).rejects.toMatchObject({ code: "lease_lost", exitCode: 75 });
    await usurper.close().catch(() => undefined);
    // A clean stop gives the client id back: the next start takes it without watching.
    third.markStopped();
    await third.close();
    expect(await countOn(sqld.client(), "SELECT count(*) AS n FROM kexo_meta WHERE key = 'lease@dup'")).toBe(0);
    const t1 = performance.now();
    const clean = Journal.open({ url: sqld.url, worker: true, instance: "dup", leaseWatchMs: 5000 });
    expect(performance.now() - t1).toBeLessThan(2000);
    expect(clean.uncleanStart).toBe(false);
    await clean.close();
    await next.close().catch(() => undefined);

    // A row of a dead pid on this host but another pid namespace (a container with the same host
    // name) is watched first: that pid means nothing here.
    const c = sqld.client();
    const row = { token: "t-other", host: hostname(), pid: 999_999, beat: 3 };
    await c.execute({ sql: "INSERT OR REPLACE INTO kexo_meta (key, value) VALUES ('lease@dup', ?)", args: [JSON.stringify({ ...row, space: "elsewhere" })] });
    const t2 = performance.now();
    const across = Journal.open({ url: sqld.url, worker: true, instance: "dup", leaseWatchMs: 1500 });
    expect(performance.now() - t2).toBeGreaterThanOrEqual(1400);
    across.markStopped();
    await across.close();
  }, 30_000);

  test("ctx.tx writes commit with their records; a failed body is undone alone; blobs, named args and big integers round-trip", async () => {
    const j = Journal.open({ url: sqld.url, commitIntervalMs: 60_000 });
    expect(j.shared).toBe(true);
    await j.handlerDb.execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, b BLOB, n INTEGER)");
    const big = 2n ** 60n + 1n;
    await j.runTx("h", "id1", "tx", (db) => db.execute({ sql: "INSERT INTO t VALUES (?, ?, ?)", args: ["a", Buffer.from([1, 2, 3]), big] }));
    // A UNIQUE violation in the middle of a body: the body fails, and only its writes go.
    const failed = j.runTx("h", "id2", "tx", async (db) => {
      await db.execute({ sql: "INSERT INTO t (k) VALUES (?)", args: ["b"] });
      await db.execute({ sql: "INSERT INTO t (k) VALUES (?)", args: ["a"] });
    });
    await expect(failed).rejects.toThrow(/UNIQUE/);
    const named = await j.runTx("h", "id3", "tx", (db) => db.execute({ sql: "INSERT INTO t (k, n) VALUES (:k, :n)", args: { k: "c", n: 7 } }));
    expect(named.rowsAffected).toBe(1);
    // Cut before its completion (a crash): its ctx.tx is recorded, never to run again.
    await j.runTx("h", "id4", "tx", (db) => db.execute({ sql: "INSERT INTO t (k) VALUES (?)", args: ["d"] }).then(() => 4));
    // The group's transaction is still open: nothing is on the server yet.
    const c = sqld.client();
    expect((await c.execute("SELECT count(*) AS n FROM t")).rows[0]!.n).toBe(0);
    const at = (offset: string) => ({ handler: "h", status: "completed" as const, topic: "t", partition: 0, offset, attempts: 1, result: "null" });
    j.finish({ ...at("1"), id: "id1" });
    j.finish({ ...at("3"), id: "id3" });
    await j.flush();

    const rows = (await c.execute({ sql: "SELECT k, b FROM t ORDER BY k", args: [] })).rows;
    expect(rows.map((r) => r.k)).toEqual(["a", "c", "d"]);
    expect(Buffer.from(rows[0]!.b as ArrayBuffer)).toEqual(Buffer.from([1, 2, 3]));
    const exact = await sqld.client().execute("SELECT CAST(n AS TEXT) AS s FROM t WHERE k = 'a'");
    expect(exact.rows[0]!.s).toBe(big.toString());
    // Reads through the handler's db get the exact integer too (as BigInt past 2^53).
    const back = await j.handlerDb.execute("SELECT n FROM t WHERE k = 'a'");
    expect(back.rows[0]!.n).toBe(big);
    await j.close();

    // Another instance on the same server sees the records: not run again.
    const other = Journal.open({ url: sqld.url });
    expect(other.lookup("h", "id1")?.status).toBe("completed");
    expect(other.steps("h", "id4").get("tx")).toBe("4");
    expect(other.steps("h", "id2").size).toBe(0);
    await other.close();
  });

  test("handler statements: results whatever their first word; a batch outside a transaction is one", async () => {
    const j = Journal.open({ url: sqld.url, commitIntervalMs: 60_000 });
    await j.handlerDb.execute("CREATE TABLE IF NOT EXISTS hb (k TEXT PRIMARY KEY)");
    // setup()'s batch: all or nothing, and its error is the statement's.
    await j.handlerDb.batch([{ sql: "INSERT INTO hb VALUES (?)", args: ["x"] }, { sql: "INSERT INTO hb VALUES (?)", args: ["y"] }]);
    const bad = j.handlerDb.batch([{ sql: "INSERT INTO hb VALUES (?)", args: ["z"] }, { sql: "INSERT INTO hb VALUES (?)", args: ["x"] }]);
    await expect(bad).rejects.toThrow(/UNIQUE/);
    const keys = await j.handlerDb.execute("SELECT k FROM hb ORDER BY k");
    expect(keys.rows.map((r) => r.k)).toEqual(["x", "y"]);
    // A write starting with WITH, a read starting with a comment.
    const w = await j.runTx("hb", "w1", "tx", (db) => db.execute("WITH v(k) AS (SELECT 'w') INSERT INTO hb SELECT k FROM v"));
    expect(w.rowsAffected).toBe(1);
    const r = await j.handlerDb.execute("/* count */ SELECT count(*) AS n FROM hb");
    expect(r.rows[0]!.n).toBe(3);
    await j.close();
  });

  test("a transaction the server takes back: nothing after it runs outside a transaction", async () => {
    const { RemoteConnection } = await import("../../src/journal/remote.ts");
    const target = parseRemoteUrl(sqld.url, {});
    const a = new RemoteConnection(target);
    const b = new RemoteConnection(target);
    a.exec("CREATE TABLE IF NOT EXISTS lost (v TEXT)");
    a.exec("BEGIN IMMEDIATE");
    a.prepare("INSERT INTO lost VALUES ('a1')").run();
    // b waits for the write lock; sqld hands it over after its 5 s transaction timeout.
    b.prepare("INSERT INTO lost VALUES ('b')").run();
    expect(() => a.prepare("INSERT INTO lost VALUES ('a2')").run()).toThrow();
    // Without the transaction, this would commit on its own.
    expect(() => a.prepare("INSERT INTO lost VALUES ('a3')").run()).toThrow();
    expect(() => a.exec("COMMIT")).toThrow();
    expect(b.prepare("SELECT v FROM lost ORDER BY v").all()).toEqual([{ v: "b" }]);
    a.close();
    b.close();
  }, 30_000);

  test("per-instance meta: each instance's run state is its own in a shared journal", async () => {
    const a = Journal.open({ url: sqld.url, worker: true, instance: "a" });
    const b = Journal.open({ url: sqld.url, worker: true, instance: "b" });
    // b opening while a runs is not an unclean start of b.
    expect(a.uncleanStart).toBe(false);
    expect(b.uncleanStart).toBe(false);
    expect(a.localKey("run_state")).toBe("run_state@a");
    b.markStopped();
    await b.close();
    // a is killed (never marks a clean stop): its restart knows, b's does not.
    const a2 = Journal.open({ url: sqld.url, worker: true, instance: "a" });
    const b2 = Journal.open({ url: sqld.url, worker: true, instance: "b" });
    expect(a2.uncleanStart).toBe(true);
    expect(b2.uncleanStart).toBe(false);
    for (const j of [a2, b2]) {
      j.markStopped();
      await j.close();
    }
    // One process, two journals: a's open write transaction would hold the server's lock while
    // this thread blocks on the next test's BEGIN (a worker has one journal per process).
    await a.close();
  });

  test("a partition that comes back from another instance: its started offsets and failed attempts are read again", async () => {
    const a = Journal.open({ url: sqld.url, commitIntervalMs: 60_000 });
    const b = Journal.open({ url: sqld.url, commitIntervalMs: 60_000 });
    // B owned the partition first and started offset 0.
    expect(b.start("hp", "t", 0, "0")).toBe(true);
    b.setMeta("x", "1");
    await b.flush();
    // The partition moved to A, which started and finished offset 10 and failed offset 12 twice.
    a.assigned("hp", "t", 0);
    expect(a.start("hp", "t", 0, "10")).toBe(true);
    a.finish({ handler: "hp", id: "m10", status: "completed", topic: "t", partition: 0, offset: "10", attempts: 1, result: '{"r":1}' });
    expect(a.start("hp", "t", 0, "12")).toBe(true);
    a.recordFailedAttempts("hp", { topic: "t", partition: 0, offset: "12" }, "m12", 2);
    await a.flush();
    // Back to B (A crashed before Kafka had the offsets, so 10 and 12 are delivered again): a
    // start at 10 must not count as never started, or B would skip the lookup and run it twice.
    b.assigned("hp", "t", 0);
    expect(b.start("hp", "t", 0, "10")).toBe(false);
    expect(b.lookup("hp", "m10")?.result).toBe('{"r":1}');
    expect(b.failedAttempts("hp", { topic: "t", partition: 0, offset: "12" })?.attempts).toBe(2);
    await a.close();
    await b.close();
  });

  test("a server that does not answer: exit 69, the URL without its token, what to check", () => {
    let err: unknown;
    try {
      Journal.open({ url: "http://127.0.0.1:1?authToken=s3cret-token" });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(KexoError);
    const e = err as KexoError;
    expect(e.exitCode).toBe(69);
    expect(e.message).toContain("http://127.0.0.1:1");
    expect(e.message).toContain("check --db");
    expect(e.message).not.toContain("s3cret");
  });
});

test("remote journal URLs: token from the URL or KEXO_DB_AUTH_TOKEN, never in the display form; unknown parameters refused", () => {
  const t = parseRemoteUrl("libsql://db.example.com?authToken=abc", {});
  expect(t).toEqual({ display: "libsql://db.example.com", url: "libsql://db.example.com", authToken: "abc" });
  expect(parseRemoteUrl("https://db.example.com:8443", { KEXO_DB_AUTH_TOKEN: "env-token" }).authToken).toBe("env-token");
  expect(parseRemoteUrl("libsql://127.0.0.1:8080?tls=0", {}).url).toBe("libsql://127.0.0.1:8080?tls=0");
  expect(() => parseRemoteUrl("libsql://h?token=x", {})).toThrow(/db: unknown URL parameter "token" in libsql:\/\/h\?token=\[redacted\]; known: authToken, tls/);
});
