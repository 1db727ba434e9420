// The thread that talks to a libSQL server for a remote journal (see remote.ts). It runs
// @libsql/client, whose interactive transactions keep SQLite's semantics over the network (a
// failed statement fails alone; the transaction stays open), and answers each request of the
// JS thread on its port, then wakes it through the shared flag.
import { exactInteger } from "./handler-db.ts";
import { createClient, type Client, type InArgs, type ResultSet, type Transaction } from "@libsql/client";
import { type MessagePort, workerData } from "node:worker_threads";
import { type RemoteReply, type RemoteRequest, THREAD_DEAD, THREAD_READY } from "./remote.ts";

interface Init {
  url: string;
  authToken?: string;
  port: MessagePort;
  flag: SharedArrayBuffer;
}

const { url, authToken, port, flag } = workerData as Init;
/** [0]: the id of the last request answered; [1]: this thread's state (THREAD_* in remote.ts). */
const wake = new Int32Array(flag);
let client: Client | undefined;
let tx: Transaction | undefined;

/** Integers as numbers while exact, else as BigInt, as the embedded journal gives them. */
function plain(v: unknown): unknown {
  return typeof v === "bigint" ? exactInteger(v) : v;
}

function rowsOf(rs: ResultSet): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = new Array(rs.rows.length);
  for (let i = 0; i < rs.rows.length; i++) {
    const row = rs.rows[i]!;
    const o: Record<string, unknown> = {};
    for (let c = 0; c < rs.columns.length; c++) o[rs.columns[c]!] = plain(row[c]);
    out[i] = o;
  }
  return out;
}

/** undefined is not a SQL value; the embedded driver binds it as NULL. */
function argsOf(args: RemoteRequest["args"]): InArgs {
  if (args === undefined) return [];
  if (Array.isArray(args)) return args.map((a) => (a === undefined ? null : a)) as InArgs;
  const named: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(args)) named[k] = v === undefined ? null : v;
  return named as InArgs;
}

async function answer(req: RemoteRequest): Promise<RemoteReply> {
  client ??= createClient({ url, authToken, intMode: "bigint" });
  switch (req.op) {
    case "begin":
      if (tx) throw Object.assign(new Error("cannot start a transaction within a transaction"), { code: "SQLITE_ERROR" });
      tx = await client.transaction("write");
      return { id: req.id, ok: true };
    case "commit":
    case "rollback": {
      const open = tx;
      tx = undefined;
      if (!open) throw Object.assign(new Error(`cannot ${req.op} - no transaction is active`), { code: "SQLITE_ERROR" });
      await (req.op === "commit" ? open.commit() : open.rollback());
      return { id: req.id, ok: true };
    }
    case "script":
      await (tx ?? client).executeMultiple(req.sql!);
      return { id: req.id, ok: true };
    case "execute": {
      const rs = await (tx ?? client).execute({ sql: req.sql!, args: argsOf(req.args) });
      return {
        id: req.id,
        ok: true,
        columns: rs.columns,
        rows: rowsOf(rs),
        changes: rs.rowsAffected,
        lastInsertRowid: plain(rs.lastInsertRowid ?? 0n) as number | bigint,
      };
    }
    case "close":
      tx?.close();
      tx = undefined;
      client?.close();
      return { id: req.id, ok: true };
  }
}

/**
 * Whether the transaction is still open on the server after a statement SQLite refused: most
 * such errors undo the statement alone, but INSERT OR ROLLBACK, RAISE(ROLLBACK) or a full disk
 * roll the whole transaction back, and the client does not notice. BEGIN tells: refused inside a
 * transaction, run outside one (and then rolled back).
 */
async function stillInTransaction(open: Transaction): Promise<boolean> {
  try {
    await open.execute("BEGIN");
  } catch (err) {
    return /within a transaction/i.test((err as Error).message ?? "");
  }
  await open.execute("ROLLBACK").catch(() => undefined);
  return false;
}

port.on("message", (req: RemoteRequest) => {
  answer(req)
    .catch(async (err: unknown): Promise<RemoteReply> => {
      const e = err as { message?: string; code?: string; cause?: { message?: string } };
      let message = e.message ?? String(err);
      // A statement SQLite refused (a constraint, bad SQL) fails alone and the transaction stays
      // open, unless SQLite rolled it all back (stillInTransaction). Anything else inside one (the
      // server took it back after its transaction timeout, a broken stream, the network) leaves
      // no transaction either: statements after it would commit on their own, so the connection is
      // broken and sends nothing more (RemoteConnection.call).
      const inTx = tx !== undefined && req.op !== "commit" && req.op !== "rollback";
      let broken = inTx && !/^SQLITE_/.test(e.code ?? "");
      if (inTx && !broken && !(await stillInTransaction(tx!))) {
        broken = true;
        message = `${message}; the journal's transaction on the server ended under this statement (SQLite rolled it back: OR ROLLBACK, RAISE(ROLLBACK) or a full disk; or it never began), so the group is lost: kexo stops and a restart redoes it`;
      }
      // A failed COMMIT leaves no transaction behind.
      if (req.op === "commit") tx = undefined;
      return { id: req.id, ok: false, broken, error: { message, code: e.code, cause: e.cause?.message } };
    })
    .then((reply) => {
      port.postMessage(reply);
      Atomics.store(wake, 0, req.id);
      Atomics.notify(wake, 0);
      if (req.op === "close") port.close();
    })
    .catch((err: unknown) => dead(err));
});

/** Tells the JS thread, which may be waiting for an answer, that none will come. */
function dead(err: unknown): void {
  console.error(`kexo: the journal's connection thread failed: ${(err as Error)?.stack ?? String(err)}`);
  Atomics.store(wake, 1, THREAD_DEAD);
  Atomics.notify(wake, 0);
}

process.on("uncaughtException", dead);
process.on("unhandledRejection", dead);
Atomics.store(wake, 1, THREAD_READY);
Atomics.notify(wake, 0);
