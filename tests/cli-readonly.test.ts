// The inspection commands (inspect, dlq list/show/replay) never create a journal: a usage error is
// reported before anything is opened, a missing journal file is exit 69 naming the path, and an
// existing one is read without being written. Not found is 64 for inspect and dlq show alike,
// with --json still answering (`found: false` beside the error); extra arguments are refused; a
// replay with nothing to replay needs no broker, and an unreachable broker is 69 naming it,
// without a stack.
import { describe, expect, test } from "bun:test";
import Database from "libsql";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Journal } from "../src/journal/journal.ts";
import { sqldSupported, withSqld, type TestSqld } from "./support/sqld.ts";
import { tempDir } from "./support/tmp.ts";
import { kexoSync } from "./support/worker.ts";

const kexo = (args: string[], cwd: string = tempDir()) => kexoSync(args, { cwd });

/** Every file and directory under `dir`, recursively. */
function tree(dir: string): string[] {
  return readdirSync(dir, { recursive: true }).map(String).sort();
}

/** A journal as the worker leaves it, with `deadLetters` dead letters (ids 1…n). */
async function journalWith(path: string, deadLetters: number): Promise<void> {
  const j = Journal.open({ url: `file:${path}` });
  for (let i = 0; i < deadLetters; i++) {
    j.run(
      `INSERT INTO kexo_dead_letters (handler, group_id, message_id, topic, partition, "offset", key, value, headers, reason, error, error_type, attempts, failed_at, dlq_topic)
       VALUES ('orders', 'kexo-orders-orders', ?, 'orders', 0, ?, NULL, ?, '{}', 'poison', 'value is not JSON', 'PoisonError', 1, ?, 'orders.dlq')`,
      `m${i}`, i, Buffer.from(`bad ${i}`), new Date().toISOString(),
    );
  }
  await j.close();
}

const STACK = /^\s+at /m;

/** What --json prints for an id not in the journal: one object, the answer and the error. */
function notFound(id: string | number, message: string) {
  return { id, found: false, error: { exitCode: 64, code: "usage", message: expect.stringContaining(message) } };
}

describe("a journal that does not exist is not created", () => {
  const commands: string[][] = [
    ["inspect", "x"],
    ["dlq", "list"],
    ["dlq", "list", "--json"],
    ["dlq", "show", "1"],
    ["dlq", "replay", "--all", "--dry-run"],
    ["dlq", "replay", "--all", "--brokers", "127.0.0.1:1"],
    ["dlq", "replay", "1", "--brokers", "127.0.0.1:1"],
  ];
  for (const args of commands) {
    test(`kexo ${args.join(" ")}: exit 69 naming the path; no file, no directory`, () => {
      const cwd = tempDir();
      const inMissingDir = kexo([...args, "--db", `file:${join(cwd, "no", "such", "dir", "x.db")}`], cwd);
      expect(inMissingDir.code).toBe(69);
      expect(inMissingDir.stderr).toContain(`no journal at ${join(cwd, "no", "such", "dir", "x.db")}: the file does not exist`);
      expect(inMissingDir.stderr).toContain("Pass --db (or KEXO_DB) with the journal the worker runs on");
      const relative = kexo([...args, "--db", "file:x.db"], cwd);
      expect(relative.code).toBe(69);
      expect(relative.stderr).toContain(`no journal at x.db (${join(cwd, "x.db")})`);
      const byDefault = kexo(args, cwd);
      expect(byDefault.code).toBe(69);
      expect(byDefault.stderr).toContain("--db was not given, so kexo looked in the current directory");
      // With --json, the error is on stdout too (one object); otherwise stdout stays empty.
      if (args.includes("--json")) expect(JSON.parse(byDefault.stdout)).toMatchObject({ error: { exitCode: 69, code: "journal_not_found" } });
      else expect(byDefault.stdout).toBe("");
      expect(tree(cwd)).toEqual([]);
    });
  }

  test("usage errors come first: before the journal is looked for, and before missing --brokers", () => {
    const cwd = tempDir();
    const show = kexo(["dlq", "show"], cwd);
    expect([show.code, show.stderr.trim()]).toEqual([64, "kexo: kexo dlq show ID: give a dead-letter id from kexo dlq list"]);
    const notANumber = kexo(["dlq", "show", "abc"], cwd);
    expect([notANumber.code, notANumber.stderr.trim()]).toEqual([64, 'kexo: dead-letter id "abc" is not a number; see kexo dlq list']);
    const replay = kexo(["dlq", "replay"], cwd);
    expect([replay.code, replay.stderr.trim()]).toEqual([64, "kexo: kexo dlq replay: give --all or dead-letter ids (see kexo dlq list)"]);
    expect(kexo(["dlq", "replay", "--all", "3"], cwd).code).toBe(64);
    expect(kexo(["inspect"], cwd).code).toBe(64);
    expect(tree(cwd)).toEqual([]);
  });
});

