// Runs one message through its handler exactly once: decode, dedup, attempts with backoff, and
// the journal record (completion or dead letter). Kafka offsets are not this file's business: it
// answers "done" (progress may pass this offset once the journal is durable) or "aborted".
import { capBytes, errorMessage, errorStack, errorType, PermanentError, PoisonError } from "../errors.ts";
import type { Attempt, EventBus, Outcome } from "../events.ts";
import { REGISTRY_FORMATS, type ResolvedHandler } from "../handlers/resolve.ts";
import type { EmitMessage, HandlerContext, KafkaMessage } from "../index.ts";
import type { AttemptClaim, FailedAttempts, Journal, LookupRow, OutboxRecord } from "../journal/journal.ts";
import type { Logger } from "../log.ts";
import type { SchemaRef } from "../registry/registry.ts";
import { RegistryUnavailableError } from "../registry/unavailable.ts";
import { fromJson, toJson } from "../journal/json.ts";
import { crashPoint } from "../debug-point.ts";
import { setOwn } from "../own.ts";
import { TIMED_OUT, within } from "../timeout.ts";
import { type DeadLetterInfo, type DeadLetterReason, deadLetterHeaders, SMALLER_STEPS, smallerDeadLetter } from "./dead-letter.ts";
import { refusedAsTooLarge } from "../kafka/produce-errors.ts";
import { allHeaders, type WireHeaders } from "../kafka/headers.ts";
import { decodePayload, messageId } from "./decode.ts";
import type { Pending, PendingDeadLetter, RetryBook } from "./retry-book.ts";
import type { CrashGuard } from "./crash-guard.ts";

export interface ProducedRecord {
  key: Buffer | null;
  value: Buffer | null;
  headers: WireHeaders;
}

export interface DeadLetterPublisher {
  /** Resolves only once the broker acknowledged the write to all in-sync replicas. */
  publish(topic: string, record: ProducedRecord): Promise<void>;
}

export interface ExecutorDeps {
  journal: Journal;
  bus: EventBus;
  log: Logger;
  dlq: DeadLetterPublisher;
  /**
   * Called with a reason while this message holds its partition up for a reason an operator must
   * see (dead-letter write failing, retrying forever), and with undefined once it is done.
   */
  blocked?(reason: string | undefined): void;
  /** Where a message waiting for its next try keeps its count while its partition is paused. */
  retries?: RetryBook;
  /**
   * Lets the partition go for `ms` (paused, fetched again later) instead of sleeping inside the
   * batch, so the other partitions keep flowing. Used only together with `retries`.
   */
  defer?(ms: number): void;
  /**
   * Without `defer`: waits `ms` for the next try in place (as sleep(), rejecting with AbortedError
   * when `signal` aborts), letting others use what the message holds meanwhile (key order's slot).
   */
  wait?(ms: number, signal: AbortSignal): Promise<void>;
  /**
   * With `wait`: waits in place until `other` settles (another copy of the message's id runs),
   * as `wait` does (letting go of what the message holds), rejecting with AbortedError when the
   * wait ends first. Without it the message waits holding its place, until ctx.signal or `drain`.
   */
  waitFor?(other: Promise<unknown>, signal: AbortSignal): Promise<void>;
  /** Only after an unclean stop (see crash-guard.ts): shared by every handler of the process. */
  guard?: CrashGuard;
  /**
   * Aborted when the drain (SIGTERM) begins, long before `signal` (ctx.signal, at the shutdown
   * timeout). A message that waits before its handler ran, for the schema registry (to decode it)
   * or its turn at the crash guard, stops waiting then and ends "aborted": unfinished, no attempt
   * used up, nothing recorded as its outcome, so its partition's progress stays below it and Kafka
   * delivers it again after the restart. No handler is cut, so the drain waits only for the
   * handlers that run and exits 0 (the shutdown timeout alone means handlers were aborted).
   * Not a wait to encode emits: that message's handler ran, and its next owner, with a journal
   * of its own, would run it again (guarantee 7), so it stays in flight until `signal`.
   */
  drain?: AbortSignal;
  /**
   * The handler's consumer's membership (kafka/membership.ts MemberFence). Past `staleMs` since
   * the coordinator last accepted one of its requests (`at`) it may have expelled the member (a
   * stalled process) and given the message's partition to another: a handler run, ctx.tx or
   * ctx.step waits for confirm() then, and is refused when it says the member is out. Once the
   * coordinator answered that the member is out (`out`), they are refused at once until it rejoined.
   */
  fence?: Fence;
}

/** See ExecutorDeps.fence. */
export interface Fence {
  /** Date.now() when the last request the coordinator accepted for the member was sent. */
  readonly at: number;
  readonly staleMs: number;
  readonly sessionTimeoutMs: number;
  /** The coordinator answered that the member is unknown or of a past generation; until it rejoined. */
  readonly out: boolean;
  /** The coordinator still knows the member in its generation (false: its partitions are someone else's). */
  confirm(): Promise<boolean>;
}

/** Whether `fence` says to ask the coordinator before anything more of the message is done or recorded. */
function stale(fence: Fence | undefined): fence is Fence {
  return fence !== undefined && (fence.out || Date.now() - fence.at > fence.staleMs);
}

/** What a dead letter of a message the process did not survive says went wrong. */
export class ProcessDiedError extends Error {
  constructor(deaths: number, attempts: number) {
    super(
      `the process died while the handler ran this message with nothing else running beside it, in ${deaths} of its ` +
        `${attempts} attempts (out of memory, a native crash, process.exit() or SIGKILL); dead-lettered so that its ` +
        `partition moves on. Check what the handler does with this value before replaying it`,
    );
    this.name = "ProcessDied";
  }
}

/** `deferred`: not done; the partition was paused and the message is fetched again later. */
export type Verdict = "done" | "aborted" | "deferred";

export class AbortedError extends Error {
  constructor() {
    super("aborted");
    this.name = "AbortedError";
  }
}

