// The @libsql/client-shaped `db` that handlers get in setup() and ctx.tx(), over the journal's
// synchronous libsql connection (same engine, one connection, so tx writes join the journal's
// transaction).
import { errorMessage } from "../errors.ts";
import type { SqlConnection, SqlStatement } from "./remote.ts";
import type { HandlerDb, InStatement, InValue, ResultSet } from "../index.ts";

type Conn = SqlConnection;
interface Stmt {
  /** A native getter on the driver's statement: read once, kept in `isReader`. A remote one has none (execute). */
  reader?: boolean;
  execute?: SqlStatement["execute"];
  isReader?: boolean;
  /** Changes data: not a reader, or a reader through RETURNING (see Redo). */
  writes?: boolean;
  /** BEGIN, COMMIT, END, ROLLBACK, SAVEPOINT or RELEASE: refused inside the journal's transaction. */
  control?: boolean;
  /** Only reads: may run outside a ctx.tx body while the journal's transaction is open. */
  readOnly?: boolean;
  /** Has a bare `?` parameter: the local driver aborts the process when such a statement gets named args. */
  nameless?: boolean;
  /** Called with one argument, the driver binds it as is: an array positionally, an object by name. */
  all(params: unknown): unknown[];
  run(params: unknown): { changes: number; lastInsertRowid: number | bigint };
  columns(): { name: string }[];
  /** The local driver's: integers read as BigInt (then made numbers while exact, see exactInteger). */
  safeIntegers?(on: boolean): unknown;
}

/**
 * Runs a statement that changed data again, the same way, and throws RedoMismatchError when it
 * gives a result other than the one the handler saw. The journal keeps these (see journal.ts,
 * "ctx.tx without a savepoint") to rebuild its transaction without a failed ctx.tx.
 */
export type Redo = (() => void) | RunRedo;

/**
 * A write statement's redo: an object rather than a closure, since one is kept per statement
 * until the COMMIT (one cell for the garbage collector to carry instead of three).
 */
export class RunRedo {
  constructor(
    readonly prepared: Stmt,
    readonly sql: string,
    readonly params: unknown[] | Record<string, unknown>,
    readonly changes: number,
    readonly lastInsertRowid: number | bigint,
  ) {}

  run(): void {
    const now = this.prepared.run(this.params);
    if (now.changes !== this.changes || BigInt(now.lastInsertRowid) !== BigInt(this.lastInsertRowid)) {
      throw new RedoMismatchError(
        this.sql,
        `rowsAffected ${this.changes} then ${now.changes}, lastInsertRowid ${this.lastInsertRowid} then ${now.lastInsertRowid}`,
      );
    }
  }
}

export function runRedo(r: Redo): void {
  if (typeof r === "function") r();
  else r.run();
}

export class RedoMismatchError extends Error {
  constructor(sql: string, what: string) {
    super(`statement gave another result when run again (${what}): ${sql.slice(0, 200)}`);
    this.name = "RedoMismatchError";
  }
}

// Handlers run the same few statements for every message: preparing once saves most of the cost.
const MAX_CACHED = 512;

function prepare(conn: Conn, cache: Map<string, Stmt>, sql: string): Stmt {
  let prepared = cache.get(sql);
  if (!prepared) {
    const rest = afterFirstStatement(sql);
    if (rest !== undefined) throw moreThanOne(sql, rest);
    const journalTable = journalTableWritten(sql);
    if (journalTable !== undefined) throw writesJournal(sql, journalTable);
    if (cache.size >= MAX_CACHED) cache.clear();
    prepared = conn.prepare(sql) as unknown as Stmt;
    prepared.isReader = prepared.reader;
    if (prepared.isReader && prepared.safeIntegers) prepared.safeIntegers(true);
    prepared.writes = !prepared.isReader || /\breturning\b/i.test(sql);
    const keyword = firstKeyword(sql);
    prepared.control = TX_CONTROL.has(keyword);
    // A remote statement has no reader flag: its first word decides, erring on refusal.
    prepared.readOnly = prepared.execute ? READS.has(keyword) : !prepared.writes;
    prepared.nameless = hasNamelessParameter(sql);
    cache.set(sql, prepared);
  }
  return prepared;
}

const TX_CONTROL = new Set(["begin", "commit", "end", "rollback", "savepoint", "release"]);
const READS = new Set(["select", "values", "explain"]);

/**
 * Where SQL code resumes after the string literal, quoted identifier or comment that starts at
 * `i`, or `i` itself when none starts there; the text's length when one is left open.
 */
