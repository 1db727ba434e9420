// Many rows in one INSERT statement: for small rows the driver's per-statement cost (≈ 4 µs) is
// most of the work, so group-committed rows are written in chunks at COMMIT time.
import type { SqlConnection, SqlStatement } from "./remote.ts";

type Conn = SqlConnection;
type Stmt = SqlStatement;

const CHUNK = 64;

/** `head` is everything before VALUES, e.g. `INSERT OR REPLACE INTO t (a, b)`. */
export function createMultiInsert(conn: Conn, head: string, columns: number): (rows: unknown[][]) => void {
  const tuple = `(${new Array(columns).fill("?").join(", ")})`;
  const cache = new Map<number, Stmt>();
  const statement = (n: number): Stmt => {
    let s = cache.get(n);
    if (!s) cache.set(n, (s = conn.prepare(`${head} VALUES ${new Array(n).fill(tuple).join(", ")}`)));
    return s;
  };
  return (rows) => {
    for (let i = 0; i < rows.length; i += CHUNK) {
      const part = rows.slice(i, i + CHUNK);
      const st = statement(part.length) as unknown as { run(...args: unknown[]): unknown };
      st.run(...part.flat());
    }
  };
}
