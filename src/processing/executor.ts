// Runs one message through its handler exactly once: decode, dedup, attempts with backoff, and
// the journal record (completion or dead letter). Kafka offsets are not this file's business: it
// answers "done" (progress may pass this offset once the journal is durable) or "aborted".
import { errorMessage, errorType, PermanentError, PoisonError } from "../errors.ts";
import type { EventBus, Outcome } from "../events.ts";
import type { ResolvedHandler } from "../handlers/resolve.ts";
import type { EmitMessage, HandlerContext, KafkaMessage } from "../index.ts";
import type { Journal, OutboxRecord } from "../journal/journal.ts";
import type { Logger } from "../log.ts";
import { toJson } from "../journal/json.ts";
import { type DeadLetterReason, deadLetterHeaders } from "./dead-letter.ts";
import { decodePayload, messageId } from "./decode.ts";

export interface ProducedRecord {
  key: Buffer | null;
  value: Buffer | null;
  headers: Record<string, Buffer>;
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
  /** Called with a reason while a dead-letter write keeps failing, and with undefined once it works. */
  blocked?(reason: string | undefined): void;
}

export type Verdict = "done" | "aborted";

export class AbortedError extends Error {
  constructor() {
    super("aborted");
    this.name = "AbortedError";
  }
}

export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(new AbortedError());
    const onAbort = () => {
      clearTimeout(t);
      reject(new AbortedError());
    };
    const t = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal.addEventListener("abort", onAbort, { once: true });
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

/**
 * `below`: the journal's partition progress is past this offset, so the message is done (completed
 * or dead-lettered) and must not run again; it is only reported, with its recorded result.
 */
