// Reads a worker's journal file from the test process (read-only; the file is in WAL mode, so this
// works while the worker runs).
import Database from "libsql";
import { existsSync } from "node:fs";

/** Rows of a query, or [] while the file or the table does not exist yet. */
export function queryRows<T>(path: string, sql: string, ...args: unknown[]): T[] {
  if (!existsSync(path)) return [];
  const conn = new Database(path, { readonly: true });
  try {
    return conn.prepare(sql).all(...(args as never[])) as T[];
  } catch {
    return [];
  } finally {
    conn.close();
  }
}

export function countRows(path: string, table: string): number {
  return countIn(path, `SELECT count(*) AS n FROM ${table}`);
}

/** The number `sql` (a `SELECT count(*) AS n …`) returns, or 0 while the file or table is missing. */
export function countIn(db: string, sql: string, ...args: unknown[]): number {
  return queryRows<{ n: number }>(db, sql, ...args)[0]?.n ?? 0;
}

/** The first column of every row `sql` returns, or [] while the file or table is missing. */
export function columnIn<T>(db: string, sql: string, ...args: unknown[]): T[] {
  return queryRows<Record<string, unknown>>(db, sql, ...args).map((r) => Object.values(r)[0] as T);
}
