// Opens the journal named by the config for the inspection commands (dlq, inspect). They never
// create one: a journal file that is not there is an error naming the path (exit 69), and an
// existing file is opened without creating it, read-only unless the command writes (dlq replay).
import { nearest } from "../suggest.ts";
import Database from "libsql";
import { existsSync } from "node:fs";
import { resolve } from "node:path";
import { type Config, DEFAULTS, resolveConfig } from "../config/config.ts";
import { ExitCode, KexoError, UsageError } from "../errors.ts";
import { Journal, journalPath } from "../journal/journal.ts";
import { isRemoteUrl, type SqlConnection } from "../journal/remote.ts";
import { ADDED_COLUMNS, SCHEMA, SCHEMA_VERSION } from "../journal/schema.ts";
import type { Args } from "./args.ts";

/** What the inspection commands use of a journal (a Journal has it too). */
export interface JournalReader {
  /** The file, or a libSQL server's URL without its token: for messages. */
  readonly path: string;
  query<T>(sql: string, ...args: unknown[]): T[];
  /** A write, on disk when it returns; only on a journal opened with `write`. */
  run(sql: string, ...args: unknown[]): number;
  close(): Promise<void>;
}

export function openJournalFor(
  args: Args,
  env: Record<string, string | undefined>,
  opts: { needBrokers?: boolean; write?: boolean } = {},
): { config: Config; journal: JournalReader } {
  const config = resolveConfig(args.flags, env, { needBrokers: opts.needBrokers ?? false });
  return { config, journal: openJournalReader(config.db, { write: opts.write ?? false }) };
}

const TABLES = [...SCHEMA.matchAll(/CREATE TABLE IF NOT EXISTS (\w+)/g)].map((m) => m[1]!);

/** A path as SQLite's URI filename (`?`, `#` and `%` escaped), so that `mode=` applies. */
function sqliteUri(absolute: string, mode: "ro" | "rw"): string {
  return `file:${absolute.replace(/[%?#]/g, (c) => `%${c.charCodeAt(0).toString(16)}`)}?mode=${mode}`;
}

export function openJournalReader(url: string, opts: { write: boolean }): JournalReader {
  // A libSQL server's database is the server's to create; :memory: leaves nothing behind.
  // Both open as they always did.
  if (isRemoteUrl(url)) return Journal.open({ url });
  const path = journalPath(url);
  if (path === ":memory:") return Journal.open({ url });
  const absolute = resolve(path);
  if (!existsSync(absolute)) {
    const where = absolute === path ? path : `${path} (${absolute})`;
    const defaulted = url === DEFAULTS.db ? "; --db was not given, so kexo looked in the current directory" : "";
    throw new KexoError(
      "journal_not_found",
      `no journal at ${where}: the file does not exist${defaulted}. Pass --db (or KEXO_DB) with the journal the worker runs on, ` +
        "e.g. --db file:/data/kexo.db; this command never creates one",
      { exitCode: ExitCode.unavailable },
    );
  }
  let conn: SqlConnection | undefined;
  try {
    // mode=ro/rw: SQLite opens the file only if it exists (no create between the check and here).
    // A WAL-mode file still gets its -wal and -shm beside it while read: SQLite needs them to read
    // what a running worker committed.
    conn = new Database(sqliteUri(absolute, opts.write ? "rw" : "ro")) as unknown as SqlConnection;
    conn.exec("PRAGMA busy_timeout = 10000");
    // A replay's mark must survive power loss, as the worker's writes do.
    if (opts.write) conn.exec("PRAGMA synchronous = FULL");
    if (isCurrent(conn, path)) return readerOf(conn, path);
  } catch (err) {
    conn?.close();
    if (err instanceof KexoError) throw err;
    throw new KexoError("journal_unavailable", `cannot open journal ${path}: ${(err as Error).message}; check the --db path and its permissions`, {
      exitCode: ExitCode.unavailable,
      cause: err,
    });
  }
  // A journal of an older kexo: upgraded here as the worker's next start would do it (tables and
  // columns added), so that the commands' queries find what they read.
  conn.close();
  return Journal.open({ url });
}

/** Whether the file holds this kexo's journal schema; throws when it is no kexo journal or a newer one. */
function isCurrent(conn: SqlConnection, path: string): boolean {
  const tables = new Set((conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all() as { name: string }[]).map((t) => t.name));
  if (!tables.has("kexo_meta")) {
    throw new KexoError(
      "journal_not_kexo",
      `${path} is not a kexo journal (it has no kexo_meta table); pass --db (or KEXO_DB) with the journal the worker runs on`,
      { exitCode: ExitCode.unavailable },
    );
  }
  const version = (conn.prepare("SELECT value FROM kexo_meta WHERE key = 'schema_version'").get() as { value: string } | undefined)?.value;
  if (version !== undefined && Number(version) > SCHEMA_VERSION) {
    throw new KexoError(
      "journal_too_new",
      `journal ${path} has schema version ${version}, newer than this kexo (${SCHEMA_VERSION}); upgrade kexo`,
      { exitCode: ExitCode.config },
    );
  }
  if (Number(version) < SCHEMA_VERSION || TABLES.some((t) => !tables.has(t))) return false;
  return ADDED_COLUMNS.every(([table, column]) =>
    (conn.prepare(`PRAGMA table_info(${table})`).all() as { name: string }[]).some((c) => c.name === column),
  );
}

function readerOf(conn: SqlConnection, path: string): JournalReader {
  return {
    path,
    query: <T>(sql: string, ...args: unknown[]) => conn.prepare(sql).all(...args) as T[],
    run: (sql: string, ...args: unknown[]) => conn.prepare(sql).run(...args).changes,
    close: async () => conn.close(),
  };
}

/**
 * `--handler NAME` checked against the handlers the journal knows (those that started a message,
 * recorded one or dead-lettered one): a name it never saw is a slip, said with the names it knows,
 * not answered "nothing found". A journal with no handler yet takes any name.
 */
export function checkHandlerName(journal: JournalReader, handler: string | undefined): void {
  if (handler === undefined) return;
  const known = journalHandlers(journal);
  // A journal older than kexo_started (schema version 2): nothing to check against.
  if (!known || known.length === 0 || known.includes(handler)) return;
  // A journal upgraded from schema version 1 tracks no starts: its records name handlers too.
  if (journal.query("SELECT 1 FROM kexo_messages WHERE handler = ? LIMIT 1", handler).length > 0) return;
  const near = nearest(handler, known);
  throw new UsageError(
    `no handler ${handler} in journal ${journal.path}${near ? ` (did you mean ${near}?)` : ""}; its handlers: ${known.join(", ")}`,
    { handler, found: false },
  );
}

/**
 * The handlers that started or dead-lettered a message in this journal, by name; undefined for a
 * journal older than kexo_started (schema version 2), which cannot say.
 */
export function journalHandlers(journal: JournalReader): string[] | undefined {
  try {
    return journal
      .query<{ handler: string }>("SELECT handler FROM kexo_started UNION SELECT handler FROM kexo_dead_letters ORDER BY handler")
      .map((r) => r.handler);
  } catch {
    return undefined;
  }
}
