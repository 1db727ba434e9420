// One handler's kafkajs consumer: its group, the batch loop, partition progress and the offset
// commits that follow the journal.
//
// Invariants:
// - A partition's Kafka commit never passes its durable journal progress (the CommitHook hands
//   progress to the journal's COMMIT; only `committed()` moves `durable`).
// - Progress belongs to an assignment epoch: state objects are replaced on every group join, so
//   a batch still running from before a rebalance can't move the new epoch's progress.
// - Messages below the journaled progress are done: they are skipped, whatever Kafka redelivers.
import type { Consumer, EachBatchPayload, Kafka } from "kafkajs";
import { errorMessage } from "../errors.ts";
import type { EventBus } from "../events.ts";
import type { ResolvedHandler } from "../handlers/resolve.ts";
import type { KafkaMessage } from "../index.ts";
import type { CommitHook, Journal, ProgressEntry } from "../journal/journal.ts";
import type { Logger } from "../log.ts";
import { type DeadLetterPublisher, execute } from "../processing/executor.ts";
import { rejoinAs } from "./membership.ts";
import type { ProgressLog } from "./progress-log.ts";

export interface ConsumerOptions {
  sessionTimeoutMs: number;
  heartbeatIntervalMs: number;
  /** How long to wait between Kafka offset commits while messages flow. */
  commitIntervalMs: number;
  /**
   * Longest a Fetch waits for data. The development broker holds every Fetch that finds no data
   * for this long, even when data arrives meanwhile, so it bounds end-to-end latency there (250 ms
   * gave a p50 of 130 ms at 10k msg/s); real Kafka answers as soon as data arrives, and this only
   * sets how often an idle consumer asks.
   */
  maxWaitTimeInMs: number;
}

export const DEFAULT_CONSUMER_OPTIONS: ConsumerOptions = {
  sessionTimeoutMs: 6000,
  heartbeatIntervalMs: 500,
  commitIntervalMs: 200,
  maxWaitTimeInMs: 20,
};

interface PartitionState {
  topic: string;
  partition: number;
  epoch: number;
  /** Every offset below is done in the journal (maybe not yet durable). */
  next: bigint;
  /** Every offset below is durable in the journal. */
  durable: bigint;
  /** What this epoch last committed to Kafka (-1: nothing yet). */
  committed: bigint;
  /** Resolves once the progress log was read: `next` then covers a previous owner's work. */
  ready: Promise<void>;
}

export interface ConsumerStatus {
  handler: string;
  group: string;
  joined: boolean;
  epoch: number;
  assignment: Record<string, number[]>;
  partitions: { topic: string; partition: number; next: string; durable: string; committed: string; highWatermark?: string }[];
  inflight: number;
  blocked?: string;
  lastError?: string;
}

const key = (topic: string, partition: number) => `${topic}:${partition}`;

export class HandlerConsumer {
  readonly handler: ResolvedHandler;
  #kafka: Kafka;
  #journal: Journal;
  #bus: EventBus;
  #log: Logger;
  #dlq: DeadLetterPublisher;
  #progressLog: ProgressLog | undefined;
  #opts: ConsumerOptions;
  #consumer: Consumer | undefined;
  #epoch = 0;
  #joined = false;
  #parts = new Map<string, PartitionState>();
  #assignment: Record<string, number[]> = {};
  #highWatermarks = new Map<string, string>();
  #stopping = false;
  #abort = new AbortController();
  #activeBatches = 0;
  #idle: (() => void)[] = [];
  #inflight = 0;
  #blocked: string | undefined;
  #lastError: string | undefined;
  #commitTimer: ReturnType<typeof setTimeout> | undefined;
  #committing: Promise<void> | undefined;
  #removeHook: () => void;
  #rebuilding = false;

  constructor(
    handler: ResolvedHandler,
    deps: { kafka: Kafka; journal: Journal; bus: EventBus; log: Logger; dlq: DeadLetterPublisher; progressLog?: ProgressLog },
    opts: Partial<ConsumerOptions> = {},
  ) {
    this.handler = handler;
    this.#kafka = deps.kafka;
    this.#journal = deps.journal;
    this.#bus = deps.bus;
    this.#log = deps.log.child({ handler: handler.name, group: handler.groupId });
    this.#dlq = deps.dlq;
    this.#progressLog = deps.progressLog;
    this.#opts = { ...DEFAULT_CONSUMER_OPTIONS, ...opts };
    const hook: CommitHook = {
      progress: () => this.#progressToJournal(),
      committed: (entries) => this.#journalCommitted(entries),
    };
    this.#removeHook = this.#journal.addCommitHook(hook);
  }

