// The @libsql/client-shaped `db` that handlers get in setup() and ctx.tx(), over the journal's
// synchronous libsql connection (same engine, one connection, so tx writes join the journal's
// transaction).
import type Database from "libsql";
import type { HandlerDb, InStatement, ResultSet } from "../index.ts";

type Conn = InstanceType<typeof Database>;
interface Stmt {
  /** A native getter on the driver's statement: read once, kept in `isReader`. */
  reader: boolean;
  isReader?: boolean;
  all(...params: unknown[]): unknown[];
  run(...params: unknown[]): { changes: number; lastInsertRowid: number | bigint };
  columns(): { name: string }[];
}

// Handlers run the same few statements for every message: preparing once saves most of the cost.
const MAX_CACHED = 512;

function toResult(conn: Conn, cache: Map<string, Stmt>, stmt: InStatement): ResultSet {
  const { sql, args } = typeof stmt === "string" ? { sql: stmt, args: undefined } : stmt;
  let prepared = cache.get(sql);
  if (!prepared) {
    if (cache.size >= MAX_CACHED) cache.clear();
    prepared = conn.prepare(sql) as unknown as Stmt;
    prepared.isReader = prepared.reader;
    cache.set(sql, prepared);
  }
  const bind: unknown[] = args === undefined ? [] : Array.isArray(args) ? args : [args];
  if (prepared.isReader) {
    const rows = prepared.all(...bind) as Record<string, unknown>[];
    return { columns: prepared.columns().map((c) => c.name), rows, rowsAffected: 0, lastInsertRowid: undefined };
  }
  const info = prepared.run(...bind);
  return { columns: [], rows: [], rowsAffected: info.changes, lastInsertRowid: BigInt(info.lastInsertRowid) };
}

/** batch() runs in a savepoint, so it is all-or-nothing inside or outside a transaction. */
export function createHandlerDb(conn: Conn): HandlerDb {
  let depth = 0;
  const cache = new Map<string, Stmt>();
  return {
    execute: async (stmt) => toResult(conn, cache, stmt),
    batch: async (stmts) => {
      const sp = `kexo_batch_${depth++}`;
      conn.exec(`SAVEPOINT ${sp}`);
      try {
        const out = stmts.map((s) => toResult(conn, cache, s));
        conn.exec(`RELEASE ${sp}`);
        return out;
      } catch (err) {
        conn.exec(`ROLLBACK TO ${sp}`);
        conn.exec(`RELEASE ${sp}`);
        throw err;
      } finally {
        depth--;
      }
    },
  };
}
