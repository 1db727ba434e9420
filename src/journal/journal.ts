// The journal: dedup records, step results, partition progress, outbox and dead letters in one
// embedded libSQL file, written through one connection with group commit.
//
// Invariants:
// - Many messages' records share one transaction (group commit); durable() resolves only after
//   the COMMIT that holds every write made before it was called.
// - A handler's ctx.tx commits or vanishes together with the record of it, whatever else shares
//   the transaction. While its body runs, every other write waits in #queue: nothing of another
//   message may be undone with it, and COMMIT never lands between a tx's writes and its record.
// - ctx.tx without a savepoint: a SAVEPOINT/RELEASE pair cost about as much as the handler's
//   INSERT (bench (b)). So the body runs straight in the group's transaction, and every write
//   since BEGIN is kept as a Redo (#redo). When a body fails, the transaction is rolled back and
//   redone without it (#undoTx); each handler statement checks it gets the result the handler saw
//   (rowsAffected, lastInsertRowid, RETURNING rows), else the journal fails and kexo stops before
//   anything is acknowledged, and later runs use savepoints (meta `tx_undo`). A handler whose body
//   failed uses savepoints for its next SAVEPOINT_RUNS_AFTER_FAILURE runs: failures come in runs.
// - Completion rows, ctx.step results and ctx.tx records wait in memory (#done, #covered,
//   #stepRows, #txRecords, #fresh) and
//   are written as multi-row INSERTs right before COMMIT, inside the same transaction; reads
//   consult them first. A tx record whose message completes before that COMMIT is dropped: the
//   completion, in the same transaction as the tx's writes, already says "never run again".
//   Savepoint rollbacks never touch them: they are not in the database until the COMMIT.
// - A completion marked `coveredBy` (a default-id message of order partition/topic, no result, no
//   outbox) gets no row when that group's partition progress written by the same COMMIT passes
//   its offset: the progress row says "completed" and is what later deliveries check first. If
//   the COMMIT's progress does not pass it (progress taken before it finished), the row is written.
//   These wait per partition (#covered), as offsets: no map keyed by the ~60-character id per
//   message, the journal's largest per-message cost before. A lookup finds them by position.
// - ctx.tx records of a message's first run at a never-started offset (`fresh` in runTx) wait in
//   that run's own list, which #fresh holds until its completion (which supersedes them) or the
//   COMMIT (which writes them): short-lived, so young garbage. Other runs' records are keyed by
//   message (#txRecords). A lookup of a default id scans #fresh: only retries and redeliveries do.
// - kexo_started (see schema.ts) is written at every COMMIT that follows a start(), before any
//   record of the started message can be durable.
// - A file journal runs with synchronous = NORMAL and acknowledges a COMMIT (hooks' committed(),
//   durable() waiters, journal.committed) only after WalSync fsynced the WAL, off the JS thread
//   (see wal-sync.ts). Until then nothing outside the journal learns of it: no Kafka offset, no
//   outbox publish (journal.committed carries the outbox's committed seq, not a later read).
// - The worker's journal is `run_state = running` in kexo_meta from its open until markStopped()
//   after a drain; found so at open, the last worker died (uncleanStart) and the crash guard runs
//   (processing/crash-guard.ts). Its claims (attempts journaled before they run) are COMMITted, not
//   fsynced: they guard against the process's death, which leaves the page cache intact.
import { mkdirSync, realpathSync } from "node:fs";
import { dirname, resolve } from "node:path";
import Database from "libsql";
import { ConfigError, ExitCode, KexoError, PermanentError } from "../errors.ts";
import type { EventBus } from "../events.ts";
import type { HandlerDb } from "../index.ts";
import { createHandlerDb, type JournalTx, type Redo, runRedo } from "./handler-db.ts";
import { fromJson, toJson } from "./json.ts";
import { createMultiInsert } from "./multi-insert.ts";
import { PerPartition } from "../kafka/per-partition.ts";
import { defaultMessageId } from "../processing/decode.ts";
import { BEAT_MS, InstanceLease } from "./lease.ts";
import { isRemoteUrl, parseRemoteUrl, RemoteConnection, type SqlConnection } from "./remote.ts";
import { ADDED_COLUMNS, SCHEMA, SCHEMA_VERSION } from "./schema.ts";
import { WalSync } from "./wal-sync.ts";
import { setOwn } from "../own.ts";
import type { WireHeaders } from "../kafka/headers.ts";

type Conn = SqlConnection;

/** How long a failed-attempts row no retry updated is kept (see kexo_retries in schema.ts). */
const ATTEMPTS_KEPT_MS = 7 * 24 * 3600 * 1000;

/** ctx.tx runs of a handler that use a savepoint after one of its bodies failed (see top). */
export const SAVEPOINT_RUNS_AFTER_FAILURE = 1000;

export interface MessageRecord {
  handler: string;
  id: string;
  status: "completed" | "dead_lettered";
  topic: string;
  partition: number;
  offset: string;
  attempts: number;
  result?: string | null;
  error?: string | null;
  /**
   * The group whose partition progress, once it passes `offset` in the same COMMIT, records this
   * completion instead of a row. Only for ids no lookup at/above that progress can ask for, and
   * only for the message's default id in that group (a row, if written, rebuilds it from these).
   */
  coveredBy?: string;
}

/** A message's journal entry as the dedup lookup sees it; offset is where it finished. */
export interface LookupRow {
  status: string;
  result: string | null;
  attempts: number;
  topic: string;
  partition: number;
  offset: number;
}

/** Where a message was delivered: what a delivery's own records (covered runs, retry counts) are keyed by. */
export interface Delivery {
  topic: string;
  partition: number;
  offset: string;
}

export interface DeadLetterRecord {
  handler: string;
  groupId: string;
  messageId: string;
  topic: string;
  partition: number;
  offset: string;
  key: Buffer | null;
  value: Buffer | null;
  /** Every value of a repeated name. */
  headers: WireHeaders;
  reason: string;
  error: string;
  errorType: string;
  attempts: number;
  failedAt: string;
  dlqTopic: string;
}

export interface OutboxRecord {
  handler: string;
  messageId: string;
  topic: string;
  key: Buffer | null;
  value: Buffer | null;
  headers: WireHeaders;
  partition?: number;
}

export interface JournalOptions {
  /** file:PATH, file:///ABS, or :memory: */
  url: string;
  bus?: EventBus;
  /** Longest a write waits for its group commit. */
  commitIntervalMs?: number;
  /** Commit as soon as this many writes are pending. */
  maxPendingWrites?: number;
  /**
   * Opened by the worker that consumes with it (not by a CLI command reading it): marks the
   * journal as in use until markStopped(), so the next open can tell a clean stop from a crash
   * (uncleanStart).
   */
  worker?: boolean;
  /**
   * This instance's name (its client id). In a shared journal (a libSQL server) it keys the meta
   * rows that belong to one instance: its run state and its consumers' member ids, and a worker
   * holds it by a lease (lease.ts).
   */
  instance?: string;
  /** How long a starting worker watches another holder's lease (lease.ts WATCH_MS; tests shorten it). */
  leaseWatchMs?: number;
}

/** An attempt journaled before it ran (Journal.claimAttempt). */
export interface AttemptClaim {
  /** Once the attempt ended; only the first call counts. */
  settle(counted: boolean): void;
}

