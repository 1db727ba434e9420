// A journal on a libSQL server (`--db libsql://…` or `http(s)://…`), shared by several instances.
//
// The journal is synchronous: it reads inside a message's processing and runs a handler's ctx.tx
// statements in its group transaction through the `libsql` driver's blocking calls. That driver
// also opens remote URLs, but it is not safe for a journal there: after a failed statement inside
// a transaction (a UNIQUE violation, say) it silently retries the statement outside, in autocommit,
// and the transaction is gone; named parameters and blobs fail too. So a remote journal talks to
// the server through @libsql/client, whose interactive transactions keep SQLite's semantics, on a
// worker thread (remote-worker.ts). RemoteConnection gives the journal the driver's surface
// (prepare/run/all/get, exec, inTransaction) by blocking the JS thread with Atomics.wait until
// the worker answers: one round trip per statement, as the driver itself would take.
//
// Invariants:
// - Requests run one at a time, in order; each reply carries its request's id, and a reply to an
//   abandoned request (timed out) is dropped.
// - BEGIN/COMMIT/ROLLBACK map to @libsql/client's transaction; every other statement runs in the
//   open transaction if there is one. SAVEPOINTs are plain statements inside it.
// - A request that timed out breaks the connection: the transaction's state is unknown, so every
//   later call fails and the journal stops (exit 75); the restart redoes what was unacknowledged.
import { MessageChannel, receiveMessageOnPort, Worker } from "node:worker_threads";
import { ConfigError } from "../errors.ts";
import { redactUrl } from "../log.ts";

export interface RemoteRequest {
  id: number;
  op: "begin" | "commit" | "rollback" | "execute" | "script" | "close";
  sql?: string;
  args?: unknown[] | Record<string, unknown>;
}

export interface RemoteReply {
  id: number;
  ok: boolean;
  /** The failure ended the open transaction (see remote-worker.ts): the connection is done. */
  broken?: boolean;
  columns?: string[];
  rows?: Record<string, unknown>[];
  changes?: number;
  lastInsertRowid?: number | bigint;
  error?: { message: string; code?: string; cause?: string };
}

/** What the journal uses of a connection: the `libsql` driver's Database, or a RemoteConnection. */
export interface SqlConnection {
  prepare(sql: string): SqlStatement;
  exec(sql: string): unknown;
  readonly inTransaction: boolean;
  close(): void;
}

export interface SqlStatement {
  /** A remote statement's one round trip giving rows and changes alike (RemoteStatement). */
  execute?(params: unknown[] | Record<string, unknown>): { columns: string[]; rows: Record<string, unknown>[]; changes: number; lastInsertRowid: number | bigint };
  run(...params: unknown[]): { changes: number; lastInsertRowid: number | bigint };
  all(...params: unknown[]): unknown[];
  get(...params: unknown[]): unknown;
  columns(): { name: string }[];
}

/** A remote journal URL: where it is (for messages: no token) and how to reach it. */
export interface RemoteTarget {
  /** The URL without query or credentials, safe to log. */
  display: string;
  url: string;
  authToken?: string;
}

export function isRemoteUrl(url: string): boolean {
  return /^(libsql|https?|wss?):\/\//i.test(url);
}

/**
 * `libsql://host[:port][?authToken=…]`, `http(s)://…`, `ws(s)://…`. The token may also come from
 * KEXO_DB_AUTH_TOKEN (so it stays out of process listings).
 */
export function parseRemoteUrl(raw: string, env: Record<string, string | undefined> = process.env): RemoteTarget {
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    throw new ConfigError([{ path: "db", message: `not a valid URL: ${redactUrl(raw)}` }]);
  }
  if (!u.hostname) throw new ConfigError([{ path: "db", message: `no host in ${redactUrl(raw)}; expected libsql://HOST[:PORT]` }]);
  const authToken = u.searchParams.get("authToken") ?? env.KEXO_DB_AUTH_TOKEN ?? undefined;
  for (const k of [...u.searchParams.keys()]) {
    if (k !== "authToken" && k !== "tls") throw new ConfigError([{ path: "db", message: `unknown URL parameter "${k}" in ${redactUrl(raw)}; known: authToken, tls` }]);
  }
  const tls = u.searchParams.get("tls");
  u.search = "";
  u.username = u.password = "";
  const display = u.toString().replace(/\/$/, "");
  // @libsql/client reads tls=0 on libsql:// (plain text to a local server).
  const url = tls === null ? display : `${display}?tls=${tls}`;
  return { display, url, authToken: authToken || undefined };
}