  get ready(): boolean {
    return this.#joined && !this.#stopping && this.#blocked === undefined;
  }

  status(): ConsumerStatus {
    return {
      handler: this.handler.name,
      group: this.handler.groupId,
      joined: this.#joined,
      epoch: this.#epoch,
      assignment: this.#assignment,
      partitions: [...this.#parts.values()].map((p) => ({
        topic: p.topic,
        partition: p.partition,
        next: p.next.toString(),
        durable: p.durable.toString(),
        committed: p.committed.toString(),
        highWatermark: this.#highWatermarks.get(key(p.topic, p.partition)),
      })),
      inflight: this.#inflight,
      blocked: this.#blocked,
      lastError: this.#lastError,
    };
  }

  async start(): Promise<void> {
    const consumer = this.#kafka.consumer({
      groupId: this.handler.groupId,
      sessionTimeout: this.#opts.sessionTimeoutMs,
      heartbeatInterval: this.#opts.heartbeatIntervalMs,
      rebalanceTimeout: Math.max(this.#opts.sessionTimeoutMs, 10_000),
      maxWaitTimeInMs: this.#opts.maxWaitTimeInMs,
      retry: { retries: 10, initialRetryTime: 200, maxRetryTime: 5000 },
    });
    this.#consumer = consumer;
    const memberKey = `member:${this.handler.groupId}`;
    const previous = this.#journal.getMeta(memberKey);
    if (previous) rejoinAs(this.handler.groupId, previous);
    consumer.on(consumer.events.GROUP_JOIN, (e) => {
      if (e.payload.memberId !== this.#journal.getMeta(memberKey)) this.#journal.setMeta(memberKey, e.payload.memberId);
      this.#onJoin(e.payload.memberAssignment, e.payload.groupId);
    });
    consumer.on(consumer.events.REBALANCING, () => {
      this.#joined = false;
    });
    consumer.on(consumer.events.CRASH, (e) => this.#onCrash(consumer, e.payload.error, e.payload.restart));
    this.#bus.emit("consumer.joining", { handler: this.handler.name, group: this.handler.groupId });
    await consumer.connect();
    await consumer.subscribe({ topics: this.handler.topics, fromBeginning: true });
    await consumer.run({
      autoCommit: false,
      eachBatchAutoResolve: false,
      partitionsConsumedConcurrently: this.handler.order === "topic" ? 1 : Math.max(1, this.handler.concurrency),
      eachBatch: (payload) => this.#eachBatch(payload),
    });
  }

  /**
   * Stops taking messages, waits up to `timeoutMs` for in-flight ones (then aborts them through
   * ctx.signal), makes the journal durable, commits offsets and leaves the group.
   * Returns false when handlers had to be aborted.
   */
  async stop(timeoutMs: number): Promise<boolean> {
    this.#stopping = true;
    let clean = true;
    if (this.#activeBatches > 0) {
      const drained = new Promise<void>((r) => this.#idle.push(r));
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timedOut = await Promise.race([
        drained.then(() => false),
        new Promise<boolean>((r) => (timer = setTimeout(() => r(true), timeoutMs))),
      ]);
      clearTimeout(timer);
      if (timedOut) {
        clean = false;
        this.#log.warn("shutdown timeout ran out; aborting in-flight handlers", { inflight: this.#inflight, timeoutMs });
        this.#abort.abort();
        await Promise.race([drained, new Promise((r) => setTimeout(r, 2000))]);
      }
    }
    await this.#settle().catch((err: unknown) => this.#log.warn("final progress not shared; the journal still has it", { error: err }));
    clearTimeout(this.#commitTimer);
    this.#removeHook();
    const consumer = this.#consumer;
    if (consumer) {
      const left = await Promise.race([
        consumer.disconnect().then(() => true, () => false),
        new Promise<boolean>((r) => setTimeout(() => r(false), 5000)),
      ]);
      // Left the group cleanly: the next start joins as a new member, nothing to rejoin as.
      if (left) this.#journal.setMeta(`member:${this.handler.groupId}`, null);
    }
    this.#joined = false;
    this.#bus.emit("consumer.stopped", { handler: this.handler.name, group: this.handler.groupId });
    return clean;
  }

  // ---- group membership ----

  #onJoin(assignment: Record<string, number[]>, groupId: string): void {
    const epoch = ++this.#epoch;
    const progress = this.#journal.progress(groupId);
    const parts = new Map<string, PartitionState>();
    const log = this.#progressLog;
    // A previous owner that could not commit its last offsets published them to the progress log.
    const ready = log
      ? log.caughtUp().then(() => {
          for (const p of parts.values()) {
            const theirs = log.get(groupId, p.topic, p.partition);
            if (theirs !== undefined && theirs > p.next) {
              this.#log.info("resuming after the previous owner's progress", { topic: p.topic, partition: p.partition, next: theirs.toString() });
              p.next = theirs;
            }
          }
        })
      : Promise.resolve();
    for (const [topic, partitions] of Object.entries(assignment)) {
      for (const partition of partitions) {
        const next = progress.get(key(topic, partition)) ?? -1n;
        parts.set(key(topic, partition), { topic, partition, epoch, next, durable: next, committed: -1n, ready });
      }
    }
    this.#parts = parts;
    this.#assignment = assignment;
    this.#joined = true;
    this.#log.info("joined group", { epoch, assignment });
    this.#bus.emit("consumer.joined", { handler: this.handler.name, group: groupId, assignment, generation: epoch });
    // Bring Kafka's committed offsets up to the journal (after a crash between the two).
    this.#scheduleCommit();
  }

  #onCrash(consumer: Consumer, error: unknown, restart: boolean): void {
    this.#joined = false;
    this.#lastError = errorMessage(error);
    this.#bus.emit("consumer.crashed", { handler: this.handler.name, group: this.handler.groupId, error, restarting: restart });
    if (restart || this.#stopping || this.#rebuilding) {
      this.#log.warn("consumer crashed; kafkajs restarts it", { error });
      return;
    }
    // kafkajs gave up (e.g. INVALID_REQUEST on SyncGroup): rebuild the consumer ourselves.
    this.#rebuilding = true;
    this.#log.error("consumer crashed and kafkajs will not restart it; rebuilding the consumer", { error });
    void (async () => {
      await consumer.disconnect().catch(() => {});
      for (let attempt = 1; !this.#stopping; attempt++) {
        try {
          await this.start();
          break;
        } catch (err) {
          this.#log.error("consumer rebuild failed; retrying", { attempt, error: err });
          await new Promise((r) => setTimeout(r, Math.min(10_000, 500 * attempt)));
        }
      }
      this.#rebuilding = false;
    })();
  }

  // ---- the batch loop ----

  async #eachBatch(payload: EachBatchPayload): Promise<void> {
    const { batch, resolveOffset, heartbeat, isRunning, isStale } = payload;
    const state = this.#parts.get(key(batch.topic, batch.partition));
    this.#highWatermarks.set(key(batch.topic, batch.partition), batch.highWatermark);
    this.#bus.emit("consumer.fetched", {
      handler: this.handler.name,
      group: this.handler.groupId,
      topic: batch.topic,
      partition: batch.partition,
      highWatermark: batch.highWatermark,
    });
    if (!state || this.#stopping) return;
    this.#activeBatches++;
    await state.ready;
    let rebalancing = false;
    // kafkajs heartbeats only between batches; a long batch must heartbeat itself.
    const beat = setInterval(() => {
      heartbeat().catch((err: unknown) => {
        rebalancing = true;
        this.#log.debug("heartbeat failed during batch; finishing the current message", { error: err });
      });
    }, this.#opts.heartbeatIntervalMs);
    // Resolved once per batch, not per message: kafkajs parses the offset into a Long each call.
    let lastDone: string | undefined;
    try {
      for (const m of batch.messages) {
        if (this.#stopping || rebalancing || !isRunning() || isStale() || state !== this.#parts.get(key(batch.topic, batch.partition))) break;
        const offset = BigInt(m.offset);
        // Below the journal's progress the message is done already (Kafka's offset lagged behind
        // the journal, or was rewound): it is reported as deduplicated, never run again.
        const below = offset < state.next;
        const message = toMessage(batch.topic, batch.partition, m);
        this.#inflight++;
        let verdict;
        try {
          verdict = await execute(this.handler, message, {
            journal: this.#journal,
            bus: this.#bus,
            log: this.#log,
            dlq: this.#dlq,
            blocked: (reason) => (this.#blocked = reason),
          }, this.#abort.signal, below);
        } finally {
          this.#inflight--;
        }
        if (verdict !== "done") break;
        if (offset >= state.next) state.next = offset + 1n;
        lastDone = m.offset;
        this.#journal.requestCommit();
      }
    } catch (err) {
      // A journal failure is fatal for the process; anything else is a kexo bug in this loop.
      this.#lastError = errorMessage(err);
      this.#bus.emit("worker.error", { handler: this.handler.name, error: err });
      throw err;
    } finally {
      clearInterval(beat);
      if (lastDone !== undefined) resolveOffset(lastDone);
      // Before kafkajs may rejoin the group, this batch's work is in Kafka's offsets or the
      // progress log, where the partition's next owner looks.
      await this.#settle().catch((err: unknown) => this.#log.warn("batch progress not shared; the journal still has it", { error: err }));
      this.#bus.emit("consumer.polled", { handler: this.handler.name });
      if (--this.#activeBatches === 0) for (const r of this.#idle.splice(0)) r();
    }
  }

  // ---- progress and commits ----

  /** Journal durable, then offsets committed; if Kafka refuses (rebalance), progress published. */
  async #settle(): Promise<void> {
    await this.#journal.flush();
    try {
      await this.#commitOffsets();
    } catch (err) {
      const log = this.#progressLog;
      if (!log) throw err;
      const records = [...this.#parts.values()]
        .filter((p) => p.durable >= 0n && p.durable > p.committed)
        .map((p) => ({ groupId: this.handler.groupId, topic: p.topic, partition: p.partition, next: p.durable }));
      await log.publish(records);
      this.#log.info("offset commit refused; progress published for the next owner", {
        partitions: records.map((r) => `${r.topic}/${r.partition}@${r.next}`),
      });
    }
  }

  #progressToJournal(): ProgressEntry[] {
    const out: ProgressEntry[] = [];
    for (const p of this.#parts.values()) {
      if (p.next > p.durable) {
        out.push({ groupId: this.handler.groupId, topic: p.topic, partition: p.partition, nextOffset: p.next });
      }
    }
    return out;
  }

  #journalCommitted(entries: ProgressEntry[]): void {
    for (const e of entries) {
      const p = this.#parts.get(key(e.topic, e.partition));
      if (p && e.nextOffset > p.durable) p.durable = e.nextOffset;
    }
    this.#scheduleCommit();
  }

  #scheduleCommit(): void {
    if (this.#commitTimer !== undefined || this.#stopping) return;
    this.#commitTimer = setTimeout(() => {
      this.#commitTimer = undefined;
      void this.#commitOffsets().catch(() => {});
    }, this.#opts.commitIntervalMs);
  }

  async #commitOffsets(): Promise<void> {
    while (this.#committing) await this.#committing;
    const consumer = this.#consumer;
    if (!consumer) return;
    const todo = [...this.#parts.values()].filter((p) => p.durable >= 0n && p.durable > p.committed);
    if (todo.length === 0) return;
    const offsets = todo.map((p) => ({ topic: p.topic, partition: p.partition, offset: p.durable.toString() }));
    const done = todo.map((p) => [p, p.durable] as const);
    this.#committing = consumer
      .commitOffsets(offsets)
      .then(() => {
        for (const [p, at] of done) {
          if (at > p.committed) p.committed = at;
          this.#bus.emit("consumer.committed", {
            handler: this.handler.name,
            group: this.handler.groupId,
            topic: p.topic,
            partition: p.partition,
            offset: at.toString(),
          });
        }
      })
      .catch((err: unknown) => {
        // Rejected during a rebalance: the journal keeps the progress and the next owner skips it.
        this.#log.debug("offset commit rejected; will retry", { error: err, offsets });
        if (!this.#stopping) this.#scheduleCommit();
        throw err;
      })
      .finally(() => {
        this.#committing = undefined;
      });
    await this.#committing;
  }
}

function toMessage(
  topic: string,
  partition: number,
  m: EachBatchPayload["batch"]["messages"][number],
): KafkaMessage {
  const headers: Record<string, Buffer> = {};
  for (const [k, v] of Object.entries(m.headers ?? {})) {
    if (v === undefined) continue;
    const one = Array.isArray(v) ? v[v.length - 1] : v;
    if (one !== undefined) headers[k] = Buffer.isBuffer(one) ? one : Buffer.from(one);
  }
  const leaderEpoch = (m as { leaderEpoch?: number }).leaderEpoch;
  return {
    topic,
    partition,
    offset: m.offset,
    key: m.key ?? null,
    value: m.value ?? null,
    headers,
    timestamp: m.timestamp,
    ...(leaderEpoch === undefined ? {} : { leaderEpoch }),
  };
}
