// Reads a worker's journal database from the test while the worker runs (WAL: readers don't block).
import Database from "libsql";
import { existsSync } from "node:fs";

/** The number `sql` (a `SELECT count(*) AS n …`) returns, or 0 while the file or table is missing. */
export function countIn(db: string, sql: string, ...args: unknown[]): number {
  if (!existsSync(db)) return 0;
  const conn = new Database(db, { readonly: true });
  try {
    return (conn.prepare(sql).get(...(args as never[])) as { n: number }).n;
  } catch {
    return 0;
  } finally {
    conn.close();
  }
}

/** The first column of every row `sql` returns, or [] while the file or table is missing. */
export function columnIn<T>(db: string, sql: string, ...args: unknown[]): T[] {
  if (!existsSync(db)) return [];
  const conn = new Database(db, { readonly: true });
  try {
    return (conn.prepare(sql).raw(true).all(...(args as never[])) as unknown[][]).map((r) => r[0] as T);
  } catch {
    return [];
  } finally {
    conn.close();
  }
}