describe("an existing journal is read, not written", () => {
  test("list, show and inspect leave the journal's bytes as they were", async () => {
    const dir = tempDir();
    const db = join(dir, "kexo.db");
    await journalWith(db, 2);
    const files = tree(dir);
    const bytes = () => files.filter((f) => !f.endsWith("-shm")).map((f) => readFileSync(join(dir, f)).toString("base64"));
    const before = bytes();
    const list = kexo(["dlq", "list", "--json", "--db", `file:${db}`]);
    expect(list.code).toBe(0);
    expect((JSON.parse(list.stdout) as { id: number; messageId: string }[]).map((r) => [r.id, r.messageId])).toEqual([[1, "m0"], [2, "m1"]]);
    const show = kexo(["dlq", "show", "2", "--json", "--db", `file:${db}`]);
    expect(show.code).toBe(0);
    expect(JSON.parse(show.stdout)).toMatchObject({ id: 2, messageId: "m1", value: "bad 1", deadLetterTopic: "orders.dlq" });
    expect(kexo(["inspect", "m0", "--db", `file:${db}`]).code).toBe(64);
    expect(kexo(["dlq", "replay", "--all", "--dry-run", "--db", `file:${db}`]).stdout).toContain("2 dead letters would be replayed");
    const dry = kexo(["dlq", "replay", "--all", "--dry-run", "--json", "--db", `file:${db}`]);
    expect(JSON.parse(dry.stdout)).toEqual({ dryRun: true, wouldReplay: [{ id: 1, messageId: "m0", to: "orders" }, { id: 2, messageId: "m1", to: "orders" }] });
    expect(tree(dir)).toEqual(files);
    expect(bytes()).toEqual(before);
  });

  test("a file that is not a kexo journal: exit 69, left as it was", () => {
    const dir = tempDir();
    const other = join(dir, "other.db");
    const conn = new Database(other);
    conn.exec("CREATE TABLE t (a)");
    conn.close();
    const before = readFileSync(other);
    const r = kexo(["dlq", "list", "--db", `file:${other}`]);
    expect(r.code).toBe(69);
    expect(r.stderr).toContain(`${other} is not a kexo journal (it has no kexo_meta table)`);
    expect(readFileSync(other).equals(before)).toBe(true);
    const text = join(dir, "notes.txt");
    writeFileSync(text, "not a database at all, just some text that is long enough to have a header");
    const t = kexo(["inspect", "x", "--db", `file:${text}`]);
    expect(t.code).toBe(69);
    expect(t.stderr).toContain(`cannot open journal ${text}:`);
    expect(t.stderr).not.toMatch(STACK);
  });

  test("a journal of an older kexo (a table missing) is upgraded, as the worker would, and read", async () => {
    const dir = tempDir();
    const db = join(dir, "old.db");
    await journalWith(db, 1);
    const conn = new Database(db);
    conn.exec("DROP TABLE kexo_retries");
    conn.close();
    const r = kexo(["inspect", "nope", "--json", "--db", `file:${db}`]);
    expect([r.code, JSON.parse(r.stdout)]).toEqual([64, notFound("nope", "no journal entry for nope")]);
    expect(kexo(["dlq", "list", "--json", "--db", `file:${db}`]).code).toBe(0);
  });
});

describe("not found is 64 for inspect and dlq show; --json still answers", () => {
  test("inspect and dlq show of an unknown id", async () => {
    const dir = tempDir();
    const db = join(dir, "kexo.db");
    await journalWith(db, 1);
    const text = kexo(["inspect", "nope", "--db", `file:${db}`]);
    expect(text.code).toBe(64);
    expect(text.stderr).toContain(`no journal entry for nope in journal ${db}: not handled yet, or the worker runs on another --db`);
    const json = kexo(["inspect", "nope", "--json", "--db", `file:${db}`]);
    expect([json.code, JSON.parse(json.stdout)]).toEqual([64, notFound("nope", "no journal entry for nope")]);
    const show = kexo(["dlq", "show", "9", "--json", "--db", `file:${db}`]);
    expect([show.code, JSON.parse(show.stdout)]).toEqual([64, notFound(9, "no dead letter with id 9")]);
    expect(show.stderr).toContain(`no dead letter with id 9 in journal ${db}; see kexo dlq list`);
  });
});