function pastQuoted(sql: string, i: number): number {
  const c = sql[i];
  let end: number;
  // A doubled quote inside a literal reads as a close and an open: the same place.
  if (c === "'" || c === '"' || c === "`") end = sql.indexOf(c, i + 1) + 1;
  else if (c === "[") end = sql.indexOf("]", i + 1) + 1;
  else if (c === "-" && sql[i + 1] === "-") end = sql.indexOf("\n", i) + 1;
  else if (c === "/" && sql[i + 1] === "*") end = sql.indexOf("*/", i + 2) + 2;
  else return i;
  return end <= i ? sql.length : end;
}

/** Past whitespace, comments and empty statements (`;`) from `i`. */
function pastBlank(sql: string, i: number): number {
  for (;;) {
    while (i < sql.length && /[\s;]/.test(sql[i]!)) i++;
    const next = sql[i] === "-" || sql[i] === "/" ? pastQuoted(sql, i) : i;
    if (next === i) return i;
    i = next;
  }
}

/** The statement's first keyword, lower case, past whitespace, comments and empty statements (`;`): what SQLite runs it as. */
export function firstKeyword(sql: string): string {
  return /^[a-z]*/i.exec(sql.slice(pastBlank(sql, 0)))![0].toLowerCase();
}

/**
 * The text after the first statement, when there is more than blanks: prepare() compiles the
 * first statement alone, so the rest would be dropped without a word. A CREATE TRIGGER's body
 * holds `;`s of its own and is not looked into.
 */
export function afterFirstStatement(sql: string): string | undefined {
  const start = pastBlank(sql, 0);
  if (/^create\s+(?:temp\s+|temporary\s+)?trigger\b/i.test(sql.slice(start))) return undefined;
  for (let i = start; i < sql.length; i++) {
    const next = pastQuoted(sql, i);
    if (next !== i) i = next - 1;
    else if (sql[i] === ";") return pastBlank(sql, i) < sql.length ? sql.slice(i + 1) : undefined;
  }
  return undefined;
}

/**
 * Whether one of the statement's parameters has no name: a bare `?`, or a number that `?NNN`
 * skips (`?2` alone makes parameter 1 nameless). Parameters are numbered as SQLite numbers them;
 * string literals, quoted identifiers and comments are skipped.
 */
export function hasNamelessParameter(sql: string): boolean {
  let max = 0;
  const named = new Set<number>();
  const names = new Map<string, number>();
  for (let i = 0; i < sql.length; i++) {
    const next = pastQuoted(sql, i);
    const c = sql[i]!;
    if (next !== i) i = next - 1;
    else if (c === "?") {
      const digits = /^[0-9]*/.exec(sql.slice(i + 1))![0];
      if (!digits) return true;
      const n = Number(digits);
      named.add(n);
      if (n > max) max = n;
      i += digits.length;
    } else if ((c === ":" || c === "@" || c === "$") && !IDENT.test(sql[i - 1] ?? " ")) {
      const name = /^[A-Za-z0-9_]*/.exec(sql.slice(i + 1))![0];
      if (!name) continue;
      if (!names.has(name)) {
        names.set(name, ++max);
        named.add(max);
      }
      i += name.length;
    }
  }
  for (let n = 1; n <= max; n++) if (!named.has(n)) return true;
  return false;
}

const IDENT = /[A-Za-z0-9_$]/;

/**
 * The first tokens of a statement, lower case: words, quoted identifiers (unquoted), single
 * punctuation; string literals as `'`. Comments and blanks are skipped.
 */
function headTokens(sql: string, max: number): string[] {
  const out: string[] = [];
  let i = 0;
  while (out.length < max) {
    i = pastBlank(sql, i);
    if (i >= sql.length) break;
    const c = sql[i]!;
    if (c === '"' || c === "`" || c === "[" || c === "'") {
      const end = pastQuoted(sql, i);
      out.push(c === "'" ? "'" : sql.slice(i + 1, end - 1).toLowerCase());
      i = end;
    } else if (IDENT.test(c)) {
      const word = /^[A-Za-z0-9_$]+/.exec(sql.slice(i, i + 256))![0];
      out.push(word.toLowerCase());
      i += word.length;
    } else {
      out.push(c);
      i++;
    }
  }
  return out;
}

/** `schema.name` or `name` at `i`: the name. */
function tableAt(t: string[], i: number): string | undefined {
  return t[i + 1] === "." ? t[i + 2] : t[i];
}