/**
 * A wait that `start` begins (given how to end it, returning how to cancel it); rejects with
 * AbortedError, the wait cancelled, as soon as `signal` (or `also`, when given) aborts.
 */
function abortable(signal: AbortSignal, also: AbortSignal | undefined, start: (done: () => void) => () => void): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted || also?.aborted) return reject(new AbortedError());
    const unlisten = () => {
      signal.removeEventListener("abort", onAbort);
      also?.removeEventListener("abort", onAbort);
    };
    const onAbort = () => {
      cancel();
      unlisten();
      reject(new AbortedError());
    };
    signal.addEventListener("abort", onAbort, { once: true });
    also?.addEventListener("abort", onAbort, { once: true });
    const cancel = start(() => {
      unlisten();
      resolve();
    });
  });
}

/** Waits `ms`; rejects with AbortedError as soon as `signal` (or `also`, when given) aborts. */
export function sleep(ms: number, signal: AbortSignal, also?: AbortSignal): Promise<void> {
  return abortable(signal, also, (done) => {
    const t = setTimeout(done, ms);
    return () => clearTimeout(t);
  });
}

/** Exponential backoff with equal jitter: half fixed, half random, capped. */
export function backoff(attempt: number, initialMs: number, maxMs: number): number {
  const exp = Math.min(maxMs, initialMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(exp / 2 + Math.random() * (exp / 2));
}

function toBuffer(x: string | Buffer | unknown): Buffer {
  if (Buffer.isBuffer(x)) return x;
  if (typeof x === "string") return Buffer.from(x);
  if (x instanceof Uint8Array) return Buffer.from(x);
  return Buffer.from(JSON.stringify(x));
}

/** An emitted header's value: null as an empty value (as a consumed null reads), not the text "null". */
function headerValue(x: unknown): Buffer {
  return x === null ? Buffer.alloc(0) : toBuffer(x);
}

/** An emitted record whose value is encoded with a registered schema once `handle` returned. */
interface PendingEncode {
  record: OutboxRecord;
  schema: SchemaRef;
  value: unknown;
}

/**
 * Runs a schema-registry call until the registry answers. An unreachable registry is not the
 * message's fault, so waiting uses up no attempts (an outage must not dead-letter a topic's worth
 * of messages as exhausted): it follows the handler's backoff, marks the consumer blocked (readyz
 * 503) meanwhile, and throws AbortedError on revoke, at the shutdown timeout, and as soon as
 * `drain` aborts (given only before the handler ran: see ExecutorDeps.drain). A registry call
 * already under way when the drain begins is not cut: it fails within the client's own retries
 * (≈ 1 s on a refused connection). Other errors pass through.
 */
async function untilRegistryAnswers<T>(
  call: () => T | Promise<T>,
  handler: ResolvedHandler,
  message: KafkaMessage,
  deps: ExecutorDeps,
  signal: AbortSignal,
  drain: AbortSignal | undefined,
  onWait: () => void,
): Promise<T> {
  let waited = false;
  try {
    for (let tries = 1; ; tries++) {
      try {
        return await call();
      } catch (err) {
        if (!(err instanceof RegistryUnavailableError)) throw err;
        const delay = backoff(tries, handler.retry.initialDelayMs, handler.retry.maxDelayMs);
        deps.log.warn("schema registry unavailable; the message waits and retries", {
          handler: handler.name, topic: message.topic, partition: message.partition, offset: message.offset,
          tries, nextTryInMs: delay, error: err.message,
        });
        waited = true;
        deps.blocked?.(err.message);
        onWait();
        await sleep(delay, signal, drain);
      }
    }
  } finally {
    if (waited) deps.blocked?.(undefined);
  }
}

/**
 * `below`: the journal's partition progress is past this offset, so the message is done (completed
 * or dead-lettered) and must not run again; it is only reported, with its recorded result.
 */
export function execute(
  handler: ResolvedHandler,
  message: KafkaMessage,
  deps: ExecutorDeps,
  signal: AbortSignal,
  below = false,
): Promise<Verdict> {
  const pending = deps.retries?.get(message.topic, message.partition, message.offset);
  const run = new Run(handler, message, deps, signal, pending);
  return deps.guard ? executeGuarded(run, deps.guard, below) : executeOnce(run, below);
}

/**
 * A message's hold on the crash guard (see crash-guard.ts), from before its decode to its end; let
 * go while it waits for its next try. Alone: a delivery with failed attempts at the unclean start.
 */
class GuardHold {
  release: (() => void) | undefined;
  constructor(readonly guard: CrashGuard, readonly alone: boolean) {}

  /**
   * False when the message was aborted while waiting, or the drain began while it waited (then it
   * ends unfinished without running: see ExecutorDeps.drain).
   */
  async enter(run: Run): Promise<boolean> {
    if (this.release) return true;
    const drain = run.deps.drain;
    const r = this.guard.enter(this.alone, run.signal, drain);
    if (!(r instanceof Promise)) {
      this.release = r;
      return true;
    }
    // Not stuck: waiting its turn. Says so on /readyz, and keeps /healthz from counting it a stall.
    const flagged = !run.blocked;
    if (flagged) run.deps.blocked?.(`waiting while a message that was running when kexo last stopped uncleanly runs alone`);
    try {
      this.release = await r;
    } finally {
      if (flagged) run.deps.blocked?.(undefined);
    }
    // Granted in the turn the drain began (another handler's consumer stopped first, and its
    // waiters' leaving let this one in): it has not started, so it ends unfinished like the rest.
    if (this.release && drain?.aborted) this.leave();
    return this.release !== undefined;
  }

  leave(): void {
    const r = this.release;
    this.release = undefined;
    r?.();
  }
}

async function executeGuarded(run: Run, guard: CrashGuard, below: boolean): Promise<Verdict> {
  // A pending entry made before any attempt ran here (the rest of a journaled backoff) keeps its turn alone.
  const alone = run.pending ? run.pending.alone === true : run.deps.journal.keptAtStart(run.handler.name, run.message);
  const hold = (run.hold = new GuardHold(guard, alone));
  if (!(await hold.enter(run))) return "aborted";
  try {
    return await executeOnce(run, below);
  } finally {
    // Alone: held until its outcome is COMMITted, so that no later claim shares that COMMIT.
    if (alone && hold.release) {
      const leave = () => hold.leave();
      run.deps.journal.commitNextTurn().then(leave, leave);
    } else hold.leave();
  }
}

/** Reported outcomes after which the message is done ("done" verdicts report one of these). */
const FINAL: ReadonlySet<Outcome> = new Set(["processed", "deduplicated", "dead_lettered"]);

/** One message's run through execute: what its helpers share. */
class Run {
  /** This message told the consumer it holds the partition up (cleared once it is done). */
  blocked: boolean;
  /** Step results by key, shared by the attempts (made on first use). */
  steps: Map<string, string> | undefined;
  /** No record can exist for this message: its first run at a never-started offset, default id. */
  unrecorded = false;
  /** ctx.tx records of the unrecorded first attempt, for finish() to drop (see Journal.runTx). */
  freshTx: unknown[][] | undefined;
  /** Only after an unclean start (see crash-guard.ts). */
  hold: GuardHold | undefined;
  /**
   * The journal may hold failed attempts of this message (kexo_retries), to clear once it is done:
   * a run with a pending entry follows a failed attempt.
   */
  attemptsKept: boolean;
  readonly started = performance.now();

  constructor(
    readonly handler: ResolvedHandler,
    readonly message: KafkaMessage,
    readonly deps: ExecutorDeps,
    readonly signal: AbortSignal,
    readonly pending: Pending | undefined,
  ) {
    this.blocked = pending?.blocked ?? false;
    this.attemptsKept = pending !== undefined;
  }

  /**
   * `attempts` attempts of this delivery failed: journaled, so that a restart goes on counting.
   * `deadLetter`: the handler gave up (see keptDeadLetter). `nextTryInMs`: the backoff before the
   * next attempt, journaled as its due time so that a restart waits the rest of it.
   */
  recordFailedAttempts(id: string, attempts: number, deadLetter?: string, nextTryInMs?: number): void {
    const due = nextTryInMs === undefined ? undefined : Date.now() + nextTryInMs;
    this.deps.journal.recordFailedAttempts(this.handler.name, this.message, id, attempts, 0, deadLetter, due);
    this.attemptsKept = true;
  }

  /**
   * Drops the journal's count of failed attempts of this delivery, if it may have one (`always`:
   * whether or not this run knows of one). Called before the write that records the outcome (see
   * Journal.clearFailedAttempts).
   */
  clearAttempts(always = false): void {
    if (!this.attemptsKept && !always) return;
    this.attemptsKept = false;
    this.deps.journal.clearFailedAttempts(this.handler.name, this.message);
  }

  /** Reports an outcome; a final one also ends what the message held (retry entry, readiness). */
  report(id: string, outcome: Outcome, result?: unknown): void {
    const { handler, message, deps } = this;
    deps.bus.emit("message.handled", {
      handler: handler.name,
      topic: message.topic,
      partition: message.partition,
      offset: message.offset,
      id,
      outcome,
      seconds: (performance.now() - this.started) / 1000,
      result,
    });
    if (!FINAL.has(outcome)) return;
    this.clearAttempts();
    if (this.pending) deps.retries?.delete(message.topic, message.partition, message.offset);
    if (this.blocked) deps.blocked?.(undefined);
  }
}

/** The partition waits on this message: /readyz says why, after the handler and the message's place. */
function block(run: Run, why: string): void {
  const { handler, message } = run;
  run.blocked = true;
  run.deps.blocked?.(`${handler.name} ${message.topic}/${message.partition}@${message.offset}: ${why}`);
}

/**
 * Waits `ms` before the message's next try: by pausing its partition (the book remembers where
 * it was) when the consumer offers that, else by sleeping in place.
 */
async function waitForNextTry(run: Run, ms: number, next: Omit<Pending, "notBefore" | "blocked">): Promise<"continue" | Verdict> {
  const { deps, message } = run;
  // Nothing waits for a message's backoff: the next attempt takes the guard again.
  run.hold?.leave();
  if (deps.retries && deps.defer) {
    deps.retries.set(message.topic, message.partition, message.offset, { ...next, notBefore: Date.now() + ms, blocked: run.blocked });
    deps.defer(ms);
    return "deferred";
  }
  try {
    await (deps.wait ?? sleep)(ms, run.signal);
    return "continue";
  } catch {
    return "aborted";
  }
}

/**
 * A delivery met again with failed attempts journaled (a restart, a new owner on a shared journal,
 * a partition that came back): it waits the rest of the backoff its last failure set, as a live
 * retry waits (paused partition, or its lane's wait), before attempt `attempt`. Capped at
 * maxDelayMs from now, so that a clock that jumped (or another instance's) never parks it longer.
 */
async function restWait(run: Run, id: string, kept: FailedAttempts, attempt: number, unlimited: boolean): Promise<"continue" | Verdict> {
  if (kept.nextTryAt === undefined) return "continue";
  const { handler, message, deps } = run;
  const ms = Math.min(kept.nextTryAt - Date.now(), handler.retry.maxDelayMs);
  if (!(ms > 0)) return "continue";
  deps.log.info("message failed before; waiting the rest of its backoff", {
    handler: handler.name, id, topic: message.topic, partition: message.partition, offset: message.offset,
    failedAttempts: kept.attempts, attempt, nextAttemptInMs: ms,
  });
  if (unlimited && kept.attempts >= handler.retry.attempts) {
    block(run, `retrying forever (deadLetter: false), ${kept.attempts} attempts so far; next try at ${new Date(Date.now() + ms).toISOString()}`);
  }
  // No attempt ran here yet: when deferred, its next run keeps this one's turn alone (crash-guard.ts).
  return waitForNextTry(run, ms, run.hold?.alone ? { attempt, alone: true } : { attempt });
}

/** The journal's entry is a dead letter of this very delivery (a replayed copy arrives elsewhere). */
function deadLetteredHere(done: LookupRow | undefined, message: KafkaMessage): boolean {
  return done?.status === "dead_lettered" && done.topic === message.topic && done.partition === message.partition &&
    String(done.offset) === message.offset;
}

async function executeOnce(run: Run, below: boolean): Promise<Verdict> {
  const { handler, message, deps, signal, pending } = run;
  const { journal, bus } = deps;

  if (pending && !below) {
    // Fetched again before its time (the partition came back after a rebalance): wait the rest.
    const early = pending.notBefore - Date.now();
    if (early > 0) {
      const w = await waitForNextTry(run, early, pending);
      if (w !== "continue") return w;
    }
    // The handler gave up already; only the dead-letter write is left (it never runs again).
    if (pending.deadLetter) return deadLetter(run, pending.deadLetter);
  }

  // Before anything can be recorded for this message: from here on its offset counts as started.
  const fresh = journal.start(handler.name, message.topic, message.partition, message.offset);
  let payload: unknown;
  let id = messageId(message, handler.groupId, undefined);
  try {
    // JSON and raw decode synchronously (the hot path). Registry formats may wait for the registry,
    // except below the progress: the message is done, no need to wait to report it.
    if (!REGISTRY_FORMATS.includes(handler.format)) payload = decodePayload(handler, message);
    else {
      const decode = () => decodePayload(handler, message);
      payload = below ? await decode() : await untilRegistryAnswers(decode, handler, message, deps, signal, deps.drain, () => run.report(id, "retried"));
    }
    // messageId takes a kexo-id header only when it is not empty (a null value reads as empty).
    if (handler.def.key && !message.headers["kexo-id"]?.length) {
      let key: unknown;
      try {
        key = handler.def.key(payload as never, message);
      } catch (err) {
        throw new PoisonError(`key() threw: ${errorMessage(err)}`, { cause: err });
      }
      if (typeof key !== "string" || key.length === 0) {
        throw new PoisonError(`key() returned ${JSON.stringify(key)}, expected a non-empty string`);
      }
      id = messageId(message, handler.groupId, key);
    }
  } catch (err) {
    if (err instanceof AbortedError) return "aborted";
    if (below) {
      run.report(id, "deduplicated");
      return "done";
    }
    // Dead-lettered already, at this very delivery: order "key" finishes messages above the
    // committed offset, and after a crash Kafka delivers them again (as deadHere below).
    if (!fresh) {
      await journal.settled();
      if (deadLetteredHere(journal.lookup(handler.name, id), message)) {
        run.report(id, "deduplicated");
        return "done";
      }
    }
    const before = pending ? undefined : journal.failedAttempts(handler.name, message);
    if (before?.deadLetter !== undefined) return deadLetter(run, fromKept(before.deadLetter, id));
    // Attempts that failed before a restart (a redeploy that changed the schema, say) count too.
    const attempts = pending?.attempt ?? (before?.attempts ?? 0) + 1;
    return deadLetter(run, failure(id, "poison", err, attempts));
  }

  // Fast path: the default dedup id of an offset never started before has no record to find.
  const keyed = handler.def.key !== undefined || (message.headers["kexo-id"]?.length ?? 0) > 0;
  const unrecorded = (run.unrecorded = fresh && !below && !keyed);
  // Another copy of a keyed id may be running (see idsInFlight): this one waits for it.
  let leave: (() => void) | undefined;
  if (keyed && !below && !(leave = await turnOfId(run, id))) return "aborted";
  try {
    if (!unrecorded) await journal.settled();
    const done = unrecorded ? undefined : journal.lookup(handler.name, id, keyed ? undefined : message);
    // A dead letter of this very delivery is done too (order "key" finishes messages above the
    // committed offset, which Kafka delivers again after a crash); a replayed dead letter arrives
    // at another offset and runs again.
    const deadHere = deadLetteredHere(done, message);
    if (done?.status === "completed" || below || deadHere) {
      if (done?.status !== "completed") {
        run.report(id, "deduplicated");
        return "done";
      }
      const result = done.result === null ? undefined : JSON.parse(done.result);
      deps.log.debug("message deduplicated", { handler: handler.name, id, offset: message.offset, result });
      run.report(id, "deduplicated", result);
      return "done";
    }

    let first = pending?.attempt ?? 1;
    if (!pending && !unrecorded) {
      // A restart (or a new owner sharing this journal) delivers the same offset again and goes on
      // counting where the last run stopped; an attempt cut by the crash counts again, and the last
      // one is never skipped, unless the process died in it (see crash-guard.ts). A replay or another
      // copy of the id is another delivery: it starts at 1.
      const failedBefore = journal.failedAttempts(handler.name, message);
      if (failedBefore !== undefined) {
        run.attemptsKept = true;
        // The handler gave up before the restart; only the dead letter's write was left.
        if (failedBefore.deadLetter !== undefined) return deadLetter(run, fromKept(failedBefore.deadLetter, id));
        const { attempts, deaths } = failedBefore;
        const unlimited = handler.deadLetterTopic(message.topic) === false;
        if (!unlimited && deaths > 0 && attempts >= handler.retry.attempts) {
          return deadLetter(run, failure(id, "exhausted", new ProcessDiedError(deaths, attempts), attempts));
        }
        first = unlimited ? attempts + 1 : Math.min(attempts + 1, handler.retry.attempts);
        if (deaths > 0) {
          deps.log.warn("the process died while this message ran alone; it runs again alone, and is dead-lettered if that goes on", {
            handler: handler.name, id, topic: message.topic, partition: message.partition, offset: message.offset,
            deaths, attempt: first, attempts: handler.retry.attempts,
          });
        }
        const w = await restWait(run, id, failedBefore, first, unlimited);
        if (w !== "continue") return w;
      }
    }
    const hold = run.hold;
    const tracked = hold !== undefined && (hold.alone || hold.guard.track(handler.name, message.topic, message.partition));
    for (let attempt = first; ; attempt++) {
      if (signal.aborted) return "aborted";
      // A stalled process woke, or the coordinator said the member is out: nothing starts before
      // the coordinator says the partition is still ours.
      if (stale(deps.fence) && !(await deps.fence.confirm())) return "aborted";
      let claim: AttemptClaim | undefined;
      if (hold) {
        if (!(await hold.enter(run))) return "aborted";
        if (tracked) {
          claim = await journal.claimAttempt(handler.name, message, id, attempt, hold.alone);
          run.attemptsKept = true;
        }
      }
      const ctx = new Context(run, id, attempt, !keyed);
      // slot: liveness's, set from the start so the object keeps one shape.
      const attemptEvent: Attempt = { handler: handler.name, id, slot: -1 };
      bus.emit("message.started", attemptEvent);
      let result: unknown;
      let failed: unknown;
      let ok = false;
      try {
        result = await handler.def.handle(payload as never, ctx);
        ok = true;
      } catch (err) {
        failed = err;
      } finally {
        ctx.ended = true;
        try {
          bus.emit("message.finished", attemptEvent);
        } finally {
          // The process survived it: a failure counts as one, success or an abort not at all.
          claim?.settle(!ok && !signal.aborted && !ctx.refused);
        }
      }
      if (ok && ctx.refused) {
        // The handler caught the refusal of a ctx call made after its signal aborted (or its
        // member was fenced) and returned anyway: what it meant to record is missing, so this run
        // records no outcome either.
        run.report(id, "failed");
        return "aborted";
      }
      if (ok) {
        const { outbox, encodes } = ctx.emitted();
        // emit() is synchronous, so registry encoding happens here, before the journal records the
        // outbox: it stores the encoded bytes, and `handle` is not run again while the registry is away.
        // The drain does not end this wait (no `drain`): the handler ran, so the message is in flight.
        try {
          for (const e of encodes) {
            e.record.value = await untilRegistryAnswers(() => handler.registry!.encode(e.schema, e.value), handler, message, deps, signal, undefined, () => {});
          }
        } catch (err) {
          if (err instanceof AbortedError) {
            // Revoke or shutdown timeout while the registry was away (not the drain's beginning: with
            // separate journals the partition's next owner would run the handler again, so the
            // drain waits for this message as for a running handler).
            // The handler ran, but nothing of this attempt is recorded as the message's outcome, so
            // ending it unfinished is safe: its partition's progress stays below it (nothing after
            // it is committed past it either) and the next run on this journal (or a shared one)
            // runs `handle` again. What the attempt recorded is reused then, not done twice: its ctx.step results and ctx.tx
            // records are journaled (with the tx's writes, in the journal's next COMMIT, which the
            // drain makes) under the message's id, and journal.start() marked the offset started,
            // so the rerun looks them up. Its emits were only in memory: the rerun emits them again
            // and they reach the outbox once, with its completion. The claim above was settled as
            // survived, so no attempt is used up.
            run.report(id, "failed");
            return "aborted";
          }
          return deadLetter(run, failure(id, "permanent", err, attempt));
        }
        let json: string;
        try {
          json = toJson(result, "the handler's result");
        } catch (err) {
          return deadLetter(run, failure(id, "permanent", err, attempt));
        }
        // A default id in partition/topic order is looked up only below the partition's progress,
        // which then says "completed": with no result to return and nothing emitted, that progress
        // (same COMMIT) can stand for the row. Keyed ids, key order (completes out of order),
        // results, emits and Kafka transactions keep their row.
        const byProgress = !keyed && handler.order !== "key" && json === "null" && outbox.length === 0 && !handler.kafkaTransactions;
        run.clearAttempts();
        journal.finish({
          handler: handler.name, id, status: "completed", topic: message.topic, partition: message.partition,
          offset: message.offset, attempts: attempt, result: json, coveredBy: byProgress ? handler.groupId : undefined,
        }, outbox, run.freshTx);
        run.report(id, "processed");
        return "done";
      }
      if (signal.aborted || ctx.refused) {
        run.report(id, "failed");
        return "aborted";
      }
      if (failed instanceof PermanentError || failed instanceof PoisonError) {
        return deadLetter(run, failure(id, failed instanceof PoisonError ? "poison" : "permanent", failed, attempt));
      }
      const unlimited = handler.deadLetterTopic(message.topic) === false;
      if (attempt >= handler.retry.attempts && !unlimited) {
        return deadLetter(run, failure(id, "exhausted", failed, attempt));
      }
      if (unlimited && attempt >= handler.retry.attempts) {
        block(run, `retrying forever (deadLetter: false), ` +
          `${attempt} attempts so far: ${errorMessage(failed)}`);
      }
      const delay = backoff(attempt, handler.retry.initialDelayMs, handler.retry.maxDelayMs);
      deps.log.warn("handler failed; retrying", {
        handler: handler.name, id, topic: message.topic, partition: message.partition, offset: message.offset,
        attempt, nextAttemptInMs: delay, error: failed,
      });
      run.recordFailedAttempts(id, attempt, undefined, delay);
      run.report(id, "retried");
      const w = await waitForNextTry(run, delay, { attempt: attempt + 1 });
      if (w !== "continue") return w;
    }
  } finally {
    leave?.();
  }
}

/**
 * Keyed ids (business key, header kexo-id) in flight, per journal and handler. Other copies of an
 * id than the delivery itself exist: a record an outbox published again (after a crash between
 * its acknowledgement and its delete) or that two upstream runs emitted, which may land on another
 * partition (another producer's copies; kexo's own outbox places a copy where its first went). Two copies run side by side would both miss the other's
 * completion at their lookup, and a ctx.tx of the later one, after the first completed (its tx
 * record then gives way to the completion), would apply its writes a second time.
 */
const idsInFlight = new WeakMap<Journal, Map<string, Promise<void>>>();

/**
 * Waits until no other run of this handler has `id` in flight, then takes it: the returned
 * function lets it go. Undefined when the wait ended first (ctx.signal, the drain, or the lane's
 * own wait ending: key order waits without its slot, see ExecutorDeps.waitFor); the message then
 * ends unfinished ("aborted"), and its lookup when it comes again finds what the other run did.
 */
async function turnOfId(run: Run, id: string): Promise<(() => void) | undefined> {
  const { deps, handler, message } = run;
  let runs = idsInFlight.get(deps.journal);
  if (!runs) idsInFlight.set(deps.journal, (runs = new Map()));
  const k = `${handler.name}\0${id}`;
  for (let other = runs.get(k); other !== undefined; other = runs.get(k)) {
    deps.log.debug("another copy of this id is running; waiting for it", { handler: handler.name, id, topic: message.topic, partition: message.partition, offset: message.offset });
    // Nothing runs while it waits: the other copy (maybe waiting for its next try) may need the guard alone.
    run.hold?.leave();
    try {
      await (deps.waitFor ? deps.waitFor(other, run.signal) : settledOrAborted(other, run.signal, deps.drain));
    } catch {
      return undefined;
    }
  }
  let end!: () => void;
  runs.set(k, new Promise<void>((resolve) => (end = resolve)));
  return () => {
    runs.delete(k);
    end();
  };
}

/** Resolves once `p` settled; rejects with AbortedError as soon as `signal` (or `also`) aborts. */
export function settledOrAborted(p: Promise<unknown>, signal: AbortSignal, also?: AbortSignal): Promise<void> {
  return abortable(signal, also, (done) => {
    p.then(done, done);
    return () => {};
  });
}

const NO_OUTBOX: readonly never[] = Object.freeze([]);

/**
 * The handler's `ctx`. One object per attempt; `step`, `tx`, `emit` and `log` are made on first
 * use (getters, so `const { tx } = ctx` works), as is what only some handlers need: most use one
 * or two of them, and every allocation per message shows in the throughput.
 */
class Context implements HandlerContext {
  readonly message: KafkaMessage;
  readonly signal: AbortSignal;
  #run: Run;
  #defaultId: boolean;
  #seen: Map<string, number> | undefined;
  #txCount = 0;
  /** The attempt's handle() returned or threw: what the ctx records now would belong to no attempt. */
  ended = false;
  /** A ctx.tx or ctx.step was refused: the signal had aborted, or the member was fenced (see #refuse). */
  refused = false;
  #outbox: OutboxRecord[] | undefined;
  #encodes: PendingEncode[] | undefined;
  #log: HandlerContext["log"] | undefined;
  #step: HandlerContext["step"] | undefined;
  #tx: HandlerContext["tx"] | undefined;
  #emit: HandlerContext["emit"] | undefined;

  constructor(
    run: Run,
    readonly id: string,
    readonly attempt: number,
    /** `id` is the message's default id (Journal.runTx's `defaultId`). */
    defaultId: boolean,
  ) {
    this.#run = run;
    this.#defaultId = defaultId;
    this.message = run.message;
    this.signal = run.signal;
  }

  /** What the attempt emitted: outbox records, and those whose value waits for the registry. */
  emitted(): { outbox: OutboxRecord[]; encodes: readonly PendingEncode[] } {
    return { outbox: this.#outbox ?? (NO_OUTBOX as never[]), encodes: this.#encodes ?? NO_OUTBOX };
  }

  get log(): HandlerContext["log"] {
    const run = this.#run;
    return (this.#log ??= run.deps.log.child({ handler: run.handler.name, id: this.id, attempt: this.attempt }));
  }

  get step(): HandlerContext["step"] {
    return (this.#step ??= async <R>(name: string, fn: () => R | Promise<R>): Promise<R> => {
      if (this.ended) throw afterEnd(`ctx.step("${name}")`, this.id);
      if (this.signal.aborted) throw this.#refuse(`ctx.step("${name}")`);
      const run = this.#run;
      if (stale(run.deps.fence)) await this.#confirm(run.deps.fence, `ctx.step("${name}")`);
      const key = this.#occurrence(`step:${name}`);
      const steps = (run.steps ??= run.unrecorded ? new Map() : run.deps.journal.steps(run.handler.name, this.id));
      const hit = steps.get(key);
      if (hit !== undefined) return fromJson<R>(hit);
      const result = await fn();
      const json = toJson(result, `ctx.step("${name}") result`);
      steps.set(key, json);
      run.deps.journal.recordStep(run.handler.name, this.id, key, json);
      return fromJson<R>(json);
    });
  }

  get tx(): HandlerContext["tx"] {
    return (this.#tx ??= <R>(fn: (db: import("../index.ts").HandlerDb) => Promise<R>): Promise<R> => {
      if (this.ended) return Promise.reject(afterEnd("ctx.tx", this.id));
      if (this.signal.aborted) return Promise.reject(this.#refuse("ctx.tx"));
      const run = this.#run;
      if (stale(run.deps.fence)) return this.#confirm(run.deps.fence, "ctx.tx").then(() => this.tx(fn));
      const n = ++this.#txCount;
      // Nothing is recorded for the first attempt at a fresh offset: no lookup (see runTx).
      const fresh = run.unrecorded && this.attempt === 1 ? (run.freshTx ??= []) : undefined;
      return run.deps.journal.runTx(run.handler.name, this.id, n === 1 ? "tx:1" : `tx:${n}`, fn, fresh, this.#defaultId, this);
    });
  }

  get emit(): HandlerContext["emit"] {
    return (this.#emit ??= (topic: string, msg: EmitMessage): void => {
      const handler = this.#run.handler;
      if (this.ended) throw afterEnd(`ctx.emit to ${String(topic)}`, this.id);
      if (typeof topic !== "string" || topic.length === 0) throw new TypeError("ctx.emit: topic must be a non-empty string");
      if (msg.partition != null && !(Number.isInteger(msg.partition) && msg.partition >= 0)) {
        throw new PermanentError(`ctx.emit to ${topic}: partition must be a whole number from 0 (got ${String(msg.partition)}); leave it out to let the key choose`);
      }
      const outbox = (this.#outbox ??= []);
      const headers: WireHeaders = {};
      for (const [k, v] of Object.entries(msg.headers ?? {})) {
        if (v === undefined) continue;
        setOwn<Buffer | Buffer[]>(headers, k, Array.isArray(v) ? v.filter((x) => x !== undefined).map(headerValue) : headerValue(v));
      }
      headers["kexo-id"] = Buffer.from(`${this.id}:emit:${outbox.length + 1}`);
      if (msg.schema && !handler.registry) {
        throw new PermanentError(`ctx.emit to ${topic} with a schema needs a schema registry: pass --schema-registry URL or set KEXO_SCHEMA_REGISTRY`);
      }
      const record: OutboxRecord = {
        handler: handler.name,
        messageId: this.id,
        topic,
        key: msg.key === undefined || msg.key === null ? null : toBuffer(msg.key),
        value: msg.value === null || msg.schema ? null : toBuffer(msg.value),
        headers,
        partition: msg.partition,
      };
      if (msg.schema) (this.#encodes ??= []).push({ record, schema: msg.schema, value: msg.value });
      outbox.push(record);
    });
  }

  /**
   * A ctx.tx or ctx.step called after ctx.signal aborted, or while the member is fenced (`fenced`).
   * The signal aborts when kexo gives the message up: past the rebalance grace (its partition's
   * next owner, maybe with a journal of its own, runs it again) or the shutdown timeout (the next
   * start runs it). What this run recorded from then on would land beside that run's: effects
   * twice. So it records nothing more.
   */
  #refuse(call: string, fenced?: { silentMs: number; sessionTimeoutMs: number }): Error {
    this.refused = true;
    const why = !fenced
      ? "its ctx.signal aborted (its partition was revoked past the rebalance grace, or the shutdown timeout ran out)"
      : fenced.silentMs > fenced.sessionTimeoutMs
      ? `its consumer had no heartbeat accepted for ${fenced.silentMs} ms, longer than the session timeout (${fenced.sessionTimeoutMs} ms) allows, ` +
        "and the coordinator no longer knows it (the process stalled?): the message's partition went to another member"
      : "the coordinator answered that its consumer is no longer a member of the group's generation (dropped from a rebalance it " +
        "did not rejoin within the rebalance timeout, a long message holding it?): the message's partition may be another member's until it rejoined";
    return new AbortedCallError(
      `${call} refused for message ${this.id} (${this.message.topic}[${this.message.partition}]@${this.message.offset}): ${why}, ` +
        `so another run handles the message and this one records nothing more. ${fenced ? "" : "Stop the handler's work when ctx.signal aborts"}`.trimEnd(),
    );
  }

  /**
   * A ctx call while the member's fence is stale (ExecutorDeps.fence): resolves once the
   * coordinator confirmed the member, throws the refusal when it did not (or the signal aborted,
   * or the attempt ended, meanwhile).
   */
  async #confirm(fence: Fence, call: string): Promise<void> {
    const silentMs = Date.now() - fence.at;
    const member = await fence.confirm();
    if (!member) throw this.#refuse(call, { silentMs, sessionTimeoutMs: fence.sessionTimeoutMs });
    if (this.signal.aborted) throw this.#refuse(call);
    if (this.ended) throw afterEnd(call, this.id);
  }

  /** The n-th call of a name in one attempt is `name`, `name#2`, …: a loop of steps keeps stable keys. */
  #occurrence(name: string): string {
    const seen = (this.#seen ??= new Map());
    const n = (seen.get(name) ?? 0) + 1;
    seen.set(name, n);
    return n === 1 ? name : `${name}#${n}`;
  }
}

/** A ctx.tx or ctx.step after the attempt's signal aborted (Context.#refuse); named as fetch() names its aborts. */
class AbortedCallError extends Error {
  override name = "AbortError";
}

/** A ctx call after its attempt ended (a timer or a promise left running): it would record nothing, or outside the message's record. */
function afterEnd(call: string, id: string): Error {
  return new Error(
    `${call} after handle() returned (message ${id}): it belongs to no attempt any more, so it is refused. ` +
      "Await everything handle() starts before it returns",
  );
}

/** An error's text as the journal and the logs keep it: a 1 MB message is not worth 1 MB per row. */
const MAX_KEPT_ERROR_BYTES = 64 * 1024;
const capOptional = (s: string | undefined) => (s === undefined ? undefined : capBytes(s, MAX_KEPT_ERROR_BYTES));

function failure(id: string, reason: DeadLetterReason, err: unknown, attempts: number): PendingDeadLetter {
  return {
    // Capped for the journal row and the log lines (the dead letter's headers cap tighter).
    id, reason, error: capBytes(errorMessage(err), MAX_KEPT_ERROR_BYTES), errorType: err instanceof PoisonError ? "PoisonError" : errorType(err),
    stack: capOptional(errorStack(err)), attempts, failedAt: new Date(), tries: 0,
  };
}

/** How long a dead-letter write may go unacknowledged before its partition lets go of the batch. */
const DEAD_LETTER_ACK_WAIT_MS = 5000;
/** How often a partition that let go checks its unacknowledged dead-letter write again. */
const DEAD_LETTER_RECHECK_MS = 1000;

/** Why the handler gave up, as kexo_retries.dead_letter keeps it (the id is the row's). */
function keptDeadLetter(f: PendingDeadLetter): string {
  const { reason, error, errorType, stack, attempts, failedAt } = f;
  return JSON.stringify({ reason, error, errorType, stack, attempts, failedAt: failedAt.toISOString() });
}

function fromKept(json: string, id: string): PendingDeadLetter {
  const kept = JSON.parse(json) as Omit<PendingDeadLetter, "id" | "failedAt" | "tries"> & { failedAt: string };
  return { ...kept, id, failedAt: new Date(kept.failedAt), tries: 0, journaled: true };
}

/**
 * Writes the dead letter, then journals it; "done" only once the broker acknowledged the write,
 * so the offset never passes a dead letter that is not safe in Kafka. While the write fails the
 * partition waits (deferred) and tries again, never running the handler again.
 */
async function deadLetter(run: Run, f: PendingDeadLetter): Promise<Verdict> {
  const { handler, message, deps } = run;
  const { id, reason, error, attempts } = f;
  const where = { handler: handler.name, id, topic: message.topic, partition: message.partition, offset: message.offset };
  const dlqTopic = handler.deadLetterTopic(message.topic);
  if (dlqTopic === false) {
    // deadLetter: false means block and retry: the handler runs again after maxDelayMs.
    deps.log.error("message can not be handled and dead letters are off; the partition is blocked and retries", { ...where, reason, error, attempts });
    block(run, `${reason} (deadLetter: false, retrying): ${error}`);
    run.recordFailedAttempts(id, attempts, undefined, handler.retry.maxDelayMs);
    run.report(id, "retried");
    const w = await waitForNextTry(run, handler.retry.maxDelayMs, { attempt: attempts + 1 });
    return w === "continue" ? "aborted" : w;
  }
  const original = allHeaders(message);
  const info: DeadLetterInfo = {
    topic: message.topic, partition: message.partition, offset: message.offset, timestamp: message.timestamp,
    groupId: handler.groupId, handler: handler.name, reason, error, errorType: f.errorType, stack: f.stack, attempts, failedAt: f.failedAt,
  };
  if (!f.journaled) {
    // The handler has given up for good: journaled (and COMMITted) before the write, which may fail
    // or hang for long, so that a process that dies meanwhile only writes the dead letter at its
    // restart and never runs the handler again (a PermanentError's side effects, used-up attempts).
    run.recordFailedAttempts(id, attempts, keptDeadLetter(f));
    f = { ...f, journaled: true };
    await deps.journal.commitNextTurn();
  }
  const whole: ProducedRecord = { key: message.key, value: message.value, headers: deadLetterHeaders(original, info) };
  let { tries, writing, smaller = 0 } = f;
  let record = smaller === 0 ? whole : smallerDeadLetter(whole, original, info, smaller);
  for (;;) {
    const write = writing ?? deps.dlq.publish(dlqTopic, record);
    const rechecking = writing !== undefined;
    writing = undefined;
    try {
      // A broker that answers slowly (not at all, until kafkajs's request timeout) would hold up
      // every partition of the handler: kafkajs fetches the next round only once each batch of the
      // last one returned. So past DEAD_LETTER_ACK_WAIT_MS the partition lets go and checks the same
      // write again later (never a second one while it may still land).
      if ((await within(write, rechecking ? 0 : DEAD_LETTER_ACK_WAIT_MS)) === TIMED_OUT) {
        if (!rechecking) {
          deps.log.warn("dead-letter write not acknowledged yet; the partition waits for the broker's answer", {
            ...where, dlqTopic, reason, waitedMs: DEAD_LETTER_ACK_WAIT_MS,
          });
          block(run, `dead-letter write to ${dlqTopic} not acknowledged after ${DEAD_LETTER_ACK_WAIT_MS} ms; ` +
            `the partition waits for the broker's answer`);
        }
        const w = await waitForNextTry(run, DEAD_LETTER_RECHECK_MS, { attempt: attempts, deadLetter: { ...f, tries, smaller, writing: write } });
        if (w !== "continue") return w;
        writing = write;
        continue;
      }
      break;
    } catch (publishErr) {
      tries++;
      if (refusedAsTooLarge(publishErr) && smaller < SMALLER_STEPS) {
        // At once, smaller: waiting would not make the broker take it.
        record = smallerDeadLetter(whole, original, info, ++smaller);
        deps.log.warn(`the broker refused the dead letter as too large; writing it again with ${smaller === 1 ? "short error texts" : "its value (and a large key or headers) left out, kept in the journal"}`, {
          ...where, dlqTopic, reason, tries, error: publishErr,
        });
        continue;
      }
      const wait = backoff(tries, 200, 10_000);
      deps.log.error("dead-letter write failed; the partition waits and retries", {
        ...where, dlqTopic, reason, tries, nextTryInMs: wait, error: publishErr,
      });
      block(run, `dead-letter write to ${dlqTopic} failed (${tries} tries): ${errorMessage(publishErr)}; ` +
        `the partition waits until ${dlqTopic} can be written`);
      const w = await waitForNextTry(run, wait, { attempt: attempts, deadLetter: { ...f, tries, smaller, writing: undefined } });
      if (w !== "continue") return w;
    }
  }
  crashPoint("dlq.published");
  // Poison found before the count was looked up may leave one: dead letters are rare, so always.
  run.clearAttempts(true);
  deps.journal.deadLetter(
    {
      handler: handler.name, groupId: handler.groupId, messageId: id, topic: message.topic, partition: message.partition,
      offset: message.offset, key: message.key, value: message.value, headers: original,
      reason, error, errorType: f.errorType, attempts, failedAt: f.failedAt.toISOString(), dlqTopic,
    },
    {
      handler: handler.name, id, status: "dead_lettered", topic: message.topic, partition: message.partition,
      offset: message.offset, attempts, error: `${reason}: ${error}`,
    },
  );
  deps.log.warn("message dead-lettered", { ...where, dlqTopic, reason, attempts, error });
  run.report(id, "dead_lettered");
  return "done";
}