/** The worker's file inside the compiled binary, beside its main module (src/build/compile.ts). */
export const REMOTE_WORKER_FILE = "kexo-remote-worker.js";

/** Where the worker's module is: in the sources, or in the compiled binary's embedded files. */
function workerModule(): URL {
  const compiled = import.meta.url.includes("/$bunfs/");
  return new URL(compiled ? `./${REMOTE_WORKER_FILE}` : "./remote-worker.ts", import.meta.url);
}

/** How long the worker thread may take to load before the first statement fails. */
const THREAD_START_TIMEOUT_MS = 10_000;

/**
 * How long one statement may take before the connection counts as lost. Above sqld's 5 s
 * transaction timeout (a writer waits at most that long for the lock), and as short as that allows:
 * the JS thread waits, heartbeats included.
 */
const ANSWER_TIMEOUT_MS = 15_000;

/** The worker thread's state, in the shared flag's second slot. */
export const THREAD_STARTING = 0;
export const THREAD_READY = 1;
export const THREAD_DEAD = 2;

export class RemoteConnection implements SqlConnection {
  readonly target: RemoteTarget;
  #worker: Worker;
  #port: MessagePort;
  #wake: Int32Array;
  #next = 1;
  #inTx = false;
  #broken: Error | undefined;
  #closed = false;
  #started: number;