/** A delivery's failed attempts so far (kexo_retries). */
export interface FailedAttempts {
  attempts: number;
  /** How many of them the process did not survive (see processing/crash-guard.ts). */
  deaths: number;
  /** Set once the handler gave up: why, as the executor wrote it; only the dead letter's write is left. */
  deadLetter?: string;
  /**
   * When the next attempt is due (ms since epoch, the clock of whichever instance failed it), as the
   * last failure set it; undefined when none is known (see kexo_retries.next_try_at).
   */
  nextTryAt?: number;
}

export interface ProgressEntry {
  groupId: string;
  topic: string;
  partition: number;
  nextOffset: bigint;
}

/**
 * Lets a consumer write partition progress once per commit instead of once per message.
 * `progress()` is asked only when every write made before it ran, or waits in the queue ahead of
 * the COMMIT that carries the answer (see Ticket), so progress never runs ahead of the completions
 * it covers.
 */
export interface CommitHook {
  /** Takes the progress to write: the COMMIT being prepared writes it (or the journal fails). */
  progress(): ProgressEntry[];
  /** Whether progress() would return anything; takes nothing. */
  hasProgress(): boolean;
  committed(entries: ProgressEntry[]): void;
}

interface Waiter {
  resolve(): void;
  reject(err: unknown): void;
}

/**
 * What one COMMIT may acknowledge: hooks' progress and durable() waiters, taken when every write
 * issued before had run or waited ahead of that COMMIT in the queue. Taken later, they could cover
 * a completion still queued behind the COMMIT (progress past a message whose record a crash loses).
 */
interface Ticket {
  progress: [CommitHook, ProgressEntry[]][];
  waiters: Waiter[];
}

/** The file a file: URL names (`:memory:` for memory); a remote URL's display form (no token). */
export function journalPath(url: string): string {
  if (url === ":memory:" || url === "file::memory:") return ":memory:";
  if (isRemoteUrl(url)) return parseRemoteUrl(url).display;
  if (!url.startsWith("file:")) {
    throw new ConfigError([{ path: "db", message: `expected file:PATH, file:///ABSOLUTE/PATH or :memory:, got "${url}"` }]);
  }
  const rest = url.slice("file:".length).split("?")[0] ?? "";
  return rest.startsWith("//") ? decodeURIComponent(new URL(url).pathname) : rest;
}

export class Journal {
  readonly path: string;
  readonly handlerDb: HandlerDb;
  #conn: Conn;
  #bus: EventBus | undefined;
  #interval: number;
  #maxPending: number;
  #inTx = false;
  #held = false;
  /** Whose ctx.tx body holds the lock (runTx's `owner`): one of its own would wait for it forever. */
  #holder: object | undefined;
  #queue: (() => void)[] = [];
  #pendingWrites = 0;
  #waiters: Waiter[] = [];
  /** commit() callers: resolved by the next COMMIT that runs, before its fsync. */
  #afterCommit: Waiter[] = [];
  #timer: ReturnType<typeof setTimeout> | undefined;
  #failed: unknown;
  #closed = false;
  #hooks = new Set<CommitHook>();
  #s: ReturnType<typeof prepareAll>;
  #adhoc = new Map<string, { run(...args: unknown[]): unknown }>();
  /** Pending completion rows by handler\0id (INSERT OR REPLACE: the last one wins). */
  #done = new Map<string, unknown[]>();
  /** Completions that partition progress may record instead, per handler (so group), topic and partition. */
  #covered = new PerPartition<CoveredRun>();
  #coveredCount = 0;
  /** Pending ctx.tx records by handler\0id, then name. */
  #txRecords = new Map<string, Map<string, unknown[]>>();
  /** ctx.step results not yet written, by `handler\0id`, then by step name (see recordStep). */
  #stepRows = new Map<string, Map<string, unknown[]>>();
  /** Fresh runs' lists of ctx.tx records not yet written (see runTx and the top). */
  #fresh = new Set<unknown[][]>();
  #insertDone: (rows: unknown[][]) => void;
  #insertSteps: (rows: unknown[][]) => void;
  /** Started offsets per handler, topic and partition; undefined when this journal predates tracking. */
  #started: PerPartition<StartedEntry> | undefined;
  /** Every write of the open transaction, in order (see "ctx.tx without a savepoint" at the top). */
  #redo: Redo[] = [];
  /** The open transaction as handler statements see it (handler-db.ts): its redo log, and whether SQLite ended it. */
  #tx: JournalTx = { redoLog: () => (this.#inTx ? this.#redo : undefined), inBody: () => this.#held, setup: () => this.#setupOpen, lost: undefined };
  /** Handlers' setup() runs: handlerDb writes outside a transaction may commit (see JournalTx.setup). */
  #setupOpen = true;
  /** ctx.tx runs left with a savepoint, by handler (after a failed body). */
  #savepointRuns = new Map<string, number>();
  /** Every ctx.tx uses a savepoint: a redo once gave another result (meta `tx_undo`). */
  #alwaysSavepoint: boolean;
  /** Syncs the WAL before a COMMIT is acknowledged; undefined when COMMIT syncs itself (see top). */
  #walSync: WalSync | undefined;
  /** The open transaction wrote outbox rows: its COMMIT reports the outbox's highest seq. */
  #outboxInTx = false;
  /**
   * Offsets with a kexo_retries row, per handler, topic and partition: only those look it up. The
   * rows are few (deliveries being retried), and so are the partitions that have any.
   */
  #attemptOffsets = new PerPartition<Set<string>>();
  /** After an unclean start: offsets that had a kexo_retries row then, as #attemptOffsets. */
  #keptAtStart: PerPartition<Set<string>> | undefined;
  /** Attempts journaled before they ran and not settled yet (claimAttempt). */
  #claims = new Set<AttemptClaim>();
  #nextTurn: Promise<void> | undefined;
  /** The worker's journal: markStopped() records a clean stop (meta `run_state`). */
  #worker: boolean;
  /**
   * The last worker on this journal did not mark a clean stop: killed (SIGKILL, out of memory),
   * crashed, stopped by a second signal, or failed to start after such a stop. Messages it was
   * running may have been what killed it.
   */
  readonly uncleanStart: boolean;
  /**
   * On a libSQL server that other instances may share: partitions that move here may carry their
   * records (see assigned()), and per-instance meta is keyed by `instance` (localKey()).
   */
  readonly shared: boolean;
  #instance: string | undefined;
  /** A shared worker journal's hold on its client id (lease.ts), advanced at commits. */
  #lease: InstanceLease | undefined;
  #beats: ReturnType<typeof setInterval> | undefined;