/**
 * The kexo_* table (or index, trigger, view) a statement would change, create a trigger or index
 * on, or drop: kexo's journal lives in the same database, and a handler writing it would break
 * exactly-once for every message (a dropped completion table, say). Reads are allowed. A guard
 * against mistakes in the common forms (INSERT/REPLACE, UPDATE, DELETE, DROP, ALTER, CREATE INDEX
 * or TRIGGER … ON), not a sandbox: a trigger's body and a WITH prefix are not looked into.
 */
export function journalTableWritten(sql: string): string | undefined {
  const t = headTokens(sql, 24);
  let i = 0;
  const skip = (...words: string[]) => {
    while (i < t.length && words.includes(t[i]!)) i++;
  };
  let target: string | undefined;
  const first = t[i++];
  if (first === "insert" || first === "replace") {
    if (t[i] === "or") i += 2;
    if (t[i] === "into") target = tableAt(t, i + 1);
  } else if (first === "update") {
    if (t[i] === "or") i += 2;
    target = tableAt(t, i);
  } else if (first === "delete") {
    if (t[i] === "from") target = tableAt(t, i + 1);
  } else if (first === "drop") {
    i++; // table | index | trigger | view
    if (t[i] === "if") i += 2;
    target = tableAt(t, i);
  } else if (first === "alter") {
    if (t[i] === "table") target = tableAt(t, i + 1);
  } else if (first === "create") {
    skip("unique", "temp", "temporary");
    const kind = t[i];
    if (kind === "index" || kind === "trigger") {
      const on = t.indexOf("on", i + 1);
      const own = tableAt(t, t[i + 1] === "if" ? i + 4 : i + 1);
      target = own?.startsWith("kexo_") ? own : on > 0 ? tableAt(t, on + 1) : undefined;
    }
  }
  return target?.startsWith("kexo_") ? target : undefined;
}

function moreThanOne(sql: string, rest: string): Error {
  return new Error(
    `execute() runs one statement, and this text holds more after its first ";" ("${shown(sql)}" then "${shown(rest)}"): ` +
      "the rest would be dropped. Give each statement its own execute(), or pass them to batch() to run all or none",
  );
}

function writesJournal(sql: string, table: string): Error {
  return new Error(
    `this statement would change ${table}, which belongs to kexo's journal: "${shown(sql)}". ` +
      "Handlers may read kexo_* tables but not write, alter or drop them; name your own tables without the kexo_ prefix",
  );
}

function namedOnNameless(sql: string): Error {
  return new Error(
    `named args (an object) given to a statement with bare ? parameters: "${shown(sql)}". ` +
      "Pass args as an array in the order of the ?s, or name the parameters (:name, @name, $name) to pass an object",
  );
}

/**
 * The journal's transaction as handler statements see it. `lost` is set when SQLite ended it
 * under one of them (INSERT OR ROLLBACK, RAISE(ROLLBACK), a full disk): every later statement
 * would commit on its own, without its record, so they fail until the journal begins anew.
 */
export interface JournalTx {
  /** Where statements that changed data go while the journal's transaction is open; undefined outside one (setup()). */
  redoLog(): Redo[] | undefined;
  /** A ctx.tx body holds the transaction now: statements outside one may not join it. */
  inBody(): boolean;
  /**
   * Handlers' setup() runs now: a write outside the journal's transaction commits on its own.
   * After it, such a write (a db kept from setup() or from a ctx.tx body, used later) would commit
   * an effect without a message's record, so it is refused. Absent: always allowed.
   */
  setup?(): boolean;
  lost: Error | undefined;
}

/** A bound value as it is now: blobs are copied (Buffer's slice() is a view). */
function copyValue(x: unknown): unknown {
  if (x instanceof Uint8Array) return new Uint8Array(x);
  if (x instanceof ArrayBuffer) return x.slice(0);
  return x;
}

/** Bound values as they are now: a handler may reuse its args (array, object, buffers) afterwards. */
function snapshot(params: unknown[] | Record<string, unknown>): unknown[] | Record<string, unknown> {
  if (Array.isArray(params)) {
    const out = new Array<unknown>(params.length);
    for (let i = 0; i < params.length; i++) out[i] = copyValue(params[i]);
    return out;
  }
  const named: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(params)) named[k] = copyValue(v);
  return named;
}

/**
 * An InValue as the driver binds it, converted as @libsql/client converts it: the driver aborts
 * the process on a boolean, and refuses a Date or an ArrayBuffer.
 */