describe("extra arguments and bad flag values are refused, naming them, before anything is opened", () => {
  const cases: [string[], string][] = [
    [["check", "extra"], 'kexo check: unexpected argument "extra" (it takes no arguments)'],
    [["inspect", "a", "b"], 'kexo inspect: unexpected argument "b" (it takes one argument)'],
    [["dlq", "show", "1", "2"], 'kexo dlq show: unexpected argument "2" (it takes one argument)'],
    [["dlq", "list", "extra"], 'kexo dlq list: unexpected argument "extra" (it takes no arguments)'],
    [["run", "extra", "more"], 'kexo run: unexpected arguments "extra" "more"'],
    [["version", "--db", "x"], "kexo version: unexpected flag --db; usage: kexo version [--json]"],
    [["inspect", "x", "--to", "t"], "kexo inspect: unexpected flag --to"],
    [["dlq", "list", "--all"], "kexo dlq list: unexpected flag --all"],
    [["dlq", "replay", "1", "--since", "1h"], "kexo dlq replay: --handler and --since select dead letters for --all"],
    [["dlq", "frob"], 'kexo dlq: unknown subcommand "frob"'],
    [["dlq", "list", "--since", "yesterday"], "--since yesterday: expected an ISO 8601 time or a duration like 30m, 2h, 7d"],
    [["dev", "--demo-count", "abc"], "kexo dev: --demo-count abc: expected a whole number of messages"],
  ];
  for (const [args, message] of cases) {
    test(`kexo ${args.join(" ")}`, () => {
      const cwd = tempDir();
      const r = kexo(args, cwd);
      expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 64, stderr: expect.stringContaining(message) });
      expect(tree(cwd)).toEqual([]);
    });
  }

  test("--help and --version still answer whatever else the line holds", () => {
    expect(kexo(["inspect", "a", "b", "--help"]).code).toBe(0);
    expect(kexo(["version"]).code).toBe(0);
    expect(JSON.parse(kexo(["version", "--json"]).stdout)).toEqual({ version: expect.any(String) });
  });
});

describe("dlq replay", () => {
  test("nothing to replay: says so, exit 0, no broker contacted", async () => {
    const dir = tempDir();
    const db = join(dir, "kexo.db");
    await journalWith(db, 0);
    const started = Date.now();
    const r = kexo(["dlq", "replay", "--all", "--brokers", "127.0.0.1:1", "--db", `file:${db}`]);
    expect({ code: r.code, stdout: r.stdout, stderr: r.stderr }).toEqual({
      code: 0,
      stdout: "no dead letters to replay (none, or every one was replayed already; see kexo dlq list)\n",
      stderr: "",
    });
    expect(Date.now() - started).toBeLessThan(2000);
    const json = kexo(["dlq", "replay", "--all", "--json", "--brokers", "127.0.0.1:1", "--db", `file:${db}`]);
    expect([json.code, JSON.parse(json.stdout)]).toEqual([0, { replayed: 0 }]);
  });

  test("an unreachable broker: exit 69 naming it, no stack, nothing marked replayed", async () => {
    const dir = tempDir();
    const db = join(dir, "kexo.db");
    await journalWith(db, 2);
    const r = kexo(["dlq", "replay", "--all", "--brokers", "127.0.0.1:1", "--db", `file:${db}`]);
    expect(r.code).toBe(69);
    expect(r.stderr).toStartWith("kexo: cannot connect to the broker 127.0.0.1:1 to replay 2 dead letters: ");
    expect(r.stderr).toContain("ECONNREFUSED");
    expect(r.stderr).toContain("nothing was replayed: check --brokers");
    expect(r.stderr).not.toContain("unexpected error");
    expect(r.stderr).not.toMatch(STACK);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    const after = JSON.parse(kexo(["dlq", "list", "--json", "--db", `file:${db}`]).stdout) as { replayedAt?: string }[];
    expect(after.map((d) => d.replayedAt)).toEqual([undefined, undefined]);
  }, 60_000);
});

describe.skipIf(!sqldSupported)("a journal on a libSQL server works as before", () => {
  let sqld: TestSqld;
  withSqld((s) => (sqld = s));

  test("dlq list and inspect over http:// and ws://", () => {
    const cwd = tempDir();
    const ws = sqld.url.replace(/^http/, "ws");
    for (const url of [sqld.url, ws]) {
      const list = kexo(["dlq", "list", "--json", "--db", url], cwd);
      expect({ url, code: list.code, stdout: list.stdout, stderr: list.stderr }).toEqual({ url, code: 0, stdout: "[]\n", stderr: "" });
      const inspect = kexo(["inspect", "nope", "--json", "--db", url], cwd);
      expect([inspect.code, JSON.parse(inspect.stdout)]).toEqual([64, notFound("nope", "no journal entry for nope")]);
    }
    expect(tree(cwd)).toEqual([]);
  });
});