  private constructor(path: string, conn: Conn, opts: JournalOptions, walSync: WalSync | undefined, shared: boolean) {
    this.path = path;
    this.shared = shared;
    this.#instance = opts.instance;
    this.#conn = conn;
    this.#walSync = walSync;
    walSync?.onError((err) => this.#fail(err));
    this.#bus = opts.bus;
    this.#interval = opts.commitIntervalMs ?? 4;
    this.#maxPending = opts.maxPendingWrites ?? 4000;
    this.#s = prepareAll(conn);
    this.handlerDb = createHandlerDb(conn, this.#tx);
    // Shared: #undoTx's ROLLBACK would let another instance write between it and the redo, which
    // replays writes computed from reads made before.
    this.#alwaysSavepoint = shared || this.getMeta("tx_undo") === "savepoint";
    this.#insertDone = createMultiInsert(
      conn,
      `INSERT OR REPLACE INTO kexo_messages (handler, id, status, topic, partition, "offset", attempts, result, error, finished_at)`,
      10,
    );
    this.#insertSteps = createMultiInsert(conn, "INSERT OR REPLACE INTO kexo_steps (handler, id, name, result, recorded_at)", 5);
    this.#started = trackStarted(conn) ? new PerPartition() : undefined;
    // Rows of deliveries that went elsewhere (a revoked partition finished by another instance,
    // a renamed handler) are never cleared by a completion here.
    conn.prepare("DELETE FROM kexo_retries WHERE updated_at < ?").run(Date.now() - ATTEMPTS_KEPT_MS);
    const rows = conn.prepare('SELECT handler, topic, partition, CAST("offset" AS TEXT) AS o FROM kexo_retries').all() as
      { handler: string; topic: string; partition: number; o: string }[];
    for (const r of rows) offsetsIn(this.#attemptOffsets, r.handler, r.topic, r.partition).add(r.o);
    this.#worker = opts.worker === true;
    // Before the run state is read: another live instance's "running" is not a crash.
    if (this.#worker && shared && this.#instance) this.#lease = InstanceLease.acquire(conn, this.localKey("lease"), this.#instance, path, opts.leaseWatchMs);
    this.uncleanStart = this.#worker && this.getMeta(this.localKey("run_state")) === "running";
    if (this.uncleanStart) {
      const kept = (this.#keptAtStart = new PerPartition());
      for (const r of rows) offsetsIn(kept, r.handler, r.topic, r.partition).add(r.o);
    }
    // At once, not group-committed: a process that dies before its first COMMIT leaves it too.
    // No fsync needed for that: a dead process's writes stay in the page cache.
    if (this.#worker) this.#s.metaSet.run(this.localKey("run_state"), "running");
    if (this.#lease) {
      // Idle, the journal still commits now and then, for the beat.
      this.#beats = setInterval(() => this.requestCommit(), BEAT_MS);
      this.#beats.unref?.();
    }
  }

  static open(opts: JournalOptions): Journal {
    const remote = isRemoteUrl(opts.url) ? parseRemoteUrl(opts.url) : undefined;
    const path = remote ? remote.display : journalPath(opts.url);
    let conn: Conn | undefined;
    let walSync: WalSync | undefined;
    try {
      let mode: string | undefined;
      if (remote) {
        // The server owns durability: its COMMIT answers once the write is its own to keep.
        conn = new RemoteConnection(remote);
      } else {
        if (path !== ":memory:") mkdirSync(dirname(resolve(path)), { recursive: true });
        conn = new Database(path) as unknown as Conn;
        conn.exec("PRAGMA busy_timeout = 10000");
        mode = path === ":memory:" ? undefined : (conn.prepare("PRAGMA journal_mode = WAL").get() as { journal_mode: string } | undefined)?.journal_mode;
        // A committed journal row must survive power loss, because Kafka offsets follow it: in WAL
        // mode WalSync fsyncs before anything is acknowledged (see top); otherwise COMMIT does.
        conn.exec(`PRAGMA synchronous = ${mode === "wal" ? "NORMAL" : "FULL"}`);
      }
      conn.exec(SCHEMA);
      const row = conn.prepare("SELECT value FROM kexo_meta WHERE key = 'schema_version'").get() as
        | { value: string }
        | undefined;
      if (row && Number(row.value) > SCHEMA_VERSION) {
        throw new KexoError(
          "journal_too_new",
          `journal ${path} has schema version ${row.value}, newer than this kexo (${SCHEMA_VERSION}); upgrade kexo`,
          { exitCode: ExitCode.config },
        );
      }
      for (const [table, column, definition] of ADDED_COLUMNS) {
        const columns = conn.prepare(`PRAGMA table_info(${table})`).all() as { name: string }[];
        if (columns.some((c) => c.name === column)) continue;
        try {
          conn.exec(`ALTER TABLE ${table} ADD COLUMN ${column} ${definition}`);
        } catch (err) {
          // Another instance on a shared journal added it meanwhile.
          if (!/duplicate column/i.test((err as Error).message)) throw err;
        }
      }
      conn.prepare("INSERT OR REPLACE INTO kexo_meta (key, value) VALUES ('schema_version', ?)").run(
        String(SCHEMA_VERSION),
      );
      if (mode === "wal") {
        // SQLite keeps the WAL beside the file a symlinked path points to.
        walSync = new WalSync(`${realpathSync(path)}-wal`);
        // What a run before this one committed may not be on disk yet (it was killed during its
        // fsync, say): made durable before any of it is trusted.
        walSync.syncNow();
      }
      return new Journal(path, conn, opts, walSync, remote !== undefined);
    } catch (err) {
      // Refused (the client id's lease, lease.ts) or failed: nothing stays open behind the error.
      conn?.close();
      walSync?.close();
      if (err instanceof KexoError) throw err;
      throw new KexoError(
        "journal_unavailable",
        remote
          ? `cannot open journal on the libSQL server ${path}: ${(err as { detail?: string }).detail ?? (err as Error).message}; check --db, that the server is up, and its auth token (authToken= in the URL or KEXO_DB_AUTH_TOKEN)`
          : `cannot open journal ${path}: ${(err as Error).message}; check the --db path and its permissions`,
        { exitCode: ExitCode.unavailable, cause: err },
      );
    }
  }

  // ---- reads (see committed and pending writes of this connection) ----

  /**
   * Writes wait in a queue while a ctx.tx savepoint is open. Before a read that must see them
   * (dedup lookup, recorded steps), await this: it resolves once the writes queued so far ran.
   */
  settled(): Promise<void> | undefined {
    if (this.#queue.length === 0) return undefined;
    return new Promise((resolve) => this.#queue.push(resolve));
  }

  /**
   * The message's journal entry, pending or committed. `at`: where the message is, when `id` is
   * its default id (covered completions are found by position, see top).
   */
  lookup(handler: string, id: string, at?: Delivery): LookupRow | undefined {
    const pending = this.#done.get(`${handler}\0${id}`);
    if (pending) {
      const [, , status, topic, partition, offset, attempts, result] = pending as [string, string, string, string, number, string, number, string | null];
      return { status, result, attempts, topic, partition, offset: Number(offset) };
    }
    if (at && this.#coveredCount > 0) {
      const run = this.#covered.get(handler, at.topic, at.partition);
      const i = run ? run.offsets.lastIndexOf(at.offset) : -1;
      if (i >= 0) return { status: "completed", result: "null", attempts: run!.attempts[i]!, topic: at.topic, partition: at.partition, offset: Number(at.offset) };
    }
    return this.#s.lookup.get(handler, id) as LookupRow | undefined;
  }

  steps(handler: string, id: string): Map<string, string> {
    const rows = this.#s.steps.all(handler, id) as { name: string; result: string }[];
    const out = new Map(rows.map((r) => [r.name, r.result]));
    for (const [name, row] of this.#stepRows.get(`${handler}\0${id}`) ?? []) out.set(name, row[3] as string);
    for (const [name, row] of this.#txRecords.get(`${handler}\0${id}`) ?? []) out.set(name, row[3] as string);
    return out;
  }

  /**
   * Marks a message as started. Returns true when no offset this high was ever started for this
   * handler and partition, so nothing can be recorded under the message's default dedup id.
   */
  start(handler: string, topic: string, partition: number, offset: string): boolean {
    const started = this.#started;
    if (!started) return false;
    // Offsets as numbers (no BigInt per message); one past 2^53 only ever takes the lookups.
    if (offset.length > 15) return false;
    let e = started.get(handler, topic, partition);
    if (!e) {
      const row = this.#s.startedGet.get(handler, topic, partition) as { next_offset: number | bigint } | undefined;
      e = started.add(handler, topic, partition, { handler, topic, partition, next: row ? Number(row.next_offset) : -1, dirty: false });
    }
    const at = Number(offset);
    if (at < e.next) return false;
    e.next = at + 1;
    e.dirty = true;
    return true;
  }

  /** A meta key of this instance's own: suffixed with its name in a shared journal. */
  localKey(key: string): string {
    return this.shared && this.#instance ? `${key}@${this.#instance}` : key;
  }

  /**
   * A partition was assigned to `handler`'s consumer. In a shared journal another instance may have
   * handled it since this one last did: what is cached of it is read again. The started offset only
   * grows (a higher one means more lookups, never fewer), and failed attempts recorded elsewhere
   * join the offsets to look up. A file journal has no other writer.
   */
  assigned(handler: string, topic: string, partition: number): void {
    if (!this.shared) return;
    const e = this.#started?.get(handler, topic, partition);
    if (e) {
      const row = this.#s.startedGet.get(handler, topic, partition) as { next_offset: number | bigint } | undefined;
      if (row && Number(row.next_offset) > e.next) e.next = Number(row.next_offset);
    }
    const rows = this.#s.attemptsIn.all(handler, topic, partition) as { o: string }[];
    for (const r of rows) offsetsIn(this.#attemptOffsets, handler, topic, partition).add(r.o);
  }

  progress(groupId: string): Map<string, bigint> {
    const rows = this.#s.progress.all(groupId) as { topic: string; partition: number; next_offset: number }[];
    return new Map(rows.map((r) => [`${r.topic}:${r.partition}`, BigInt(r.next_offset)]));
  }

  getMeta(key: string): string | undefined {
    return (this.#s.metaGet.get(key) as { value: string } | undefined)?.value;
  }

  /** Group-committed; null deletes. */
  setMeta(key: string, value: string | null): void {
    this.#write(() => (value === null ? this.#s.metaDelete.run(key) : this.#s.metaSet.run(key, value)));
  }

  /** Raw read access for the CLI (dlq list, inspect). */
  query<T>(sql: string, ...args: unknown[]): T[] {
    return this.#conn.prepare(sql).all(...args) as T[];
  }

  /** Runs at once, outside the group commit, and is on disk when it returns. */
  run(sql: string, ...args: unknown[]): number {
    const changes = this.#conn.prepare(sql).run(...args).changes;
    if (!this.#conn.inTransaction) this.#walSync?.syncNow();
    return changes;
  }

  /**
   * Failed attempts recorded for this delivery of a message still being retried (by this run or
   * one before a restart), pending writes included; undefined when none. A lookup only for
   * partitions where a message has failed.
   */
  failedAttempts(handler: string, at: Delivery): FailedAttempts | undefined {
    if (this.#attemptOffsets.get(handler, at.topic, at.partition)?.has(at.offset) !== true) return undefined;
    const row = this.#s.attemptsGet.get(handler, at.topic, at.partition, at.offset) as
      { attempts: number; deaths: number; dead_letter: string | null; next_try_at: number | bigint | null } | undefined;
    if (!row) return undefined;
    const kept: FailedAttempts = { attempts: row.attempts, deaths: row.deaths };
    if (row.dead_letter !== null) kept.deadLetter = row.dead_letter;
    if (row.next_try_at !== null) kept.nextTryAt = Number(row.next_try_at);
    return kept;
  }

  /** This partition's offsets whose delivery has failed attempts recorded (see failedAttempts). */
  failedOffsets(handler: string, topic: string, partition: number): string[] {
    const offsets = this.#attemptOffsets.get(handler, topic, partition);
    return offsets ? [...offsets] : [];
  }

  // ---- writes (group-committed) ----

  /**
   * `attempts` attempts of this delivery failed and it will be tried again. `deaths` is added to
   * the attempts counted as ones the process did not survive: +1 right before an attempt run alone,
   * -1 once it ended (see processing/crash-guard.ts). `deadLetter`: the handler gave up (see
   * FailedAttempts); once set, it stays until the row goes. `nextTryAt`: when the next attempt is
   * due (ms since epoch); each write sets it, to null when not given (no wait known).
   */
  recordFailedAttempts(handler: string, at: Delivery, id: string, attempts: number, deaths = 0, deadLetter?: string, nextTryAt?: number): void {
    offsetsIn(this.#attemptOffsets, handler, at.topic, at.partition).add(at.offset);
    this.#write(() => this.#s.attemptsSet.run(handler, at.topic, at.partition, at.offset, id, attempts, deaths, Date.now(), deadLetter ?? null, nextTryAt ?? null, deaths));
  }

  /**
   * After an unclean start: whether this delivery had failed attempts journaled when the journal
   * was opened, some maybe cut by the process's death (see processing/crash-guard.ts).
   */
  keptAtStart(handler: string, at: Delivery): boolean {
    return this.#keptAtStart?.get(handler, at.topic, at.partition)?.has(at.offset) === true;
  }

  /**
   * Journals attempt `attempt` of this delivery as failed, and `alone` as not survived, before it
   * runs (see processing/crash-guard.ts); resolves once that is COMMITted (no fsync: against the
   * process's death, not the machine's). The claim's settle() puts the count right once the attempt
   * ended: `counted`, a failure that counts; otherwise (success, abort) the attempt never happened.
   * Claims still open at markStopped() are settled as not counted.
   */
  async claimAttempt(handler: string, at: Delivery, id: string, attempt: number, alone: boolean): Promise<AttemptClaim> {
    const claim: AttemptClaim = {
      settle: (counted) => {
        if (!this.#claims.delete(claim)) return;
        if (!counted && attempt === 1) this.clearFailedAttempts(handler, at);
        else this.recordFailedAttempts(handler, at, id, counted ? attempt : attempt - 1, alone ? -1 : 0);
      },
    };
    this.recordFailedAttempts(handler, at, id, attempt, alone ? 1 : 0);
    this.#claims.add(claim);
    try {
      await this.commitNextTurn();
    } catch (err) {
      this.#claims.delete(claim);
      throw err;
    }
    return claim;
  }

  /**
   * The worker stopped cleanly (drained, or its shutdown timeout aborted what still ran): the next
   * start need not guard against the messages it leaves (uncleanStart). Attempts still running did
   * not kill the process: their claims are settled as not counted.
   */
  markStopped(): void {
    if (!this.#worker || this.#failed || this.#closed) return;
    for (const claim of [...this.#claims]) claim.settle(false);
    this.setMeta(this.localKey("run_state"), "stopped");
    // Its row goes in the same COMMIT, and only if still this holder's: else that COMMIT, "stopped"
    // included, does not happen (lease.ts).
    this.#lease?.release();
  }

  /**
   * A COMMIT on the event loop's next turn, shared by the callers until then; resolves once it was
   * written (maybe before its fsync). Not at once: a message that finished may not have moved its
   * partition's progress yet (its consumer resumes in a later microtask), and a COMMIT then would
   * write its completion as a row (see #uncovered).
   */
  commitNextTurn(): Promise<void> {
    return (this.#nextTurn ??= new Promise<void>((resolve, reject) => {
      setImmediate(() => {
        this.#nextTurn = undefined;
        this.commit().then(resolve, reject);
      });
    }));
  }

  /**
   * The delivery is done: its failed attempts no longer count. Called before the write that
   * records the outcome, so no COMMIT can hold the outcome without this (a lost clear only
   * drops a count; a kept one would shorten a later run's attempts).
   */
  clearFailedAttempts(handler: string, at: Delivery): void {
    if (this.#attemptOffsets.get(handler, at.topic, at.partition)?.delete(at.offset) !== true) return;
    this.#write(() => this.#s.attemptsDelete.run(handler, at.topic, at.partition, at.offset));
  }

  /**
   * A ctx.step result: kept in memory until the next COMMIT writes it (one multi-row INSERT), read
   * by steps() meanwhile. Unlike a tx record it stays after its message completes: `kexo inspect`
   * shows a message's steps.
   */
  recordStep(handler: string, id: string, name: string, resultJson: string): void {
    if (this.#failed) throw this.#failed;
    if (this.#closed) throw closedError();
    const key = `${handler}\0${id}`;
    let rows = this.#stepRows.get(key);
    if (!rows) this.#stepRows.set(key, (rows = new Map()));
    rows.set(name, [handler, id, name, resultJson, Date.now()]);
    this.#counted();
  }

  /** `fresh`: the list runTx filled for this message's fresh run, if any. */
  finish(rec: MessageRecord, outbox: OutboxRecord[] = [], fresh?: unknown[][]): void {
    if (this.#failed) throw this.#failed;
    // Only a completion supersedes tx records: a dead-lettered message may be replayed and run again.
    if (rec.status === "completed") {
      if (fresh) this.#fresh.delete(fresh);
      if (this.#txRecords.size > 0) this.#txRecords.delete(`${rec.handler}\0${rec.id}`);
      if (rec.coveredBy !== undefined && outbox.length === 0 && this.#cover(rec, rec.coveredBy)) return this.#counted();
    }
    this.#done.set(`${rec.handler}\0${rec.id}`, [rec.handler, rec.id, rec.status, rec.topic, rec.partition, rec.offset, rec.attempts, rec.result ?? null, rec.error ?? null, Date.now()]);
    if (outbox.length === 0) return this.#counted();
    this.#write(() => {
      this.#outboxInTx = true;
      for (const o of outbox) {
        this.#s.outbox.run(
          o.handler,
          o.messageId,
          o.topic,
          o.key,
          o.value,
          encodeHeaders(o.headers),
          o.partition ?? null,
          Date.now(),
        );
      }
    });
  }

  deadLetter(rec: DeadLetterRecord, message: MessageRecord): void {
    this.#write(() => {
      this.#s.deadLetter.run(
        rec.handler,
        rec.groupId,
        rec.messageId,
        rec.topic,
        rec.partition,
        rec.offset,
        rec.key,
        rec.value,
        encodeHeaders(rec.headers),
        rec.reason,
        rec.error,
        rec.errorType,
        rec.attempts,
        rec.failedAt,
        rec.dlqTopic,
      );
    });
    this.finish(message);
  }

  /** A group-committed statement for kexo's own bookkeeping (e.g. the outbox relay's deletes). */
  write(sql: string, ...args: unknown[]): void {
    let stmt = this.#adhoc.get(sql);
    if (!stmt) this.#adhoc.set(sql, (stmt = this.#conn.prepare(sql)));
    const prepared = stmt;
    this.#write(() => prepared.run(...(args as never[])));
  }

  setProgress(groupId: string, topic: string, partition: number, nextOffset: bigint): void {
    this.#write(() => this.#s.setProgress.run(groupId, topic, partition, nextOffset, Date.now()));
  }

  /**
   * Runs a handler's ctx.tx body with its record `name`. A recorded call returns its recorded
   * JSON without running. `fn` sees every committed and pending journal write.
   * `fresh`: the caller knows nothing was recorded for this message (its first run at an offset
   * never started), so the lookup is skipped; the record goes to `fresh`, the run's list, which
   * the caller hands to finish(). `defaultId`: `id` is the message's default id, so a lookup
   * also searches #fresh.
   */
  async runTx<R>(handler: string, id: string, name: string, fn: (db: HandlerDb) => Promise<R>, fresh?: unknown[][], defaultId = false, owner?: object): Promise<R> {
    if (this.#held && owner !== undefined && this.#holder === owner) throw nestedTx();
    // Taken at once when free: awaiting an already-resolved promise costs a turn per message.
    if (this.#held) await this.#acquire();
    else this.#held = true;
    this.#holder = owner;
    try {
      this.#ensureTx();
      const recorded = fresh ? undefined : this.#recordedTx(handler, id, name, defaultId);
      if (recorded !== undefined) return fromJson<R>(recorded);
      const savepoint = this.#alwaysSavepoint || this.#savepointRun(handler);
      const mark = this.#redo.length;
      if (savepoint) this.#conn.exec("SAVEPOINT kexo_tx");
      try {
        const result = await fn(this.handlerDb);
        // A body that caught the error of a statement SQLite ended the transaction under.
        if (this.#tx.lost) throw this.#tx.lost;
        const json = toJson(result, `ctx.tx result (${name})`);
        if (savepoint) this.#conn.exec("RELEASE kexo_tx");
        // recorded_at is set when the row is written (#writePending): most are dropped before.
        const row: unknown[] = [handler, id, name, json, 0];
        if (fresh) {
          fresh.push(row);
          this.#fresh.add(fresh);
        } else {
          const key = `${handler}\0${id}`;
          let records = this.#txRecords.get(key);
          if (!records) this.#txRecords.set(key, (records = new Map()));
          records.set(name, row);
        }
        this.#pendingWrites++;
        return fromJson<R>(json);
      } catch (err) {
        this.#savepointRuns.set(handler, SAVEPOINT_RUNS_AFTER_FAILURE);
        const lost = this.#tx.lost;
        if (lost || !this.#conn.inTransaction) {
          // SQLite ended the transaction under the body (handler-db.ts): the savepoint went with
          // it. Begin anew and redo the writes before the body, as #undoTx does after its ROLLBACK.
          this.#undoTx(mark, handler, id, false);
          throw lost ?? err;
        }
        if (savepoint) {
          this.#conn.exec("ROLLBACK TO kexo_tx");
          this.#conn.exec("RELEASE kexo_tx");
          // The savepoint's statements are undone: what the body logged must not be redone.
          this.#redo.length = mark;
        } else {
          this.#undoTx(mark, handler, id);
        }
        throw err;
      }
    } finally {
      this.#holder = undefined;
      this.#release();
    }
  }

  /** Handlers' setup() is over: from now on handlerDb writes only inside a ctx.tx body. */
  endSetup(): void {
    this.#setupOpen = false;
  }

  addCommitHook(hook: CommitHook): () => void {
    this.#hooks.add(hook);
    return () => this.#hooks.delete(hook);
  }

  /** Asks for a commit soon, for hooks whose progress moved without a journal write. */
  requestCommit(): void {
    if (!this.#failed && !this.#closed) this.#schedule();
  }

  /** Resolves once every write made before this call is committed to disk. */
  durable(): Promise<void> {
    if (this.#failed) return Promise.reject(this.#failed);
    // Only an fsync of an earlier COMMIT may be outstanding: the next one covers it.
    if (!this.#unwritten()) return this.#synced();
    return new Promise((resolve, reject) => {
      this.#waiters.push({ resolve, reject });
      this.#schedule();
    });
  }

  /**
   * Commits what is pending now (or as soon as an open ctx.tx ends), and resolves once a COMMIT
   * wrote it, maybe before its fsync: for freeing what waits in memory, not for acknowledging.
   */
  commit(): Promise<void> {
    if (this.#failed) return Promise.reject(this.#failed);
    if (this.#closed) return Promise.reject(closedError());
    if (!this.#unwritten()) return Promise.resolve();
    const p = new Promise<void>((resolve, reject) => this.#afterCommit.push({ resolve, reject }));
    if (this.#held) this.#commitAfterQueue();
    else this.#commit();
    return p;
  }

  /** Commits what is pending now (or as soon as an open ctx.tx ends); resolves once it is durable. */
  flush(): Promise<void> {
    const p = this.durable();
    if (this.#held) this.#commitAfterQueue();
    else if (this.#unwritten()) this.#commit();
    return p;
  }

  /**
   * Anything a COMMIT would make durable: an open transaction, queued or in-memory records, or
   * partition progress that moved without a write (messages below progress, key lanes), which a
   * drain must not leave behind: the next start would run those messages again. Not the fsync of
   * a COMMIT made already (WalSync.busy).
   */
  #unwritten(): boolean {
    if (this.#inTx || this.#held || this.#queue.length > 0 || this.#inMemory()) return true;
    for (const hook of this.#hooks) if (hook.hasProgress()) return true;
    return false;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    await this.flush().catch(() => {});
    // A failed flush may leave an fsync running: its descriptor closes after it.
    await this.#synced().catch(() => {});
    this.#closed = true;
    clearTimeout(this.#timer);
    clearInterval(this.#beats);
    if (this.#walSync && !this.#failed) {
      // Everything into the database file itself, the WAL emptied: a copy of that file alone (a
      // backup of "kexo.db") holds the journal. SQLite's own checkpoint at close does not come
      // while statements are not finalized. Without waiting: a reader in another process (a
      // backup tool, Litestream) would hold a TRUNCATE for the whole busy timeout, on the JS
      // thread, past any shutdown timer; then it stops short and the WAL stays beside the file.
      try {
        this.#conn.exec("PRAGMA busy_timeout = 0");
        this.#conn.exec("PRAGMA wal_checkpoint(TRUNCATE)");
      } catch {
        // Closing matters more; the WAL stays as it is, as it would after a crash.
      }
    }
    this.#conn.close();
    this.#walSync?.close();
  }

  get pendingWrites(): number {
    return this.#pendingWrites + this.#queue.length;
  }

  // ---- internals ----

  #recordedTx(handler: string, id: string, name: string, defaultId: boolean): string | undefined {
    const pending = this.#txRecords.get(`${handler}\0${id}`)?.get(name);
    if (pending) return pending[3] as string;
    if (defaultId) {
      for (const rows of this.#fresh) {
        for (const row of rows) if (row[1] === id && row[2] === name && row[0] === handler) return row[3] as string;
      }
    }
    return (this.#s.stepGet.get(handler, id, name) as { result: string } | undefined)?.result;
  }

  /**
   * Resolves once the fsync that starts next has ended (at once when none is running or due), so
   * every COMMIT made before the call is on disk; rejects when the journal failed. The next
   * fsync, not "when idle", which commits of other handlers could put off without end.
   */
  #synced(): Promise<void> {
    const sync = this.#walSync;
    if (!sync?.busy) return this.#failed ? Promise.reject(this.#failed) : Promise.resolve();
    return new Promise((resolve, reject) =>
      sync.after({ run: () => (this.#failed ? reject(this.#failed) : resolve()), fail: (err) => reject(this.#failed ?? err) })
    );
  }

  /** Rows or records waiting in memory for the COMMIT. */
  #inMemory(): boolean {
    return this.#done.size > 0 || this.#coveredCount > 0 || this.#stepRows.size > 0 || this.#txRecords.size > 0 || this.#fresh.size > 0;
  }

  /** Keeps a covered completion in its partition's run; false (a row then) if the run has another group. */
  #cover(rec: MessageRecord, group: string): boolean {
    // A handler has one group (its groupId), so handler, topic and partition name the run.
    const run = this.#covered.get(rec.handler, rec.topic, rec.partition) ??
      this.#covered.add(rec.handler, rec.topic, rec.partition, { handler: rec.handler, group, topic: rec.topic, partition: rec.partition, offsets: [], attempts: [] });
    if (run.group !== group) return false;
    run.offsets.push(rec.offset);
    run.attempts.push(rec.attempts);
    this.#coveredCount++;
    return true;
  }

  /** A write that waits in memory for the COMMIT; counts towards the group-commit size. */
  #counted(): void {
    this.#pendingWrites++;
    if (this.#pendingWrites >= this.#maxPending && !this.#held) this.#commit();
    else this.#schedule();
  }

  /**
   * Writes the rows waiting in memory and the started offsets; inside the open transaction, whose
   * COMMIT writes `progress` too.
   */
  #writePending(progress: [CommitHook, ProgressEntry[]][]): void {
    if (this.#coveredCount > 0 || this.#done.size > 0) {
      // Covered rows first: a #done row of the same id is the later one (INSERT OR REPLACE).
      const rows = this.#coveredCount > 0 ? this.#uncovered(progress) : [];
      for (const row of this.#done.values()) rows.push(row);
      if (rows.length > 0) this.#insertDone(rows);
      this.#done.clear();
    }
    if (this.#stepRows.size > 0 || this.#txRecords.size > 0 || this.#fresh.size > 0) {
      const rows: unknown[][] = [];
      for (const records of this.#stepRows.values()) for (const row of records.values()) rows.push(row);
      this.#stepRows.clear();
      const now = Date.now();
      for (const list of this.#fresh) {
        for (const row of list) {
          row[4] = now;
          rows.push(row);
        }
        // Written: the run's later records start a new list's worth.
        list.length = 0;
      }
      for (const records of this.#txRecords.values()) {
        for (const row of records.values()) {
          row[4] = now;
          rows.push(row);
        }
      }
      if (rows.length > 0) this.#insertSteps(rows);
      this.#txRecords.clear();
      this.#fresh.clear();
    }
    for (const e of this.#started?.values() ?? []) {
      if (!e.dirty) continue;
      this.#s.startedSet.run(e.handler, e.topic, e.partition, e.next);
      e.dirty = false;
    }
  }

  /** The covered completions that `progress` (written by the same COMMIT) does not record, as rows. */
  #uncovered(progress: [CommitHook, ProgressEntry[]][]): unknown[][] {
    const next = new Map<string, bigint>();
    for (const [, entries] of progress) for (const e of entries) next.set(`${e.groupId}\0${e.topic}\0${e.partition}`, e.nextOffset);
    const rows: unknown[][] = [];
    const now = Date.now();
    for (const run of this.#covered.values()) {
      const n = run.offsets.length;
      if (n === 0) continue;
      const passed = next.get(`${run.group}\0${run.topic}\0${run.partition}`);
      // Offsets as numbers while exact (15 digits); past that, as BigInt.
      const passedNum = passed !== undefined && passed <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(passed) : Number.NaN;
      for (let i = 0; i < n; i++) {
        const offset = run.offsets[i]!;
        if (passed !== undefined) {
          const below = offset.length <= 15 && !Number.isNaN(passedNum) ? Number(offset) < passedNum : BigInt(offset) < passed;
          if (below) continue;
        }
        rows.push([run.handler, defaultMessageId(run.topic, run.partition, run.group, offset), "completed", run.topic, run.partition, offset, run.attempts[i], "null", null, now]);
      }
      run.offsets.length = run.attempts.length = 0;
    }
    this.#coveredCount = 0;
    return rows;
  }

  #ensureTx(): void {
    if (this.#failed) throw this.#failed;
    if (this.#closed) throw closedError();
    if (!this.#inTx) this.#begin();
  }

  #begin(): void {
    this.#conn.exec("BEGIN IMMEDIATE");
    this.#inTx = true;
    this.#redo = [];
    this.#tx.lost = undefined;
  }

  /** Whether this ctx.tx run of `handler` uses a savepoint (one of its bodies failed lately). */
  #savepointRun(handler: string): boolean {
    const left = this.#savepointRuns.get(handler);
    if (left === undefined) return false;
    if (left <= 1) this.#savepointRuns.delete(handler);
    else this.#savepointRuns.set(handler, left - 1);
    return true;
  }

  /**
   * Undoes a failed ctx.tx that ran without a savepoint: rolls the transaction back and redoes
   * every write before it (#redo up to `mark`). A redo that gives another result than the first
   * time (a nondeterministic RETURNING, say) fails the journal: kexo stops with nothing of this
   * transaction acknowledged, and from then on uses savepoints, so the restart can't repeat it.
   */
  #undoTx(mark: number, handler: string, id: string, rollback = true): void {
    const redo = this.#redo.slice(0, mark);
    try {
      if (rollback) this.#conn.exec("ROLLBACK");
      this.#inTx = false;
      this.#begin();
      for (const r of redo) runRedo(r);
      this.#redo = redo;
    } catch (err) {
      try {
        if (this.#conn.inTransaction) this.#conn.exec("ROLLBACK");
        this.#inTx = false;
        this.#s.metaSet.run("tx_undo", "savepoint");
      } catch {
        // the journal fails below either way
      }
      this.#fail(new KexoError(
        "journal_tx_undo_failed",
        `could not undo the failed ctx.tx of ${handler} message ${id} without a savepoint (${this.path}): ${(err as Error).message}; ` +
          "kexo stops with this group commit unacknowledged, and the restart runs it again using savepoints",
        { exitCode: ExitCode.transient, cause: err },
      ));
    }
  }

  /**
   * Stops the journal: nothing pending is acknowledged; the worker exits and a restart redoes it.
   * Every path that fails the journal comes here, so no waiter is left pending.
   */
  #fail(error: unknown): void {
    this.#failed ??= error;
    const failed = this.#failed;
    for (const w of this.#waiters.splice(0)) w.reject(failed);
    for (const w of this.#afterCommit.splice(0)) w.reject(failed);
    this.#bus?.emit("worker.error", { error });
  }

  #write(fn: () => void): void {
    const run = () => {
      this.#ensureTx();
      try {
        fn();
      } catch (err) {
        // A journal write SQLite ended the transaction under (a full disk, an I/O error): what
        // the group held is gone, and anything written next would commit on its own.
        if (!this.#conn.inTransaction) {
          this.#inTx = false;
          this.#fail(new KexoError(
            "journal_write_failed",
            `journal write failed and SQLite rolled back the group transaction (${this.path}): ${(err as Error).message}; ` +
              "kexo stops with that group unacknowledged, and a restart runs its messages again. Check free space and the disk",
            { exitCode: ExitCode.transient, cause: err },
          ));
        }
        throw err;
      }
      this.#redo.push(fn);
      this.#pendingWrites++;
      if (this.#pendingWrites >= this.#maxPending) this.#commit();
      else this.#schedule();
    };
    if (this.#held) this.#queue.push(run);
    else run();
  }

  #schedule(): void {
    if (this.#timer !== undefined) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      if (this.#held) this.#commitAfterQueue();
      else this.#commit();
    }, this.#interval);
  }

  #ticket(): Ticket {
    const waiters = this.#waiters;
    this.#waiters = [];
    const progress: [CommitHook, ProgressEntry[]][] = [];
    for (const hook of this.#hooks) {
      const entries = hook.progress();
      if (entries.length > 0) progress.push([hook, entries]);
    }
    return { progress, waiters };
  }

  /** Queues a COMMIT behind the writes queued so far, acknowledging what was issued until now. */
  #commitAfterQueue(): void {
    const ticket = this.#ticket();
    this.#queue.push(() => this.#commit(ticket));
  }

  #commit(ticket?: Ticket): void {
    if (this.#failed || this.#closed) {
      const error = this.#failed ?? closedError();
      for (const w of [...(ticket?.waiters ?? []), ...this.#afterCommit.splice(0)]) w.reject(error);
      return;
    }
    // Run inline while earlier writes still wait in the queue (a size-triggered commit during
    // #release): acknowledge nothing now; a COMMIT scheduled behind them does.
    const inlineEarly = !ticket && this.#queue.length > 0;
    if (inlineEarly) this.#schedule();
    const { progress, waiters } = ticket ?? (inlineEarly ? { progress: [], waiters: [] } : this.#ticket());
    const afterCommit = this.#afterCommit;
    if (afterCommit.length > 0) this.#afterCommit = [];
    if (!this.#inTx && progress.length === 0 && !this.#inMemory() && !this.#lease?.due()) {
      for (const w of afterCommit) w.resolve();
      // Nothing to commit, but an earlier COMMIT may still wait for its fsync.
      if (waiters.length > 0) {
        const synced = this.#synced();
        for (const w of waiters) synced.then(w.resolve, w.reject);
      }
      return;
    }
    const started = performance.now();
    const writes = this.#pendingWrites;
    try {
      if (!this.#inTx) this.#begin();
      // Records must never commit without the effects they stand for: should the group's
      // transaction have ended under something unseen, writing them now would autocommit them.
      else if (!this.#conn.inTransaction) throw new Error("the group's transaction ended before its COMMIT (SQLite rolled it back)");
      this.#writePending(progress);
      const now = Date.now();
      for (const [, entries] of progress) {
        for (const e of entries) this.#s.setProgress.run(e.groupId, e.topic, e.partition, e.nextOffset, now);
      }
      if (this.#lease?.due()) this.#lease.write();
      this.#conn.exec("COMMIT");
    } catch (err) {
      this.#outboxInTx = false;
      // Nothing from this transaction may be acknowledged; kexo stops and redoes it on restart.
      try {
        this.#conn.exec("ROLLBACK");
      } catch {
        // already rolled back by the engine
      }
      const error = err instanceof KexoError && err.code === "lease_lost" ? err : new KexoError(
        "journal_commit_failed",
        `journal commit failed (${this.path}): ${(err as Error).message}; kexo stops so that no offset runs ahead of the journal`,
        { exitCode: ExitCode.transient, cause: err },
      );
      for (const w of [...waiters, ...afterCommit]) w.reject(error);
      this.#fail(error);
      return;
    } finally {
      this.#inTx = false;
      this.#pendingWrites = 0;
      this.#redo = [];
    }
    for (const w of afterCommit) w.resolve();
    // Read now: the next transaction may write rows before the fsync ends.
    const outboxSeq = this.#outboxInTx ? ((this.#s.outboxSeq.get() as { m: number | null }).m ?? undefined) : undefined;
    this.#outboxInTx = false;
    const ack = () => {
      this.#bus?.emit("journal.committed", { seconds: (performance.now() - started) / 1000, writes, outboxSeq });
      for (const [hook, entries] of progress) hook.committed(entries);
      for (const w of waiters) w.resolve();
    };
    if (!this.#walSync) return ack();
    this.#walSync.after({
      run: ack,
      fail: (err) => {
        const error = new KexoError(
          "journal_sync_failed",
          `journal commit could not be made durable (${err.message}); kexo stops so that no offset runs ahead of the journal. ` +
            "The disk may have lost recent journal writes: check it (dmesg, free space) before restarting; nothing since the last acknowledged commit reached Kafka",
          { exitCode: ExitCode.transient, cause: err },
        );
        for (const w of waiters) w.reject(error);
        if (!this.#failed) this.#fail(error);
      },
    });
  }

  #acquire(): Promise<void> {
    if (!this.#held) {
      this.#held = true;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      this.#queue.push(() => {
        this.#held = true;
        resolve();
      });
    });
  }

  #release(): void {
    this.#held = false;
    // Run queued writes in order until the next tx takes the lock again.
    while (!this.#held && this.#queue.length > 0) {
      const next = this.#queue.shift()!;
      try {
        next();
      } catch (err) {
        this.#fail(err);
      }
    }
  }
}

/** The set of offsets kept for this handler, topic and partition, made on first use. */
function offsetsIn(sets: PerPartition<Set<string>>, handler: string, topic: string, partition: number): Set<string> {
  return sets.get(handler, topic, partition) ?? sets.add(handler, topic, partition, new Set());
}

function closedError(): KexoError {
  return new KexoError("journal_closed", "journal is closed", { exitCode: ExitCode.invariant });
}

function prepareAll(conn: Conn) {
  return {
    metaGet: conn.prepare("SELECT value FROM kexo_meta WHERE key = ?"),
    outboxSeq: conn.prepare("SELECT max(seq) AS m FROM kexo_outbox"),
    attemptsGet: conn.prepare('SELECT attempts, deaths, dead_letter, next_try_at FROM kexo_retries WHERE handler = ? AND topic = ? AND partition = ? AND "offset" = ?'),
    // The second deaths argument is the delta applied to an existing row.
    attemptsSet: conn.prepare(
      `INSERT INTO kexo_retries (handler, topic, partition, "offset", id, attempts, deaths, updated_at, dead_letter, next_try_at) VALUES (?, ?, ?, ?, ?, ?, max(?, 0), ?, ?, ?)
       ON CONFLICT (handler, topic, partition, "offset") DO UPDATE SET id = excluded.id, attempts = excluded.attempts,
         deaths = max(kexo_retries.deaths + ?, 0), updated_at = excluded.updated_at,
         dead_letter = coalesce(excluded.dead_letter, kexo_retries.dead_letter), next_try_at = excluded.next_try_at`,
    ),
    attemptsIn: conn.prepare('SELECT CAST("offset" AS TEXT) AS o FROM kexo_retries WHERE handler = ? AND topic = ? AND partition = ?'),
    attemptsDelete: conn.prepare('DELETE FROM kexo_retries WHERE handler = ? AND topic = ? AND partition = ? AND "offset" = ?'),
    metaSet: conn.prepare("INSERT OR REPLACE INTO kexo_meta (key, value) VALUES (?, ?)"),
    metaDelete: conn.prepare("DELETE FROM kexo_meta WHERE key = ?"),
    lookup: conn.prepare('SELECT status, result, attempts, topic, partition, "offset" FROM kexo_messages WHERE handler = ? AND id = ?'),
    steps: conn.prepare("SELECT name, result FROM kexo_steps WHERE handler = ? AND id = ?"),
    stepGet: conn.prepare("SELECT result FROM kexo_steps WHERE handler = ? AND id = ? AND name = ?"),
    progress: conn.prepare("SELECT topic, partition, next_offset FROM kexo_progress WHERE group_id = ?"),
    startedGet: conn.prepare("SELECT next_offset FROM kexo_started WHERE handler = ? AND topic = ? AND partition = ?"),
    startedSet: conn.prepare(
      `INSERT INTO kexo_started (handler, topic, partition, next_offset) VALUES (?, ?, ?, ?)
       ON CONFLICT (handler, topic, partition) DO UPDATE SET next_offset = max(next_offset, excluded.next_offset)`,
    ),
    setProgress: conn.prepare(
      `INSERT INTO kexo_progress (group_id, topic, partition, next_offset, updated_at) VALUES (?, ?, ?, ?, ?)
       ON CONFLICT (group_id, topic, partition) DO UPDATE SET next_offset = max(next_offset, excluded.next_offset), updated_at = excluded.updated_at`,
    ),
    outbox: conn.prepare(
      `INSERT INTO kexo_outbox (handler, message_id, topic, key, value, headers, partition, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
    ),
    deadLetter: conn.prepare(
      `INSERT INTO kexo_dead_letters (handler, group_id, message_id, topic, partition, "offset", key, value, headers, reason, error, error_type, attempts, failed_at, dlq_topic)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    ),
  };
}

/** Covered completions of one handler (so group) and partition waiting for the COMMIT, in parallel arrays. */
interface CoveredRun {
  handler: string;
  group: string;
  topic: string;
  partition: number;
  /** Their ids are default ids: made from these when a row is written, not kept. */
  offsets: string[];
  attempts: number[];
}

/** The lowest offset never started, per handler and partition (kexo_started). */
interface StartedEntry {
  handler: string;
  topic: string;
  partition: number;
  next: number;
  dirty: boolean;
}

/**
 * Whether kexo_started covers every record in this journal: true for a journal that was empty
 * when tracking began. A journal with records from before (schema 1) never skips a lookup.
 */
function trackStarted(conn: Conn): boolean {
  const flag = conn.prepare("SELECT value FROM kexo_meta WHERE key = 'started_tracking'").get() as { value: string } | undefined;
  if (flag) return flag.value === "1";
  const any = conn.prepare("SELECT (SELECT count(*) FROM (SELECT 1 FROM kexo_messages LIMIT 1)) + (SELECT count(*) FROM (SELECT 1 FROM kexo_steps LIMIT 1)) AS n").get() as { n: number };
  const tracked = Number(any.n) === 0;
  conn.prepare("INSERT OR REPLACE INTO kexo_meta (key, value) VALUES ('started_tracking', ?)").run(tracked ? "1" : "0");
  return tracked;
}

/** Headers as the journal stores them: JSON, each value base64, a repeated name's values as an array. */
export function encodeHeaders(headers: WireHeaders): string {
  const out: Record<string, string | string[]> = {};
  for (const [k, v] of Object.entries(headers)) setOwn(out, k, Array.isArray(v) ? v.map((b) => b.toString("base64")) : v.toString("base64"));
  return JSON.stringify(out);
}

export function decodeHeaders(json: string): WireHeaders {
  const out: WireHeaders = {};
  for (const [k, v] of Object.entries(JSON.parse(json) as Record<string, string | string[]>)) {
    setOwn<Buffer | Buffer[]>(out, k, Array.isArray(v) ? v.map((b) => Buffer.from(b, "base64")) : Buffer.from(v, "base64"));
  }
  return out;
}

/** A ctx.tx of a message while another of its own holds the journal's lock (runTx's `owner`). */
function nestedTx(): PermanentError {
  return new PermanentError(
    "ctx.tx called while another ctx.tx of this message runs (nested in its body, or not awaited): it would wait forever for the transaction the first one holds, " +
      "and every handler's writes with it. Inside a body use the db it receives; await each ctx.tx before the next",
  );
}