  constructor(target: RemoteTarget) {
    this.target = target;
    const flag = new SharedArrayBuffer(8);
    this.#wake = new Int32Array(flag);
    const { port1, port2 } = new MessageChannel();
    this.#port = port1 as unknown as MessagePort;
    this.#worker = new Worker(workerModule(), {
      workerData: { url: target.url, authToken: target.authToken, port: port2, flag },
      transferList: [port2],
    });
    // The worker holds the process open only while a request runs (the JS thread waits then).
    this.#worker.unref();
    // While the JS thread waits, no event reaches it: the worker reports its death in the flag
    // (remote-worker.ts); this catches one outside a wait.
    this.#worker.on("error", (err: Error) => (this.#broken ??= new Error(`the journal's connection thread failed: ${err.message}`)));
    this.#started = performance.now();
  }

  get inTransaction(): boolean {
    return this.#inTx;
  }

  /** Runs one request and blocks until its answer. */
  call(op: RemoteRequest["op"], sql?: string, args?: RemoteRequest["args"]): RemoteReply {
    if (this.#broken) throw this.#broken;
    if (this.#closed) throw new Error("journal connection is closed");
    const id = this.#next++;
    this.#port.postMessage({ id, op, sql, args } satisfies RemoteRequest);
    const deadline = performance.now() + ANSWER_TIMEOUT_MS;
    for (;;) {
      const seen = Atomics.load(this.#wake, 0);
      if (seen === id) break;
      const state = Atomics.load(this.#wake, 1);
      const now = performance.now();
      if (state === THREAD_DEAD) {
        throw (this.#broken ??= new Error("the journal's connection thread failed (its error is on stderr); kexo stops, and a restart opens a new connection"));
      }
      if (state === THREAD_STARTING && now - this.#started > THREAD_START_TIMEOUT_MS) {
        throw (this.#broken ??= new Error(`the journal's connection thread did not start within ${THREAD_START_TIMEOUT_MS / 1000} s`));
      }
      const left = deadline - now;
      if (left <= 0 || this.#broken) {
        this.#broken ??= new Error(
          `the libSQL server at ${this.target.display} did not answer within ${ANSWER_TIMEOUT_MS / 1000} s (${op}${sql ? ` ${sql.slice(0, 60)}` : ""}); check the server and the network`,
        );
        throw this.#broken;
      }
      Atomics.wait(this.#wake, 0, seen, Math.min(left, 1000));
    }
    for (;;) {
      const got = receiveMessageOnPort(this.#port as never) as { message: RemoteReply } | undefined;
      if (!got) throw (this.#broken = new Error("journal connection lost its reply"));
      const reply = got.message;
      if (reply.id !== id) continue;
      if (reply.ok) return reply;
      const err = remoteError(reply.error!, this.target.display);
      if (reply.broken) this.#broken = err;
      throw err;
    }
  }

  prepare(sql: string): SqlStatement {
    return new RemoteStatement(this, sql);
  }

  exec(sql: string): void {
    const s = sql.trim().replace(/;$/, "").trim();
    if (/^begin\b/i.test(s)) {
      this.call("begin");
      this.#inTx = true;
    } else if (/^(commit|end)\b/i.test(s) || /^rollback$/i.test(s) || /^rollback\s+transaction$/i.test(s)) {
      const op = /^rollback/i.test(s) ? "rollback" : "commit";
      // Whatever the answer, the transaction is over: a failed COMMIT rolled back.
      this.#inTx = false;
      this.call(op);
    } else {
      // SAVEPOINT and friends are one statement; the schema is a script.
      this.call(/;\s*\S/.test(s) ? "script" : "execute", s);
    }
  }

  close(): void {
    if (this.#closed) return;
    try {
      if (!this.#broken) this.call("close");
    } catch {
      // closing: the server drops an abandoned stream itself
    }
    this.#closed = true;
    void this.#worker.terminate();
  }
}

class RemoteStatement implements SqlStatement {
  #conn: RemoteConnection;
  #sql: string;
  #columns: string[] = [];

  constructor(conn: RemoteConnection, sql: string) {
    this.#conn = conn;
    this.#sql = sql;
  }

  /**
   * Rows and changes of one run, whatever the statement is. No `reader` as the driver has one:
   * that is SQLite's answer, and here it would be a guess from the SQL (handler-db.ts uses this).
   */
  execute(params: unknown[] | Record<string, unknown>): { columns: string[]; rows: Record<string, unknown>[]; changes: number; lastInsertRowid: number | bigint } {
    const r = this.#conn.call("execute", this.#sql, params);
    this.#columns = r.columns ?? [];
    return { columns: this.#columns, rows: r.rows ?? [], changes: r.changes ?? 0, lastInsertRowid: r.lastInsertRowid ?? 0 };
  }

  run(...params: unknown[]): { changes: number; lastInsertRowid: number | bigint } {
    return this.execute(bindOf(params));
  }

  all(...params: unknown[]): unknown[] {
    return this.execute(bindOf(params)).rows;
  }

  get(...params: unknown[]): unknown {
    return this.execute(bindOf(params)).rows[0];
  }

  columns(): { name: string }[] {
    return this.#columns.map((name) => ({ name }));
  }
}

/** The driver's binding: one array (positional) or plain object (named) argument as is, else the arguments. */
function bindOf(params: unknown[]): unknown[] | Record<string, unknown> {
  if (params.length === 1) {
    const p = params[0];
    if (Array.isArray(p)) return p;
    if (p !== null && typeof p === "object" && Object.getPrototypeOf(p) === Object.prototype) return p as Record<string, unknown>;
  }
  return params;
}

function remoteError(e: NonNullable<RemoteReply["error"]>, where: string): Error {
  const detail = e.cause && !e.message.includes(e.cause) ? `${e.message} (${e.cause})` : e.message;
  // Bun's fetch adds advice meant for its own callers.
  const said = detail.replace(/\s*For more information, pass `verbose: true` in the second argument to fetch\(\)\.?/, "");
  const err = new Error(
    /SQLITE_|SQLite error/.test(said)
      ? said
      : e.code === "STREAM_EXPIRED"
      // The server drops a stream idle for ~10 s, with the transaction open on it: this process
      // sent nothing that long (it was stopped: SIGSTOP, a frozen VM or container, a long GC pause).
      ? `the libSQL server ${where} expired the journal's connection stream, and the transaction open on it, after it sent nothing for a while (${said}); was this process paused (SIGSTOP, a frozen VM or container)?`
      : `the libSQL server ${where} did not answer as expected (${said}): check that it runs and is reachable`,
  );
  // `detail`: what went wrong without where, for messages that say where themselves.
  return Object.assign(err, { code: e.code ?? "SQLITE_ERROR", detail: said });
}