export async function execute(
  handler: ResolvedHandler,
  message: KafkaMessage,
  deps: ExecutorDeps,
  signal: AbortSignal,
  below = false,
): Promise<Verdict> {
  const { journal, bus } = deps;
  const started = performance.now();
  const report = (id: string, outcome: Outcome, result?: unknown) =>
    bus.emit("message.handled", {
      handler: handler.name,
      topic: message.topic,
      partition: message.partition,
      offset: message.offset,
      id,
      outcome,
      seconds: (performance.now() - started) / 1000,
      result,
    });

  // Before anything can be recorded for this message: from here on its offset counts as started.
  const fresh = journal.start(handler.name, message.topic, message.partition, message.offset);
  let payload: unknown;
  let id = messageId(message, handler.groupId, undefined);
  try {
    payload = decodePayload(handler, message);
    if (handler.def.key && message.headers["kexo-id"] === undefined) {
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
    if (below) {
      report(id, "deduplicated");
      return "done";
    }
    return deadLetter(handler, message, deps, signal, id, "poison", err, 1, report);
  }

  // Fast path: the default dedup id of an offset never started before has no record to find.
  const keyed = handler.def.key !== undefined || (message.headers["kexo-id"]?.length ?? 0) > 0;
  const unrecorded = fresh && !below && !keyed;
  if (!unrecorded) await journal.settled();
  const done = unrecorded ? undefined : journal.lookup(handler.name, id);
  if (done?.status === "completed" || below) {
    if (done?.status !== "completed") {
      report(id, "deduplicated");
      return "done";
    }
    const result = done.result === null ? undefined : JSON.parse(done.result);
    deps.log.debug("message deduplicated", { handler: handler.name, id, offset: message.offset, result });
    report(id, "deduplicated", result);
    return "done";
  }

  let steps: Map<string, string> | undefined = unrecorded ? new Map() : undefined;
  for (let attempt = 1; ; attempt++) {
    if (signal.aborted) return "aborted";
    const outbox: OutboxRecord[] = [];
    const ctx = createContext(handler, message, deps, signal, id, attempt, outbox, () => (steps ??= journal.steps(handler.name, id)), unrecorded && attempt === 1);
    bus.emit("message.started", { handler: handler.name });
    let result: unknown;
    let failure: unknown;
    let ok = false;
    try {
      result = await handler.def.handle(payload as never, ctx);
      ok = true;
    } catch (err) {
      failure = err;
    } finally {
      bus.emit("message.finished", { handler: handler.name });
    }
    if (ok) {
      let json: string;
      try {
        json = toJson(result, "the handler's result");
      } catch (err) {
        return deadLetter(handler, message, deps, signal, id, "permanent", err, attempt, report);
      }
      journal.finish({
        handler: handler.name, id, status: "completed", topic: message.topic, partition: message.partition,
        offset: message.offset, attempts: attempt, result: json,
      }, outbox);
      report(id, "processed");
      return "done";
    }
    if (signal.aborted) {
      report(id, "failed");
      return "aborted";
    }
    if (failure instanceof PermanentError || failure instanceof PoisonError) {
      const reason = failure instanceof PoisonError ? "poison" : "permanent";
      return deadLetter(handler, message, deps, signal, id, reason, failure, attempt, report);
    }
    const unlimited = handler.deadLetterTopic(message.topic) === false;
    if (attempt >= handler.retry.attempts && !unlimited) {
      return deadLetter(handler, message, deps, signal, id, "exhausted", failure, attempt, report);
    }
    const delay = backoff(attempt, handler.retry.initialDelayMs, handler.retry.maxDelayMs);
    deps.log.warn("handler failed; retrying", {
      handler: handler.name, id, topic: message.topic, partition: message.partition, offset: message.offset,
      attempt, nextAttemptInMs: delay, error: failure,
    });
    report(id, "retried");
    try {
      await sleep(delay, signal);
    } catch {
      return "aborted";
    }
  }
}

function createContext(
  handler: ResolvedHandler,
  message: KafkaMessage,
  deps: ExecutorDeps,
  signal: AbortSignal,
  id: string,
  attempt: number,
  outbox: OutboxRecord[],
  recorded: () => Map<string, string>,
  /** Nothing is recorded for this message yet (first attempt of a fresh offset): no tx lookup. */
  unrecorded = false,
): HandlerContext {
  const seen = new Map<string, number>();
  // The n-th call of a name in one run is `name`, `name#2`, …: a loop of steps keeps stable keys.
  const occurrence = (name: string) => {
    const n = (seen.get(name) ?? 0) + 1;
    seen.set(name, n);
    return n === 1 ? name : `${name}#${n}`;
  };
  let txCount = 0;
  let log: HandlerContext["log"] | undefined;
  return {
    message,
    id,
    attempt,
    signal,
    // Made on first use: most handlers never log, and a child logger per message costs allocations.
    get log() {
      return (log ??= deps.log.child({ handler: handler.name, id, attempt }));
    },
    async step<R>(name: string, fn: () => R | Promise<R>): Promise<R> {
      const key = occurrence(`step:${name}`);
      const steps = recorded();
      const hit = steps.get(key);
      if (hit !== undefined) return JSON.parse(hit) as R;
      const result = await fn();
      const json = toJson(result, `ctx.step("${name}") result`);
      steps.set(key, json);
      deps.journal.recordStep(handler.name, id, key, json);
      return result;
    },
    tx<R>(fn: (db: import("../index.ts").HandlerDb) => Promise<R>): Promise<R> {
      return deps.journal.runTx(handler.name, id, `tx:${++txCount}`, fn, unrecorded);
    },
    emit(topic: string, msg: EmitMessage): void {
      if (typeof topic !== "string" || topic.length === 0) throw new TypeError("ctx.emit: topic must be a non-empty string");
      const headers: Record<string, Buffer> = {};
      for (const [k, v] of Object.entries(msg.headers ?? {})) headers[k] = toBuffer(v);
      headers["kexo-id"] = Buffer.from(`${id}:emit:${outbox.length + 1}`);
      outbox.push({
        handler: handler.name,
        messageId: id,
        topic,
        key: msg.key === undefined || msg.key === null ? null : toBuffer(msg.key),
        value: msg.value === null ? null : toBuffer(msg.value),
        headers,
        partition: msg.partition,
      });
    },
  };
}

async function deadLetter(
  handler: ResolvedHandler,
  message: KafkaMessage,
  deps: ExecutorDeps,
  signal: AbortSignal,
  id: string,
  reason: DeadLetterReason,
  err: unknown,
  attempts: number,
  report: (id: string, outcome: Outcome) => void,
): Promise<Verdict> {
  const dlqTopic = handler.deadLetterTopic(message.topic);
  const error = errorMessage(err);
  const type = err instanceof PoisonError ? "PoisonError" : errorType(err);
  const failedAt = new Date();
  if (dlqTopic === false) {
    // deadLetter: false means block and retry; poison can never succeed, so say so loudly.
    deps.log.error("message can not be handled and dead letters are off; the partition is blocked", {
      handler: handler.name, id, topic: message.topic, partition: message.partition, offset: message.offset, reason, error,
    });
    deps.blocked?.(`${handler.name} ${message.topic}/${message.partition}@${message.offset}: ${reason}: ${error}`);
    await sleep(handler.retry.maxDelayMs, signal).catch(() => {});
    return "aborted";
  }
  const headers = deadLetterHeaders(message.headers as Record<string, Buffer>, {
    topic: message.topic, partition: message.partition, offset: message.offset, timestamp: message.timestamp,
    groupId: handler.groupId, reason, error, errorType: type, stack: err instanceof Error ? err.stack : undefined,
    attempts, failedAt,
  });
  for (let tries = 1; ; tries++) {
    try {
      await deps.dlq.publish(dlqTopic, { key: message.key, value: message.value, headers });
      if (tries > 1) deps.blocked?.(undefined);
      break;
    } catch (publishErr) {
      const wait = backoff(tries, 200, 10_000);
      const why = `dead-letter write to ${dlqTopic} failed: ${errorMessage(publishErr)}`;
      deps.log.error("dead-letter write failed; the partition waits and retries", {
        handler: handler.name, id, topic: message.topic, partition: message.partition, offset: message.offset,
        dlqTopic, tries, nextTryInMs: wait, error: publishErr,
      });
      deps.blocked?.(why);
      try {
        await sleep(wait, signal);
      } catch {
        return "aborted";
      }
    }
  }
  deps.journal.deadLetter(
    {
      handler: handler.name, groupId: handler.groupId, messageId: id, topic: message.topic, partition: message.partition,
      offset: message.offset, key: message.key, value: message.value, headers: message.headers as Record<string, Buffer>,
      reason, error, errorType: type, attempts, failedAt: failedAt.toISOString(), dlqTopic,
    },
    {
      handler: handler.name, id, status: "dead_lettered", topic: message.topic, partition: message.partition,
      offset: message.offset, attempts, error: `${reason}: ${error}`,
    },
  );
  deps.log.warn("message dead-lettered", {
    handler: handler.name, id, topic: message.topic, partition: message.partition, offset: message.offset,
    dlqTopic, reason, attempts, error,
  });
  report(id, "dead_lettered");
  return "done";
}