function toSql(x: unknown): unknown {
  if (typeof x === "boolean") return x ? 1 : 0;
  if (x instanceof Date) return x.valueOf();
  if (x instanceof ArrayBuffer) return Buffer.from(x);
  return x;
}

/** The args themselves when the driver binds them as they are (the usual case: no copy), else converted. */
function bindable(args: unknown[]): unknown[] {
  for (let i = 0; i < args.length; i++) {
    const x = args[i];
    if (typeof x === "boolean" || (typeof x === "object" && x !== null && !(x instanceof Uint8Array))) return args.map(toSql);
  }
  return args;
}

/**
 * Named args as @libsql/client takes them, `{ ":id": 1 }` or `{ id: 1 }`, in the driver's form
 * (no prefix; it would bind NULL for a prefixed key), values converted (toSql).
 */
function unprefixed(args: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const k in args) {
    const c = k[0];
    out[c === ":" || c === "@" || c === "$" ? k.slice(1) : k] = toSql(args[k]);
  }
  return out;
}

const NO_ARGS: readonly unknown[] = Object.freeze([]);

function toResult(prepared: Stmt, sql: string, args: InValue[] | Record<string, InValue> | undefined, redo: Redo[] | undefined): ResultSet {
  // Positional (array) or named (object), handed to the driver as one argument: no spread.
  let params = (args ?? NO_ARGS) as unknown[] | Record<string, unknown>;
  if (Array.isArray(params)) params = bindable(params);
  else {
    if (prepared.nameless) throw namedOnNameless(sql);
    params = unprefixed(params);
  }
  if (prepared.execute) {
    // A remote statement: one round trip says both, so nothing rests on guessing a reader. A
    // shared journal undoes with savepoints, never by redo (journal.ts), but the log stays whole.
    const r = prepared.execute(params);
    if (redo) redo.push(new RunRedo(prepared, sql, snapshot(params), r.changes, r.lastInsertRowid));
    return { columns: r.columns, rows: r.rows, rowsAffected: r.changes, lastInsertRowid: BigInt(r.lastInsertRowid) };
  }
  if (prepared.isReader) {
    const rows = prepared.all(params) as Record<string, unknown>[];
    if (redo && prepared.writes) {
      const again = snapshot(params);
      const seen = rows.map((r) => ({ ...r }));
      redo.push(() => {
        if (!sameRows(prepared.all(again) as Record<string, unknown>[], seen)) throw new RedoMismatchError(sql, "returned rows");
      });
    }
    for (const row of rows) for (const k in row) if (typeof row[k] === "bigint") row[k] = exactInteger(row[k]);
    return { columns: prepared.columns().map((c) => c.name), rows, rowsAffected: 0, lastInsertRowid: undefined };
  }
  const info = prepared.run(params);
  if (redo) redo.push(new RunRedo(prepared, sql, snapshot(params), info.changes, info.lastInsertRowid));
  return { columns: [], rows: [], rowsAffected: info.changes, lastInsertRowid: BigInt(info.lastInsertRowid) };
}

/**
 * An integer a handler reads: a number while exact, else a BigInt (a number would be rounded
 * without a word). The same on the local driver and on a libSQL server.
 */
export function exactInteger(v: bigint): number | bigint {
  return v >= MIN_SAFE && v <= MAX_SAFE ? Number(v) : v;
}
const MIN_SAFE = BigInt(Number.MIN_SAFE_INTEGER);
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/** Blobs come back as ArrayBuffers. */
function bytes(x: unknown): Buffer | undefined {
  if (x instanceof ArrayBuffer) return Buffer.from(x);
  if (x instanceof Uint8Array) return Buffer.from(x.buffer, x.byteOffset, x.byteLength);
  return undefined;
}

function sameValue(a: unknown, b: unknown): boolean {
  const ab = bytes(a);
  const bb = bytes(b);
  if (ab && bb) return ab.equals(bb);
  return a === b || (typeof a === "number" && typeof b === "number" && Number.isNaN(a) && Number.isNaN(b));
}

function sameRows(a: Record<string, unknown>[], b: Record<string, unknown>[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) {
    const x = a[i]!;
    const y = b[i]!;
    const keys = Object.keys(x);
    if (keys.length !== Object.keys(y).length) return false;
    for (const k of keys) if (!sameValue(x[k], y[k])) return false;
  }
  return true;
}

