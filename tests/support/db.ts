// Reads a worker's journal file from the test process (read-only; the file is in WAL mode, so this
// works while the worker runs).
import Database from "libsql";
import { existsSync } from "node:fs";

/** Rows of a query, or [] while the file or the table does not exist yet. */
export function queryRows<T>(path: string, sql: string): T[] {
  if (!existsSync(path)) return [];
  const conn = new Database(path, { readonly: true });
  try {
    return conn.prepare(sql).all() as T[];
  } catch {
    return [];
  } finally {
    conn.close();
  }
}

export function countRows(path: string, table: string): number {
  return queryRows<{ n: number }>(path, `SELECT count(*) AS n FROM ${table}`)[0]?.n ?? 0;
}