/** A statement as error messages quote it: on one line, its start only. */
function shown(sql: string): string {
  return sql.replace(/\s+/g, " ").trim().slice(0, 60);
}

function refuseControl(sql: string): Error {
  return new Error(
    `ctx.tx runs inside kexo's transaction, which holds this message's record: "${shown(sql)}" would end or split it. ` +
      "Leave out BEGIN/COMMIT/ROLLBACK/SAVEPOINT: a ctx.tx body is already all-or-nothing, and db.batch() groups statements all-or-nothing within it",
  );
}

function outsideBody(sql: string): Error {
  return new Error(
    `db written outside a ctx.tx body while kexo's transaction is open ("${shown(sql)}"): ` +
      "the write would commit with other messages' records but without a record of its own. Write through the db a ctx.tx body receives, inside that body (setup()'s db may still read)",
  );
}

function afterSetup(sql: string): Error {
  return new Error(
    `db written outside setup() and outside a ctx.tx body ("${shown(sql)}"): the write would commit on its own, ` +
      "an effect without a message's record, so a redelivery or another instance would repeat it. " +
      "Write through the db a ctx.tx body receives, inside that body; setup()'s db is for setup() (its reads work later too)",
  );
}

function lostError(cause: unknown): Error {
  return new Error(
    `a statement ended the journal's transaction (SQLite rolled it back: ${errorMessage(cause)}); ` +
      "this ctx.tx fails and every other message of the group is redone. Avoid OR ROLLBACK and RAISE(ROLLBACK) in ctx.tx: use OR ABORT or RAISE(ABORT), which undo the statement alone",
    { cause },
  );
}

/**
 * batch() runs in a savepoint, so it is all-or-nothing inside or outside a transaction.
 * `tx`: the journal's transaction (a redo log while one is open, else undefined, e.g. in setup()).
 */
export function createHandlerDb(conn: Conn, tx: JournalTx = { redoLog: () => undefined, inBody: () => false, lost: undefined }): HandlerDb {
  let depth = 0;
  const cache = new Map<string, Stmt>();
  /** One statement; inside the journal's transaction, refuses transaction control and notices the transaction ending. */
  const one = (stmt: InStatement, log: Redo[] | undefined): ResultSet => {
    const sql = typeof stmt === "string" ? stmt : stmt.sql;
    const args = typeof stmt === "string" ? undefined : stmt.args;
    const prepared = prepare(conn, cache, sql);
    if (!log) {
      if (!prepared.readOnly && tx.setup?.() === false) throw afterSetup(sql);
      return toResult(prepared, sql, args, log);
    }
    if (!tx.inBody()) {
      // A db kept from setup() or from an ended body: reads see the open group, writes may not join it.
      if (!prepared.readOnly) throw outsideBody(sql);
      return toResult(prepared, sql, args, undefined);
    }
    if (tx.lost) throw tx.lost;
    if (prepared.control) throw refuseControl(sql);
    try {
      return toResult(prepared, sql, args, log);
    } catch (err) {
      if (!conn.inTransaction) throw (tx.lost = lostError(err));
      throw err;
    }
  };
  return {
    execute: async (stmt) => one(stmt, tx.redoLog()),
    batch: async (stmts) => {
      // Outside a transaction (setup()), a transaction of its own: a remote connection runs a
      // SAVEPOINT outside one on a stream of its own, gone by the next statement.
      const own = !conn.inTransaction;
      const sp = `kexo_batch_${depth++}`;
      const log = tx.redoLog();
      if (log && tx.lost) throw tx.lost;
      if (log && !tx.inBody()) throw outsideBody(`batch: ${typeof stmts[0] === "string" ? stmts[0] : (stmts[0]?.sql ?? "")}`);
      // A failed batch leaves nothing to redo: its statements join the log only once it is released.
      const mine: Redo[] | undefined = log ? [] : undefined;
      conn.exec(own ? "BEGIN IMMEDIATE" : `SAVEPOINT ${sp}`);
      try {
        const out = stmts.map((s) => one(s, mine));
        conn.exec(own ? "COMMIT" : `RELEASE ${sp}`);
        if (log && mine) log.push(...mine);
        return out;
      } catch (err) {
        if (own) {
          if (conn.inTransaction) conn.exec("ROLLBACK");
        } else if (!tx.lost) {
          conn.exec(`ROLLBACK TO ${sp}`);
          conn.exec(`RELEASE ${sp}`);
        }
        throw err;
      } finally {
        depth--;
      }
    },
  };
}
