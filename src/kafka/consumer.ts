// One handler's kafkajs consumer: its group, the batch loop, partition progress and the offset
// commits that follow the journal.
//
// Invariants:
// - A partition's Kafka commit never passes its durable journal progress (the CommitHook hands
//   progress to the journal's COMMIT; only `committed()` moves `durable`).
// - Progress belongs to an assignment epoch: state objects are replaced on every group join, so
//   a batch still running from before a rebalance can't move the new epoch's progress.
// - Messages below the journaled progress are done: they are skipped, whatever Kafka redelivers.
import type { Admin, Consumer, EachBatchPayload, Kafka } from "kafkajs";
import { crashPoint } from "../debug-point.ts";
import { errorMessage } from "../errors.ts";
import { allHeaders, fromKafkajs, headerBytes } from "./headers.ts";
import type { EventBus } from "../events.ts";
import type { ResolvedHandler } from "../handlers/resolve.ts";
import type { KafkaMessage } from "../index.ts";
import type { CommitHook, Journal, ProgressEntry } from "../journal/journal.ts";
import type { Logger } from "../log.ts";
import { AbortedError, type DeadLetterPublisher, execute, type ExecutorDeps, settledOrAborted, sleep, type Verdict } from "../processing/executor.ts";
import type { CrashGuard } from "../processing/crash-guard.ts";
import { RetryBook } from "../processing/retry-book.ts";
import { PartitionLanes, KeySlots } from "./key-lanes.ts";
import { beforeJoin, beforeLeave, type CommitVia, commitThrough, type MemberFence, memberFence, rejoinAs } from "./membership.ts";
import { OffsetRanges } from "./offset-ranges.ts";
import type { ProgressLog, ProgressRecord } from "./progress-log.ts";
import { TransactionalOutput } from "../outbox/transactional.ts";
import { topicAssigner } from "./topic-assigner.ts";
import { TIMED_OUT, within } from "../timeout.ts";

export interface ConsumerOptions {
  sessionTimeoutMs: number;
  heartbeatIntervalMs: number;
  /** How long to wait between Kafka offset commits while messages flow. */
  commitIntervalMs: number;
  /** Fetching pauses while more journal writes than this wait for their commit. */
  maxPendingWrites: number;
  /**
   * order: "key": fetching pauses while the messages dispatched to key lanes and not finished hold
   * this many bytes (keys, values, headers), as it does past their count bound.
   */
  maxQueuedBytes: number;
  /**
   * Longest a Fetch waits for data. The development broker holds every Fetch that finds no data
   * for this long, even when data arrives meanwhile, so it bounds end-to-end latency there (250 ms
   * gave a p50 of 130 ms at 10k msg/s); real Kafka answers as soon as data arrives, and this only
   * sets how often an idle consumer asks.
   */
  maxWaitTimeInMs: number;
  /**
   * order "partition": a batch still running after this long lets go of kafkajs's fetch round
   * (#eachBatch): its partition pauses and the batch goes on alone, so a slow or hung handle()
   * holds up its own partition only, not every partition its broker leads.
   */
  letGoAfterMs: number;
}

export const DEFAULT_CONSUMER_OPTIONS: ConsumerOptions = {
  sessionTimeoutMs: 6000,
  heartbeatIntervalMs: 500,
  commitIntervalMs: 200,
  maxPendingWrites: 10_000,
  maxQueuedBytes: 32 * 1024 * 1024,
  maxWaitTimeInMs: 20,
  letGoAfterMs: 1000,
};

/** A batch that let go of kafkajs's fetch round (#eachBatch). */
interface LetGo {
  /** Resumes its partition: set once it let go. */
  resume: (() => void) | undefined;
  /** It ended on a message waiting for its next try: the partition stays paused until then. */
  deferred: boolean;
  /** It ended (its finally ran). */
  ended: boolean;
  /** Its partition was paused again while it ran (#eachBatch): it resumes it once more at its end. */
  repaused: boolean;
  /**
   * It counts in #runningBatches: from its slot wait's end until it ends, or until the rebalance
   * grace ran out with it running (#graceRanOut: its ctx calls are refused from then on).
   */
  holdsSlot: boolean;
  /** The kafkajs consumer it was fetched by. */
  consumer: Consumer | undefined;
  /** Counted in #abandoned (see there). */
  abandoned?: boolean;
  /** Its messages' ctx.signal, once its slot wait is over. */
  signal?: AbortSignal;
}
const SLOW = Symbol("slow");

class PartitionState {
  #next: bigint;
  /** The last offset done (≥ #next) since `next` was read: folded in on read, not per message. */
  #doneAt: string | undefined;
  /** Every offset below is durable in the journal. */
  durable: bigint;
  /** Progress handed to a journal COMMIT, maybe not yet acknowledged (≥ durable). */
  journaled: bigint;
  /**
   * Kafka's committed offset (-1: none): read from Kafka once `ready` (the journal's progress
   * before, or when Kafka could not be asked), then what this epoch committed. Progress is
   * committed only above it: Kafka may be ahead of this journal (another instance with its own
   * journal handled the partition since), and committing the journal's progress back to Kafka
   * would make a later owner handle that instance's messages again. Lowered when Kafka delivers a
   * message below it (see #behind).
   */
  committed: bigint;
  /** Resolves once the progress log was read: `next` then covers a previous owner's work. */
  ready: Promise<void>;
  /** order: "key" only: the partition's key lanes in this epoch. */
  lanes?: PartitionLanes;
  /**
   * order: "key" only: offsets at or above `next` that a previous owner finished (the progress
   * log's `done`, read once `ready`): done, so not run again (guarantee 7 with separate journals).
   */
  inherited = OffsetRanges.EMPTY;
  /**
   * order: "topic" only: the offset of the message that held the topic, waiting for its next try,
   * when the previous owner let go of the partition (the progress log's `waiting`, read once
   * `ready`, at or above `next`): it holds the topic here too until it is done.
   */
  waiting?: bigint;

  constructor(readonly topic: string, readonly partition: number, readonly epoch: number, next: bigint, ready: Promise<void>) {
    this.#next = this.durable = this.journaled = this.committed = next;
    this.ready = ready;
  }

  /** Every offset below is done in the journal (maybe not yet durable). */
  get next(): bigint {
    if (this.#doneAt !== undefined) {
      this.#next = BigInt(this.#doneAt) + 1n;
      this.#doneAt = undefined;
    }
    return this.#next;
  }

  set next(value: bigint) {
    this.#doneAt = undefined;
    this.#next = value;
  }

  /** `offset`, at or above `next`, is done: `next` passes it (a string kept, no BigInt per message). */
  done(offset: string): void {
    this.#doneAt = offset;
  }
}

export interface ConsumerStatus {
  handler: string;
  group: string;
  joined: boolean;
  epoch: number;
  assignment: Record<string, number[]>;
  /** Offsets as strings; null while not known (nothing handled, journaled or committed yet: Kafka's -1). */
  partitions: { topic: string; partition: number; next: string | null; durable: string | null; committed: string | null; highWatermark?: string; lag?: string }[];
  inflight: number;
  /** order: "key": messages dispatched to key lanes and not finished (running or waiting), and their bytes. */
  queued?: { messages: number; bytes: number };
  blocked?: string;
  lastError?: string;
}

const key = (topic: string, partition: number) => `${topic}:${partition}`;

/** An offset as /status shows it: null for Kafka's "none" (-1), not a number to compute with. */
const knownOffset = (o: bigint): string | null => (o < 0n ? null : o.toString());

/**
 * Heartbeat errors after which this member's partitions go (kafkajs rejoins on them once its
 * batches returned, or the group already moved on without it). NOT_COORDINATOR_FOR_GROUP is not
 * one: the group may be as it was at the new coordinator.
 */
const REVOKING: ReadonlySet<string> = new Set(["REBALANCE_IN_PROGRESS", "ILLEGAL_GENERATION", "UNKNOWN_MEMBER_ID"]);

/** order: "topic": a message waiting for its next try holds its topic (see #holdTopic). */
interface TopicHold {
  partition: number;
  offset: bigint;
  /** Resume the topic's other partitions, paused when they found the hold. */
  resumes: (() => void)[];
}

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
  /** Shutdown: aborted when --shutdown-timeout runs out; every ctx.signal follows it. */
  #abort = new AbortController();
  /**
   * Aborted when stop() begins: a message that waits and runs no handler is not in flight, so it
   * stops waiting and ends unfinished. order: "key": a wait for its next try (see #waitOffSlot),
   * as its partition's pause ends it in partition and topic order. Every order: a wait for the
   * schema registry to decode or for the crash guard (the executor's `drain`; a wait to encode
   * emits is not ended: that handler ran).
   */
  #stopWaits = new AbortController();
  /**
   * order: "key": aborted when a rejoin begins (#quiesceLanes), renewed at the join. A message
   * waiting for its next try is not running, so the rebalance does not wait for it (else it held
   * the rejoin for the whole grace, then aborted the other keys' running messages with it): its
   * wait ends, its lane stops, and it and its key's later messages, at or above the lowest
   * unfinished offset, go to the partition's next epoch or owner.
   */
  #rejoinWaits = new AbortController();
  /**
   * order "partition"/"topic": the ctx.signal of the messages that batches start from now on. It
   * aborts with #abort, and when the rebalance grace runs out with messages still running
   * (#graceRanOut, which puts a fresh one here for the batches after: a later epoch's runs, the
   * same partitions again included, get a signal that is not aborted).
   */
  #revoke = new AbortController();
  #signal = AbortSignal.any([this.#abort.signal, this.#revoke.signal]);
  /**
   * order "partition"/"topic": this epoch's rebalance grace, from the first sign of a rebalance
   * (a batch's heartbeat refused, or #beforeRejoin); `ends` resolves when it ran out, or at the
   * next join. Undefined while no rebalance is known.
   */
  #grace: { ends: Promise<void>; end: () => void; timer: ReturnType<typeof setTimeout> } | undefined;
  /** How long a rebalance waits for this member's running messages: within kafkajs's rebalanceTimeout, with time to share progress. */
  readonly #graceMs: number;
  #activeBatches = 0;
  /**
   * Batches that let go of kafkajs's fetch round and still run (#eachBatch), by partition (`key()`):
   * one at most per partition, since a refetch of its partition meanwhile runs nothing.
   */
  #letGoParts = new Map<string, LetGo>();
  /** order "partition": batches past their slot wait and not ended, those let go of included. */
  #runningBatches = 0;
  /** Batches waiting until fewer than the handler's concurrency run. */
  #slotWaits: (() => void)[] = [];
  #idle: (() => void)[] = [];
  /**
   * Batches let go of whose epoch's grace ran out while they ran (#graceRanOut): their messages'
   * ctx calls are refused, their partitions revoked. A rejoin or a leave does not wait for them
   * (#liveIdle); a drain still does (#idle), and aborts them at its timeout.
   */
  #abandoned = 0;
  #liveIdle: (() => void)[] = [];
  #inflight = 0;
  /** The journal flush that partition loops waiting for the journal share (#relieve). */
  #relieving: Promise<void> | undefined;
  /** Per partition (`topic:partition`): why it is held up, for /readyz. */
  #blocked = new Map<string, string>();
  /** Messages waiting for their next try while their partition is paused. */
  #retries = new RetryBook();
  #resumeTimers = new Set<ReturnType<typeof setTimeout>>();
  #lastError: string | undefined;
  #commitTimer: ReturnType<typeof setTimeout> | undefined;
  #committing: Promise<void> | undefined;
  #removeHook: () => void;
  #removeGates: (() => void)[] = [];
  /** #beforeRejoin is waiting for the batches: they stop taking messages. */
  #rejoining = false;
  /** The chain of consumer rebuilds after crashes kafkajs won't restart from. */
  #rebuilding: Promise<void> | undefined;
  #crashes = 0;
  /** order: "key": running limit shared by the partitions; order: "topic": one lock per topic. */
  #keySlots: KeySlots | undefined;
  #topicLocks = new Map<string, Promise<void>>();
  /** order: "topic": per topic, the message waiting for its next try that holds it (#holdTopic). */
  #topicHolds = new Map<string, TopicHold>();
  /** kafkaTransactions: offsets are committed only inside Kafka transactions with the emits. */
  #txOut: TransactionalOutput | undefined;
  /** Only after an unclean stop (see crash-guard.ts). */
  #guard: CrashGuard | undefined;
  /**
   * This member's standing with the coordinator: a stalled process that wakes past its session
   * neither starts nor records anything before the coordinator confirmed it (ExecutorDeps.fence).
   */
  #fence: MemberFence;

  constructor(
    handler: ResolvedHandler,
    deps: {
      kafka: Kafka; journal: Journal; bus: EventBus; log: Logger; dlq: DeadLetterPublisher; progressLog?: ProgressLog; clientId?: string;
      guard?: CrashGuard;
    },
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
    this.#graceMs = Math.max(1000, Math.max(this.#opts.sessionTimeoutMs, 10_000) - 3000);
    this.#fence = memberFence(handler.groupId, this.#opts.sessionTimeoutMs);
    const hook: CommitHook = {
      progress: () => this.#progressToJournal(),
      hasProgress: () => this.#hasProgress(),
      committed: (entries) => this.#journalCommitted(entries),
    };
    this.#removeHook = this.#journal.addCommitHook(hook);
    this.#guard = deps.guard;
    if (handler.kafkaTransactions) {
      this.#txOut = new TransactionalOutput(deps, handler.name, handler.groupId, deps.clientId ?? "kexo");
      // The progress log would let a new owner skip messages whose records are not in Kafka yet.
      this.#progressLog = undefined;
    }
    if (handler.order === "key") {
      // Queue bounds: enough to keep every slot busy behind a few slow keys, small enough for memory.
      this.#keySlots = new KeySlots(Math.max(1, handler.concurrency), Math.max(1000, handler.concurrency * 64), this.#opts.maxQueuedBytes);
      this.#removeGates.push(beforeJoin(handler.groupId, (lost) => this.#quiesceLanes(lost)));
    } else {
      this.#removeGates.push(beforeJoin(handler.groupId, () => this.#beforeRejoin()));
    }
    this.#removeGates.push(beforeLeave(handler.groupId, async (via) => {
      // kafkajs leaves (a crash it gave up on) once its own batches returned, not those let go of
      // (#eachBatch): they get the rebalance grace, as at a rejoin, before their partitions move.
      // Not at stop(), which waited for them already (or aborted them at its timeout).
      if (!this.#stopping && this.#letGoParts.size > this.#abandoned) await Promise.race([this.#liveBatchesDone(), this.#rebalanceGrace()]);
      await this.#settle(via).catch((err: unknown) => this.#log.warn("progress not shared before leaving; the journal still has it", { error: err }));
    }));
  }

  get ready(): boolean {
    return this.#joined && !this.#stopping && this.#blocked.size === 0;
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
        next: knownOffset(p.next),
        durable: knownOffset(p.durable),
        committed: knownOffset(p.committed),
        highWatermark: this.#highWatermarks.get(key(p.topic, p.partition)),
      })),
      inflight: this.#inflight,
      queued: this.#keySlots?.queued,
      blocked: this.#blocked.size > 0 ? [...this.#blocked.values()].join("; ") : undefined,
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
      // order: "topic": a topic's partitions all go to one member (one message at a time per topic
      // for the group, not per instance); the topics this member holds now tend to stay with it.
      ...(this.handler.order === "topic" ? { partitionAssigners: [topicAssigner(() => Object.keys(this.#assignment))] } : {}),
    });
    this.#consumer = consumer;
    const memberKey = this.#journal.localKey(`member:${this.handler.groupId}`);
    const previous = this.#journal.getMeta(memberKey);
    if (previous) rejoinAs(this.handler.groupId, previous);
    consumer.on(consumer.events.GROUP_JOIN, (e) => {
      if (e.payload.memberId !== this.#journal.getMeta(memberKey)) this.#journal.setMeta(memberKey, e.payload.memberId);
      this.#crashes = 0;
      this.#onJoin(e.payload.memberAssignment, e.payload.groupId);
    });
    consumer.on(consumer.events.REBALANCING, () => {
      this.#joined = false;
      this.#bus.emit("consumer.rebalancing", { handler: this.handler.name, group: this.handler.groupId });
    });
    // Liveness and broker reachability (health/liveness.ts): a fetch answered, a heartbeat answered.
    consumer.on(consumer.events.FETCH, () => this.#bus.emit("consumer.polled", { handler: this.handler.name }));
    consumer.on(consumer.events.HEARTBEAT, () => this.#bus.emit("consumer.heartbeat", { handler: this.handler.name, group: this.handler.groupId }));
    // A batch of only control records (transactions) or compacted gaps never reaches eachBatch;
    // its end still moves the partition's position, or lag would never reach 0 on such topics.
    consumer.on(consumer.events.START_BATCH_PROCESS, (e) => {
      const b = e.payload;
      if (b.firstOffset !== null) return;
      this.#bus.emit("consumer.fetched", {
        handler: this.handler.name, group: this.handler.groupId, topic: b.topic, partition: b.partition,
        highWatermark: b.highWatermark, position: this.#fetchPosition(b.topic, b.partition, (BigInt(b.lastOffset) + 1n).toString()),
      });
    });
    consumer.on(consumer.events.CRASH, (e) => this.#onCrash(consumer, e.payload.error, e.payload.restart));
    this.#bus.emit("consumer.joining", { handler: this.handler.name, group: this.handler.groupId });
    await consumer.connect();
    const topics = this.handler.topics.map((t) => (typeof t === "string" ? t : new TopicPattern(t, (u) => this.handler.deadLetterTopic(u))));
    await consumer.subscribe({ topics, fromBeginning: true });
    // stop() began while this consumer connected (a rebuild after a crash, or the start itself):
    // it must not join the group now, a member nobody stops (stop() disconnects it too).
    if (this.#stopping) {
      await consumer.disconnect().catch(() => {});
      return;
    }
    await consumer.run({
      autoCommit: false,
      eachBatchAutoResolve: false,
      // order: "topic" takes a per-topic lock in the batch, so one batch per topic suffices.
      partitionsConsumedConcurrently: this.handler.order === "topic" ? Math.max(1, topics.length) : Math.max(1, this.handler.concurrency),
      eachBatch: (payload) => (this.handler.order === "key" ? this.#eachBatchByKey(payload) : this.#eachBatch(payload)),
    });
  }

  /**
   * Stops taking messages, waits up to `timeoutMs` for in-flight ones (then aborts them through
   * ctx.signal), makes the journal durable, commits offsets and leaves the group.
   * Returns false when handlers had to be aborted.
   */
  async stop(timeoutMs: number): Promise<boolean> {
    this.#stopping = true;
    this.#wakeSlotWaits();
    this.#pauseAll();
    let clean = true;
    // Queued keyed messages run too: with its own journal, the next owner knows nothing of work
    // finished above the committed offset. On timeout the abort below stops them. A message
    // waiting for its next try stops waiting, and its key's lane with it: its failed attempts are
    // journaled (the next start counts on), and it and its key's later messages stay at or above
    // the lowest unfinished offset, unfinished, so Kafka delivers them again. In every order, a
    // message waiting for the schema registry to decode it or for the crash guard stops waiting
    // too ("aborted" without a handler cut): its batch returns, or its key's lane stops, below it.
    this.#stopWaits.abort();
    const lanesDrained = this.#keySlots ? this.#drainLanes() : undefined;
    if (this.#activeBatches > 0 || lanesDrained) {
      const batchesDone = this.#activeBatches > 0 ? new Promise<void>((r) => this.#idle.push(r)) : undefined;
      const drained = Promise.all([batchesDone, lanesDrained]).then(() => {});
      if ((await within(drained, timeoutMs)) === TIMED_OUT) {
        clean = false;
        this.#log.warn("shutdown timeout ran out; aborting in-flight handlers", { inflight: this.#inflight, timeoutMs });
        this.#abort.abort();
        await within(drained, 2000);
      }
    }
    await this.#settle().catch((err: unknown) => this.#log.warn("final progress not shared; the journal still has it", { error: err }));
    this.#endGrace();
    clearTimeout(this.#commitTimer);
    for (const t of this.#resumeTimers) clearTimeout(t);
    this.#removeHook();
    await this.#txOut?.close();
    const consumer = this.#consumer;
    if (consumer) {
      const left = (await within(consumer.disconnect().then(() => true, () => false), 5000)) === true;
      // Left the group cleanly: the next start joins as a new member, nothing to rejoin as.
      if (left) this.#journal.setMeta(this.#journal.localKey(`member:${this.handler.groupId}`), null);
    }
    for (const remove of this.#removeGates) remove();
    this.#joined = false;
    this.#bus.emit("consumer.stopped", { handler: this.handler.name, group: this.handler.groupId });
    return clean;
  }

  // ---- group membership ----

  #onJoin(assignment: Record<string, number[]>, groupId: string): void {
    const epoch = ++this.#epoch;
    if (this.#rejoinWaits.signal.aborted) this.#rejoinWaits = new AbortController();
    this.#endGrace();
    const progress = this.#journal.progress(groupId);
    const parts = new Map<string, PartitionState>();
    const log = this.#progressLog;
    // Kafka's committed offsets for this assignment, once read at this join (undefined: not read).
    let inKafkaAtJoin: Map<string, bigint> | undefined;
    // A previous owner that could not commit its last offsets published them to the progress log.
    // Kafka's own committed offsets are read too: `committed` must not claim more than Kafka has,
    // or progress this journal made past it (its commit refused in a rebalance) would never be
    // committed, and a later owner could redo it. Not with kafkaTransactions (no progress log):
    // there offsets go to Kafka only with the transaction's records.
    const ready = log
      ? this.#readAtJoin(groupId, assignment, log).then((inKafka) => {
          inKafkaAtJoin = inKafka;
          for (const p of parts.values()) {
            const k = key(p.topic, p.partition);
            if (inKafka) p.committed = inKafka.get(k) ?? -1n;
            const theirs = log.get(groupId, p.topic, p.partition);
            if (theirs !== undefined && theirs > p.next) {
              this.#log.info("resuming after the previous owner's progress", { topic: p.topic, partition: p.partition, next: theirs.toString() });
              p.next = theirs;
            }
            // Committed by an owner whose progress this journal never saw: below is done.
            if (p.committed > p.next) p.next = p.committed;
            if (this.handler.order === "key") {
              p.inherited = log.done(groupId, p.topic, p.partition).from(p.next);
              if (!p.inherited.empty) {
                this.#log.info("skipping what the previous owner finished above its progress", {
                  topic: p.topic, partition: p.partition, next: p.next.toString(), ranges: p.inherited.ranges.length,
                });
              }
            }
            if (this.handler.order === "topic") {
              const waiting = log.waiting(groupId, p.topic, p.partition);
              if (waiting !== undefined && waiting >= p.next) p.waiting = waiting;
            }
          }
        })
      : Promise.resolve();
    for (const [topic, partitions] of Object.entries(assignment)) {
      for (const partition of partitions) {
        const next = progress.get(key(topic, partition)) ?? -1n;
        this.#journal.assigned(this.handler.name, topic, partition);
        parts.set(key(topic, partition), new PartitionState(topic, partition, epoch, next, ready));
      }
    }
    this.#forgetRevoked(parts);
    this.#parts = parts;
    // Once `next` covers Kafka's offsets and the previous owner's: before any batch of this epoch.
    if (this.handler.order === "topic") void ready.then(() => this.#holdFromJournal(parts, groupId, inKafkaAtJoin));
    this.#assignment = assignment;
    // Before the first transaction of this assignment: drop rows a committed one already carried.
    if (this.#txOut) void this.#txOut.reconcile(assignment);
    this.#joined = true;
    this.#log.info("joined group", { epoch, assignment });
    this.#bus.emit("consumer.joined", {
      handler: this.handler.name, group: groupId, assignment, generation: epoch, outOfOrder: this.handler.order === "key",
    });
  }

  /**
   * What a join reads, through one admin client: the progress log to its end, and the group's
   * committed offsets in Kafka for `assignment` (see #committedInKafka).
   */
  async #readAtJoin(groupId: string, assignment: Record<string, number[]>, log: ProgressLog): Promise<Map<string, bigint> | undefined> {
    return await this.#withAdmin(async (admin) => {
      const [, inKafka] = await Promise.all([log.caughtUp(admin), this.#committedInKafka(groupId, assignment, admin)]);
      return inKafka;
    });
  }

  /**
   * Runs `use` with an admin client of its own, connecting (a failed connect rejects the reads
   * that await it: each says so as its own failure), and disconnects it afterwards.
   */
  async #withAdmin<T>(use: (admin: Promise<Admin>) => Promise<T>): Promise<T> {
    const admin = this.#kafka.admin();
    const connected = admin.connect().then(() => admin);
    connected.catch(() => {});
    try {
      return await use(connected);
    } finally {
      void admin.disconnect().catch(() => {});
    }
  }

  /**
   * The group's committed offsets in Kafka for `assignment` (a partition without one is absent),
   * or undefined (logged) when they cannot be read within 10 s: `committed` then stays the
   * journal's progress, as when #behind has not run yet.
   */
  async #committedInKafka(groupId: string, assignment: Record<string, number[]>, admin: Promise<Admin>): Promise<Map<string, bigint> | undefined> {
    try {
      return await this.#readCommitted(groupId, assignment, admin);
    } catch (err) {
      this.#log.warn("cannot read the group's committed offsets; assuming Kafka has the journal's progress", { error: err });
      return undefined;
    }
  }

  /** #committedInKafka's read: rejects when Kafka does not answer within 10 s. */
  async #readCommitted(groupId: string, assignment: Record<string, number[]>, admin: Promise<Admin>): Promise<Map<string, bigint>> {
    const read = (async () => {
      const out = new Map<string, bigint>();
      const topics = Object.keys(assignment);
      if (topics.length === 0) return out;
      for (const { topic, partitions } of await (await admin).fetchOffsets({ groupId, topics })) {
        for (const { partition, offset } of partitions) {
          if (assignment[topic]?.includes(partition) && BigInt(offset) >= 0n) out.set(key(topic, partition), BigInt(offset));
        }
      }
      return out;
    })();
    read.catch(() => {}); // a late failure after the timeout below is the caller's one failure
    const result = await within(read, 10_000);
    if (result === TIMED_OUT) throw new Error("no answer within 10 s");
    return result;
  }

  /**
   * Kafka delivered `offset`, below the journal's progress: its committed offset is at most that
   * (a crash between the journal commit and the offset commit), so committing the journal's
   * progress moves it forward.
   */
  #behind(state: PartitionState, offset: bigint): void {
    if (offset >= state.committed) return;
    state.committed = offset;
    this.#scheduleCommit();
  }

  /**
   * A partition gone to another member: its waiting retries, its /readyz reason and its hold on
   * its topic go with it (order "key": the reasons are per message run, and every run of the last
   * epoch ended its wait at the rejoin).
   */
  #forgetRevoked(kept: Map<string, PartitionState>): void {
    for (const p of this.#parts.values()) {
      if (!kept.has(key(p.topic, p.partition))) this.#retries.forgetPartition(p.topic, p.partition);
    }
    for (const [topic, h] of this.#topicHolds) if (!kept.has(key(topic, h.partition))) this.#releaseTopic(topic, h.partition, h.offset);
    for (const k of this.#blocked.keys()) if (!kept.has(k)) this.#blocked.delete(k);
  }

  /**
   * A message waits for its next try: its partition stops fetching for `ms` and the batch returns,
   * because kafkajs fetches the next round only when every batch of the last one returned. The
   * message's offset is not resolved, so it is fetched again on resume.
   */
  #deferPartition(pause: () => () => void, ms: number): void {
    const resume = pause();
    const t = setTimeout(() => {
      this.#resumeTimers.delete(t);
      resume();
    }, ms);
    this.#resumeTimers.add(t);
  }

  #onCrash(consumer: Consumer, error: unknown, restart: boolean): void {
    // kafkajs may report one crash twice (runner and fetch loop), and a replaced consumer late:
    // only the first report from the current consumer counts.
    if (consumer !== this.#consumer) return;
    this.#joined = false;
    this.#lastError = errorMessage(error);
    this.#bus.emit("consumer.crashed", { handler: this.handler.name, group: this.handler.groupId, error, restarting: restart });
    if (restart || this.#stopping) {
      this.#log.warn("consumer crashed; kafkajs restarts it", { error });
      return;
    }
    // kafkajs gave up (e.g. GROUP_AUTHORIZATION_FAILED on SyncGroup): rebuild the consumer
    // ourselves. A rebuilt consumer that crashes the same way (even before start() returned) is
    // rebuilt again.
    this.#consumer = undefined;
    const crashes = ++this.#crashes;
    this.#log.error("consumer crashed and kafkajs will not restart it; rebuilding the consumer", { error, crashes });
    this.#rebuilding = (this.#rebuilding ?? Promise.resolve()).then(async () => {
      await consumer.disconnect().catch(() => {});
      for (let attempt = 1; !this.#stopping; attempt++) {
        // Back off when crashes repeat without a join between them (a broker that keeps refusing).
        await new Promise((r) => setTimeout(r, Math.min(10_000, 200 * (crashes + attempt - 1) ** 2)));
        if (this.#stopping) return;
        try {
          await this.start();
          return;
        } catch (err) {
          if (this.#stopping) return;
          this.#log.error("consumer rebuild failed; retrying", { attempt, error: err });
        }
      }
    });
  }

  // ---- the batch loop ----

  /**
   * kafkajs fetches a broker's partitions together and fetches again only once every batch of
   * the last fetch returned: one slow batch holds up every partition that broker leads. So a batch
   * still running after letGoAfterMs (order "partition") lets go: its partition pauses (kafkajs
   * fetches it no more), this returns, and the batch goes on alone; when it ends it resolves what it
   * finished and resumes its partition, which is then fetched from there. It still counts in
   * #activeBatches, so a drain and a rejoin (#beforeRejoin, within the rebalance grace) wait for it
   * as for any batch, and in the handler's concurrency: a batch that starts while `concurrency`
   * batches run (kafkajs's own and those let go) waits for one of them to end.
   */
  async #eachBatch(payload: EachBatchPayload): Promise<void> {
    const { batch, pause } = payload;
    const pk = key(batch.topic, batch.partition);
    const state = this.#parts.get(pk);
    this.#fetched(batch);
    if (!state || this.#stopping) return;
    const running = this.#letGoParts.get(pk);
    if (running) {
      // Its batch that let go still runs: fetched again because fetching was paused and resumed as
      // a whole meanwhile (#relieve), or assigned again at a rejoin past the rebalance grace.
      // Nothing here runs beside it; that batch resumes the partition when it ends, through the
      // consumer of then (kafkajs's resume closure would keep this batch in memory until then).
      running.repaused = true;
      this.#pausePartition(pause);
      return;
    }
    this.#activeBatches++;
    if (this.handler.order !== "partition") return this.#runBatch(payload, pk, state);
    const letGo: LetGo = { resume: undefined, deferred: false, ended: false, repaused: false, holdsSlot: false, consumer: this.#consumer };
    const run = this.#runBatch(payload, pk, state, letGo);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const slow = new Promise<typeof SLOW>((r) => (timer = setTimeout(() => r(SLOW), this.#opts.letGoAfterMs)));
    try {
      // Both may have settled by now: the batch ended, it let go of nothing. A drain waits for
      // every batch anyway, and its topic-wide pause must stay whole.
      if ((await Promise.race([run, slow])) !== SLOW || letGo.ended || this.#stopping) return await run;
    } finally {
      clearTimeout(timer);
    }
    letGo.resume = this.#pausePartition(pause);
    this.#letGoParts.set(pk, letGo);
    // Its epoch's grace ran out before it let go (#graceRanOut).
    if (letGo.signal?.aborted && !this.#stopping) this.#abandon(letGo);
    this.#log.debug("batch running long; its partition lets go of the fetch round", { topic: batch.topic, partition: batch.partition, afterMs: this.#opts.letGoAfterMs });
    // Its error, a journal failure, was reported (worker.error) and stops the process.
    run.catch(() => {});
  }

  /**
   * Pauses one partition (kafkajs's payload pause()). kafkajs's partition pause lifts its topic's
   * pause-all: while the journal is full (#relieve) every partition must stay paused, so it is laid
   * again (it clears the partition pauses; a partition fetched meanwhile is paused again here).
   */
  #pausePartition(pause: () => () => void): () => void {
    const resume = pause();
    if (this.#relieving) this.#pauseAll();
    return resume;
  }

  /** A let-go batch runs a revoked epoch's messages: it holds no slot, and rejoins do not wait for it. */
  #abandon(letGo: LetGo): void {
    this.#freeSlot(letGo);
    if (letGo.abandoned || letGo.ended) return;
    letGo.abandoned = true;
    this.#abandoned++;
  }

  /** A batch's slot of the handler's concurrency is free: it ended, or runs a revoked epoch's message. */
  #freeSlot(letGo: LetGo): void {
    if (!letGo.holdsSlot) return;
    letGo.holdsSlot = false;
    this.#runningBatches--;
    this.#wakeSlotWaits();
  }

  /** The batches waiting for a slot check again: one ended, or a drain or a rebalance began. */
  #wakeSlotWaits(): void {
    for (const r of this.#slotWaits.splice(0)) r();
  }

  /** #eachBatch's body: the batch's messages in order, until one does not finish or the epoch ends. */
  async #runBatch(payload: EachBatchPayload, pk: string, state: PartitionState, letGo?: LetGo): Promise<void> {
    const { batch, resolveOffset, heartbeat, isRunning, isStale, pause } = payload;
    if (letGo) {
      // kafkajs runs `concurrency` batches at most, but those let go of run beside them: this one
      // waits until fewer than `concurrency` run (and lets go meanwhile too, after letGoAfterMs).
      // A drain or a rebalance ends the wait: the loop below then starts nothing.
      while (this.#letGoParts.size > 0 && this.#runningBatches >= this.handler.concurrency && !this.#stopping && !this.#rejoining && !this.#grace) {
        await new Promise<void>((r) => this.#slotWaits.push(r));
      }
      this.#runningBatches++;
      letGo.holdsSlot = true;
    }
    // ctx.signal of this batch's messages: aborted on shutdown, or when the partition is revoked
    // with them running (#graceRanOut). Read once per batch, before any wait.
    const signal = this.#signal;
    if (letGo) letGo.signal = signal;
    const unlock = this.handler.order === "topic" ? await this.#lockTopic(batch.topic) : undefined;
    await state.ready;
    let rebalancing = false;
    // kafkajs heartbeats only between batches; a long batch must heartbeat itself. kafkajs rejoins
    // only once every batch of the fetch returned, so a refused heartbeat starts the grace the
    // running message gets before its signal aborts (#rebalanceGrace).
    const beat = setInterval(() => {
      // Let go of, kafkajs's own loop heartbeats for the member; this batch's payload may by now
      // be a past consumer group's (kafkajs restarted), whose refused heartbeat would start a
      // grace in the current epoch. A rebalance stops this batch through #rejoining and #grace.
      if (letGo?.resume) return;
      heartbeat().catch((err: unknown) => {
        rebalancing = true;
        if (REVOKING.has((err as { type?: unknown }).type as string)) void this.#rebalanceGrace();
        this.#log.debug("heartbeat failed during batch; finishing the current message", { error: err });
      });
    }, this.#opts.heartbeatIntervalMs);
    // Made once per batch, not per message (allocations on the hot path).
    const deps = this.#deps(pk, (ms) => this.#deferPartition(pause, ms));
    // Resolved once per batch, not per message: kafkajs parses the offset into a Long each call.
    let lastDone: string | undefined;
    // Offsets rise within a batch: once one is at or past `next`, so is every later one.
    let ahead = false;
    // kafkajs marks a batch stale only after consumer.seek(), which kexo never calls: asked once
    // per batch, not per message (it builds a JSON key each call).
    const stale = isStale();
    // order: "topic": a message of another partition waits for its next try, so this partition
    // waits too (paused until that message is done; nothing resolved, so it is fetched again).
    const heldBy = unlock && this.#topicHolds.get(batch.topic);
    try {
      if (heldBy && heldBy.partition !== batch.partition) heldBy.resumes.push(pause());
      else for (const m of batch.messages) {
        // A rebalance known to the member (any batch's heartbeat refused: #grace) starts nothing more
        // here either: every partition is revoked at the rejoin, and a message started now only
        // holds the rejoin up (or, past the rebalance timeout, runs as a dropped member's).
        if (stale || this.#stopping || rebalancing || this.#grace || this.#rejoining || signal.aborted || !isRunning() || state !== this.#parts.get(pk)) break;
        // Below the journal's progress the message is done already (Kafka's offset lagged behind
        // the journal, or was rewound): it is reported as deduplicated, never run again.
        let below = false;
        if (!ahead) {
          const offset = BigInt(m.offset);
          below = offset < state.next;
          if (below) this.#behind(state, offset);
          else ahead = true;
        }
        if (this.#journal.pendingWrites >= this.#opts.maxPendingWrites) await this.#relieve();
        const message = toMessage(batch.topic, batch.partition, m);
        // #execute's body, inlined: one async frame (and its promise) less per message. Measured
        // against calling #execute (bench (b), six runs each): the same rate, but peak RSS reached
        // 151 MiB in two of nine runs calling it and at most 144 MiB inlined.
        this.#inflight++;
        let verdict: Verdict;
        try {
          verdict = await execute(this.handler, message, deps, signal, below);
        } finally {
          this.#inflight--;
        }
        if (verdict !== "done") {
          if (verdict === "deferred" && unlock) this.#holdTopic(batch.topic, batch.partition, BigInt(m.offset));
          // Paused until its next try (#deferPartition): a batch let go of must not resume it.
          if (verdict === "deferred" && letGo) letGo.deferred = true;
          break;
        }
        if (unlock && this.#topicHolds.size > 0) this.#releaseTopic(batch.topic, batch.partition, BigInt(m.offset));
        if (!below) state.done(m.offset);
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
      unlock?.();
      if (letGo) {
        letGo.ended = true;
        this.#freeSlot(letGo);
      }
      if (letGo?.resume) {
        this.#letGoParts.delete(pk);
        // Returned to kafkajs long ago: past a rejoin its offsets are another assignment's (and
        // resolveOffset throws for a partition not in it); the new epoch fetches from the journal's.
        if (lastDone !== undefined && state === this.#parts.get(pk)) {
          try {
            resolveOffset(lastDone);
          } catch {
            // Not assigned any more.
          }
        }
        // Not while stopping: every partition stays paused (a resumed one would be fetched
        // again and again, nothing taken). Paused again meanwhile (#eachBatch): through the
        // consumer of now, unless it is the one whose pause the message's backoff holds.
        if (!this.#stopping) {
          if (!letGo.deferred) letGo.resume();
          if (letGo.repaused && (!letGo.deferred || this.#consumer !== letGo.consumer)) {
            this.#toConsumer("resume", [{ topic: batch.topic, partitions: [batch.partition] }]);
          }
        }
      } else if (lastDone !== undefined) resolveOffset(lastDone);
      // No settle here: the journal commits on its timer and offsets follow it (#scheduleCommit);
      // what a rebalance needs shared is shared in #beforeRejoin. Settling every batch held the
      // partition's next fetch behind a journal flush and an offset commit (most of p99).
      // kafkaTransactions keeps it: its emits reach Kafka only with the offsets' transaction.
      if (this.#txOut) await this.#settle().catch((err: unknown) => this.#log.warn("batch progress not shared; the journal still has it", { error: err }));
      this.#bus.emit("consumer.polled", { handler: this.handler.name });
      if (letGo?.abandoned) this.#abandoned--;
      this.#batchEnded();
    }
  }

  /** One batch fewer: wakes what waits for no batch at all (#idle) or none but abandoned ones (#liveIdle). */
  #batchEnded(): void {
    if (--this.#activeBatches === 0) for (const r of this.#idle.splice(0)) r();
    this.#wakeLiveIdle();
  }

  /** Wakes what waits for no batch but abandoned ones, once that is so. */
  #wakeLiveIdle(): void {
    if (this.#activeBatches === this.#abandoned) for (const r of this.#liveIdle.splice(0)) r();
  }

  /** Resolves once no batch runs but abandoned ones (#abandoned). */
  #liveBatchesDone(): Promise<void> {
    return new Promise<void>((r) => this.#liveIdle.push(r));
  }

  // ---- bounded memory ----
  // In-flight messages are bounded by kafkajs itself: a fetcher fetches again only once every
  // batch of its previous fetch was processed, so at most one fetch response per broker is held
  // (maxBytes on Kafka; one stored batch per partition on the development broker). Journal writes
  // are bounded here: past maxPendingWrites (ctx.tx calls queued behind the journal lock, rows not
  // yet committed) fetching pauses until the journal caught up.

  #topics(): { topic: string }[] {
    return Object.keys(this.#assignment).map((topic) => ({ topic }));
  }

  #pauseAll(): void {
    this.#toConsumer("pause", this.#topics());
  }

  /**
   * Pauses or resumes `topics` on the current kafkajs consumer. Between a crash and its next run
   * (kexo rebuilding it: while it connects and subscribes; kafkajs restarting it: its retry wait)
   * a consumer has no consumer group, and kafkajs's pause() and resume() throw: there is nothing
   * to pause then, it fetches nothing until it runs (a rebuilt one does not run once stop()
   * began, see start(); one kafkajs restarts meanwhile takes nothing: #stopping). Thrown at
   * stop(), that made the drain reject at once: exit 75 and "shutdown timeout ran out", with
   * nothing in flight.
   */
  #toConsumer(op: "pause" | "resume", topics: { topic: string; partitions?: number[] }[]): void {
    const consumer = this.#consumer;
    if (!consumer || topics.length === 0) return;
    try {
      consumer[op](topics);
    } catch (err) {
      this.#log.debug(`consumer not running; nothing to ${op}`, { error: err });
    }
  }

  /**
   * One journal commit for every partition loop that finds the journal full: each asking for its
   * own queued a COMMIT apiece, and all but the first had nothing left but progress.
   */
  #relieve(): Promise<void> {
    return (this.#relieving ??= this.#relieveOnce().finally(() => (this.#relieving = undefined)));
  }

  async #relieveOnce(): Promise<void> {
    const pending = this.#journal.pendingWrites;
    this.#pauseAll();
    this.#log.debug("fetching paused: journal writes pending", { pending, limit: this.#opts.maxPendingWrites });
    try {
      // Written frees what waited in memory; its fsync need not hold up fetching.
      await this.#journal.commit();
    } finally {
      if (!this.#stopping) this.#toConsumer("resume", this.#topics());
    }
  }

  /**
   * order: "key": dispatches the batch into the partition's key lanes and returns once every
   * message is running or queued behind its key, so kafkajs fetches on and a slow key holds up
   * neither other keys nor other partitions. The queue bounds (count and bytes) are the only brake:
   * a message may wait long after its batch returned, so it holds copies of its bytes, not views
   * of the fetch response (one 2 KB message waiting would keep a whole response alive). Offsets are
   * resolved on dispatch (kafkajs's fetch position only); what Kafka and the journal learn is the
   * lowest unfinished offset (`lanes.next`). Before any rejoin, #quiesceLanes drains the lanes.
   */
  async #eachBatchByKey(payload: EachBatchPayload): Promise<void> {
    const { batch, resolveOffset, heartbeat, isRunning, isStale, pause } = payload;
    const pk = key(batch.topic, batch.partition);
    const state = this.#parts.get(pk);
    this.#fetched(batch);
    const slots = this.#keySlots!;
    if (!state || this.#stopping) return;
    this.#activeBatches++;
    const beat = setInterval(() => heartbeat().catch(() => {}), this.#opts.heartbeatIntervalMs);
    try {
      await state.ready;
      const lanes = (state.lanes ??= this.#lanesFor(state, slots));
      const current = () => !this.#stopping && isRunning() && !isStale() && lanes.accepting && state === this.#parts.get(pk);
      for (const m of batch.messages) {
        const offset = BigInt(m.offset);
        if (offset < lanes.dispatchedTo) continue;
        await slots.space();
        if (!current()) break;
        if (lanes.crowded) {
          // A key stuck in its retries while the others finish: fetch this partition again once
          // `next` moves (the rest of the batch is not resolved, so it comes again).
          lanes.onRoom(pause());
          break;
        }
        const message = toMessage(batch.topic, batch.partition, m, true);
        let below = offset < state.next;
        if (below) this.#behind(state, offset);
        // Finished by the previous owner above the progress it shared: done, like below it.
        else if (state.inherited.has(offset)) below = true;
        lanes.dispatch(offset, m.key ? m.key.toString("latin1") : null, messageBytes(message), this.#keyedRun(state, message, below));
        resolveOffset(m.offset);
      }
    } finally {
      clearInterval(beat);
      this.#bus.emit("consumer.polled", { handler: this.handler.name });
      this.#batchEnded();
    }
  }

  #fetched(batch: EachBatchPayload["batch"]): void {
    this.#highWatermarks.set(key(batch.topic, batch.partition), batch.highWatermark);
    this.#bus.emit("consumer.fetched", {
      handler: this.handler.name,
      group: this.handler.groupId,
      topic: batch.topic,
      partition: batch.partition,
      highWatermark: batch.highWatermark,
      position: this.#fetchPosition(batch.topic, batch.partition, batch.firstOffset() ?? undefined),
    });
  }

  /**
   * The fetch position as the lag's position. Key order fetches on past messages queued behind a
   * slow or retrying key: while the partition's lanes hold unfinished messages, the fetch says
   * nothing of them, and only the committed offset (the lowest unfinished one) counts.
   */
  #fetchPosition(topic: string, partition: number, position: string | undefined): string | undefined {
    if (position === undefined || !this.#keySlots) return position;
    return (this.#parts.get(key(topic, partition))?.lanes?.pending ?? 0) > 0 ? undefined : position;
  }

  /**
   * `defer` (partition and topic order): a message that must wait is handed back and its partition
   * paused, so kafkajs fetches on for the others. Without it (key order) the message waits in its
   * lane, which holds up only its key.
   */
  async #execute(message: KafkaMessage, below: boolean, deps: ExecutorDeps, signal: AbortSignal): Promise<Verdict> {
    this.#inflight++;
    try {
      return await execute(this.handler, message, deps, signal, below);
    } finally {
      this.#inflight--;
    }
  }

  /**
   * order: "key": a message waits for its next try without its running slot (KeySlots.without).
   * stop() ends the wait (AbortedError), also one that ended while it waited for a slot again.
   */
  #waitOffSlot = (ms: number, signal: AbortSignal): Promise<void> => this.#offSlot((until) => sleep(ms, until), signal);

  /** order: "key": a message waits for another copy of its id without its slot, as #waitOffSlot. */
  #waitForOffSlot = (other: Promise<unknown>, signal: AbortSignal): Promise<void> => this.#offSlot((until) => settledOrAborted(other, until), signal);

  /** A wait without the running slot, ended by `signal`, stop() and a rejoin (AbortedError for the last two). */
  async #offSlot(wait: (until: AbortSignal) => Promise<void>, signal: AbortSignal): Promise<void> {
    const stopping = this.#stopWaits.signal;
    const rejoining = this.#rejoinWaits.signal;
    await this.#keySlots!.without(wait(AbortSignal.any([signal, stopping, rejoining])));
    if (stopping.aborted || rejoining.aborted) throw new AbortedError();
  }

  /**
   * What execute() needs for messages of partition `pk`; `defer` as in #execute's comment.
   * `blockedAs`: the key of the /readyz reason the message sets (default: its partition's).
   */
  #deps(pk: string, defer?: (ms: number) => void, blockedAs = pk): ExecutorDeps {
    return {
      journal: this.#journal,
      bus: this.#bus,
      log: this.#log,
      dlq: this.#dlq,
      blocked: (reason) => {
        if (reason === undefined) this.#blocked.delete(blockedAs);
        else this.#blocked.set(blockedAs, reason);
      },
      retries: defer ? this.#retries : undefined,
      defer,
      wait: defer ? undefined : this.#keySlots && this.#waitOffSlot,
      waitFor: defer ? undefined : this.#keySlots && this.#waitForOffSlot,
      guard: this.#guard,
      drain: this.#stopWaits.signal,
      fence: this.#fence,
    };
  }

  // Closures that outlive the batch are made here, not in #eachBatchByKey: JavaScriptCore keeps
  // one scope object per function for every closure made in it, and that scope holds kafkajs's
  // isRunning/isStale, whose own scope holds the batch (every message, the whole fetch response).

  #lanesFor(state: PartitionState, slots: KeySlots): PartitionLanes {
    return new PartitionLanes(slots, state.next, (next) => {
      if (next > state.next) state.next = next;
      this.#journal.requestCommit();
    }, this.#abort.signal);
  }

  #keyedRun(state: PartitionState, message: KafkaMessage, below: boolean): () => Promise<boolean> {
    return () => this.#runKeyed(state, message, below);
  }

  /**
   * One message of a key lane; a blocked dead letter ("aborted" while still ours) runs again. It
   * waits for its next try in place; a rejoin (#rejoinWaits) and stop() (#stopWaits) end the wait,
   * so neither waits out the retries of a message that is not running, and it never goes on trying
   * beside the next epoch's copy of itself, or on a partition another instance owns by then.
   */
  async #runKeyed(state: PartitionState, message: KafkaMessage, below: boolean): Promise<boolean> {
    const lanes = state.lanes!;
    const rejoining = this.#rejoinWaits.signal;
    const pk = key(message.topic, message.partition);
    // Its /readyz reason (a failing dead-letter write) is its own, not its partition's: other keys
    // set and clear theirs meanwhile. It ends with this run, also when a rejoin or the drain ends
    // the wait (the next epoch's run of the message, if it waits again, says so again).
    const blockedAs = `${pk}@${message.offset}#${state.epoch}`;
    try {
      for (;;) {
        // Not #stopping: a drain runs queued messages too; the shutdown timeout aborts through the signal.
        // A drain ends only a wait for the next try (#stopWaits): then the lane stops.
        if (lanes.closed || state !== this.#parts.get(pk)) return false;
        let verdict;
        try {
          verdict = await this.#execute(message, below, this.#deps(pk, undefined, blockedAs), lanes.signal);
        } catch (err) {
          this.#lastError = errorMessage(err);
          this.#bus.emit("worker.error", { handler: this.handler.name, error: err });
          return false;
        }
        if (verdict === "done") return true;
        // Fenced: the coordinator dropped this member (a stall), so the partition is another's:
        // the lane stops as the rejoin that follows would stop it (#quiesceLanes, lost).
        if (lanes.signal.aborted || this.#stopWaits.signal.aborted || rejoining.aborted || this.#fence.out) return false;
      }
    } finally {
      this.#blocked.delete(blockedAs);
    }
  }

  /** Every partition's lanes take no more and run what they hold; resolves when all ran empty. */
  async #drainLanes(): Promise<void> {
    await Promise.all([...this.#parts.values()].map((p) => p.lanes?.drain()));
  }

  /** Every partition's lanes close (see PartitionLanes.close); resolves when their running messages ended. */
  async #closeLanes(): Promise<void> {
    await Promise.all([...this.#parts.values()].map((p) => p.lanes?.close()));
  }

  /**
   * Runs before kafkajs (re)joins the group: the lanes run what they hold (within the rebalance
   * grace), and their progress reaches Kafka or the progress log, where the partition's next
   * owner looks. Without this, a new owner with its own journal would run again what this
   * instance finished above the lowest unfinished offset, or was still running. Messages waiting
   * for their next try stop at once (#rejoinWaits), with their keys' lanes. Past the grace, queued
   * messages are dropped and running ones see ctx.signal aborted (one that finishes anyway is
   * recorded in this journal); then the new owner may run again what finished above the shared
   * offset (logged). `lost` (the coordinator no longer knew this member: its session expired
   * while the process stalled, say): the partitions have new owners already, running their
   * messages, so nothing queued may start here; the lanes close at once, as past the grace.
   */
  async #quiesceLanes(lost = false): Promise<void> {
    this.#joined = false;
    this.#rejoinWaits.abort();
    if ([...this.#parts.values()].some((p) => p.lanes && p.lanes.pending > 0)) {
      // The grace's last second goes to the aborted: their handlers mostly end at once, and one
      // that finishes meanwhile is captured as done below, not run again by the new owner. The
      // whole wait stays within the grace, so sharing progress keeps its time.
      const abortedMs = Math.min(1000, this.#graceMs / 4);
      if (lost) {
        await within(this.#closeLanes(), abortedMs);
        this.#log.warn("this member's session expired and its partitions went to others; its keyed messages stopped", { inflight: this.#inflight });
      } else if ((await within(this.#drainLanes(), this.#graceMs - abortedMs)) === TIMED_OUT) {
        await within(this.#closeLanes(), abortedMs);
        this.#log.warn("rejoining before every keyed message finished; a new owner may run some of them again", { graceMs: this.#graceMs, inflight: this.#inflight });
      }
    }
    // Idle lanes too: what finished since the last accepted offset commit (Kafka refuses commits
    // once a rebalance began) reaches Kafka or the progress log before the partitions move.
    await this.#settle().catch((err: unknown) => this.#log.warn("progress not shared before rejoining; the journal still has it", { error: err }));
  }

  /**
   * order "partition"/"topic": runs before kafkajs (re)joins the group. The batches stop and what
   * they journaled reaches Kafka's offsets or the progress log, where the partition's next owner
   * looks (guarantee 7 with separate journals), before JoinGroup is sent; a partition gets a new
   * owner only once every member rejoined (eager rebalancing), so no owner starts before this.
   *
   * Why this covers the graceful paths, in kafkajs 2.2.4 (consumer/runner.js, fetchManager.js,
   * consumerGroup.js):
   * - A rebalance noticed by a heartbeat, fetch or commit (REBALANCE_IN_PROGRESS, UNKNOWN_MEMBER_ID)
   *   throws out of a fetcher; fetchManager.start stops every fetcher, and a fetcher ends only
   *   after its workerQueue.push settled (allSettled: every batch of that fetch returned). Only
   *   then does runner.scheduleFetchManager call joinAndSync. So no batch runs here, usually.
   * - consumerGroup.recoverFromFetch (stale metadata or assignment) calls joinAndSync from inside
   *   one fetcher's fetch while batches of other fetchers (other brokers) may run: #rejoining makes
   *   them stop at the next message, and this waits for them (within the rebalance grace). The
   *   flag ends with this gate, not at the next join: a JoinGroup that fails (e.g. coordinator
   *   not available) makes kafkajs fetch on with the old assignment without a join. A batch such
   *   a fetcher starts during the JoinGroup round trip is not covered (as with the per-batch
   *   settle, whose late commit was refused then); single-broker clusters have no such fetcher.
   * - Start, and kafkajs's restart after a crash, join through joinAndSync too (a new runner); the
   *   crash itself first leaves the group through consumer.disconnect → runner.stop → leave, which
   *   passes the beforeLeave gate (settle with the group's own commit: the runner's no-ops once
   *   stopped). So does stop().
   * - Not covered: this member's session expiring (process stalled or cut off longer than the
   *   session timeout). The coordinator then rebalances without this member calling anything; the
   *   new owner sees Kafka's offsets as of the last timer commit (≈ commitIntervalMs behind) and
   *   with a separate journal may redo that work. The per-batch settle this replaces had the same
   *   hole for the batch in flight; a shared journal (libsql://) has none. The stalled member's
   *   waking is fenced instead (#fence, MemberFence in membership.ts): past the session since its
   *   last accepted heartbeat, a message its batches start and a ctx.tx or ctx.step of the
   *   message it was running first ask the coordinator, and are refused (nothing recorded) once
   *   it says the member is unknown. Not fenced: a ctx.tx body already under way at the stall
   *   (or written and waiting for the journal's COMMIT), and what a handler does outside ctx.
   *
   * The wait for running batches is the epoch's rebalance grace (#rebalanceGrace): it began here,
   * or earlier when a long batch's heartbeat was refused. That is the usual way a long message
   * meets a rebalance: kafkajs does not rejoin (nor call this) until its batch returned, and the
   * coordinator drops this member from the group once its rebalance timeout passed without it.
   * Batches started after the grace get a fresh signal, so between that drop and the rejoin the
   * fence stops them: the first heartbeat answered UNKNOWN_MEMBER_ID or ILLEGAL_GENERATION marks
   * the member out, and no message starts until a rejoin is accepted.
   */
  async #beforeRejoin(): Promise<void> {
    this.#joined = false;
    this.#rejoining = true;
    this.#wakeSlotWaits();
    try {
      if (this.#activeBatches > this.#abandoned) await Promise.race([this.#liveBatchesDone(), this.#rebalanceGrace()]);
      await this.#settle().catch((err: unknown) => this.#log.warn("progress not shared before rejoining; the journal still has it", { error: err }));
    } finally {
      this.#rejoining = false;
    }
  }

  /**
   * order "partition"/"topic": starts this epoch's rebalance grace (once; the next join ends it)
   * and resolves when it ran out. Every partition is revoked at a rejoin (eager rebalancing), and
   * past the grace the rejoin, or the coordinator's rebalance timeout, takes them from messages
   * still running; another member may start them again. #graceRanOut aborts their signal then.
   */
  #rebalanceGrace(): Promise<void> {
    if (this.#grace) return this.#grace.ends;
    let end!: () => void;
    const ends = new Promise<void>((r) => (end = r));
    const timer = setTimeout(() => {
      this.#graceRanOut();
      end();
    }, this.#graceMs);
    this.#grace = { ends, end, timer };
    this.#wakeSlotWaits();
    return ends;
  }

  /**
   * The grace ran out with batches still running: their messages' ctx.signal aborts (a handler
   * that then throws records nothing; its message is redone by the partition's next owner, this
   * instance's next epoch included). Batches started after get a fresh signal: a later epoch's,
   * or this one's if kafkajs fetches on without a join (a JoinGroup that failed).
   */
  #graceRanOut(): void {
    if (this.#activeBatches === 0) return;
    this.#log.warn("rebalance grace ran out with messages running; their ctx.signal is aborted, their partitions are revoked", {
      graceMs: this.#graceMs, inflight: this.#inflight,
    });
    this.#revoke.abort();
    this.#revoke = new AbortController();
    this.#signal = AbortSignal.any([this.#abort.signal, this.#revoke.signal]);
    // Batches let go of that still run now run a revoked epoch's messages, whose ctx calls are
    // refused: they no longer hold a slot of the handler's concurrency (else a handler ignoring
    // ctx.signal would keep the next epoch's partitions from running, concurrency 1 all of them).
    for (const g of this.#letGoParts.values()) this.#abandon(g);
    this.#wakeLiveIdle();
    // The progress of what finished is shared now, not only at the rejoin: kafkajs rejoins (and
    // runs #beforeRejoin) once the running batches returned, and past the rebalance timeout the
    // coordinator drops this member and hands its partitions out without waiting for that. Their
    // next owner, with a journal of its own, reads this at its join (Kafka's offsets, or the
    // progress log when a commit is refused in the rebalance) instead of running them again.
    void this.#settle().catch((err: unknown) => this.#log.warn("progress not shared at the grace's end; the journal still has it", { error: err }));
  }

  /** A join (or stop) ends the epoch's grace: a later rebalance gets its own. */
  #endGrace(): void {
    const g = this.#grace;
    if (!g) return;
    this.#grace = undefined;
    clearTimeout(g.timer);
    g.end();
  }

  /** order: "topic": one batch at a time per topic, whichever partition it comes from. */
  async #lockTopic(topic: string): Promise<() => void> {
    const before = this.#topicLocks.get(topic);
    let unlock!: () => void;
    const mine = new Promise<void>((r) => (unlock = r));
    const chained = (before ?? Promise.resolve()).then(() => mine);
    this.#topicLocks.set(topic, chained);
    await before;
    return () => {
      if (this.#topicLocks.get(topic) === chained) this.#topicLocks.delete(topic);
      unlock();
    };
  }

  /**
   * order: "topic": one message at a time per topic means one message in progress, retries
   * included. A message waiting for its next try lets go of the lock (its partition is paused, as
   * in partition order), but holds its topic: the other partitions' batches pause until it is done
   * (dead-lettered included), however long the wait.
   */
  #holdTopic(topic: string, partition: number, offset: bigint): void {
    const h = this.#topicHolds.get(topic);
    // The same message again. A later one of the same partition: the hold's message was passed (a
    // held message stops its partition until it is done, which releases the hold), so it came from
    // the journal or the progress log at an offset Kafka delivers no more (another owner finished
    // it): the later message holds the topic instead.
    if (h?.partition === partition && h.offset === offset) return;
    this.#topicHolds.set(topic, { partition, offset, resumes: h?.resumes ?? [] });
  }

  /**
   * A message that had failed attempts when the last run stopped (or this one rejoined), at or past
   * its partition's progress, holds its topic again until it is done; so does one that held it at
   * the previous owner when that one let go (PartitionState.waiting: its journal is not this one).
   * `inKafka`: the group's committed offsets read at this join; undefined when they could not be
   * read (or are not read: kafkaTransactions). Then `next` is only what this journal and the
   * progress log know, and a hold may be at a message another owner finished and committed past
   * since: Kafka never delivers it again, and while its partition gets no new message the hold
   * would stop the topic for good. #confirmHolds reads the offsets again until it can.
   */
  #holdFromJournal(parts: Map<string, PartitionState>, groupId: string, inKafka: Map<string, bigint> | undefined): void {
    if (parts !== this.#parts) return;
    // Holds kept from the last epoch (their partitions stayed here).
    if (inKafka) this.#releasePassed(parts, inKafka);
    for (const p of parts.values()) {
      if (this.#topicHolds.has(p.topic)) continue;
      let lowest: bigint | undefined;
      const offsets = this.#journal.failedOffsets(this.handler.name, p.topic, p.partition).map(BigInt);
      if (p.waiting !== undefined) offsets.push(p.waiting);
      for (const offset of offsets) {
        if (offset >= p.next && (lowest === undefined || offset < lowest)) lowest = offset;
      }
      if (lowest !== undefined) this.#holdTopic(p.topic, p.partition, lowest);
    }
    if (!inKafka && this.#holdsIn(parts)) void this.#confirmHolds(parts, groupId);
  }

  #holdsIn(parts: Map<string, PartitionState>): boolean {
    for (const [topic, h] of this.#topicHolds) if (parts.has(key(topic, h.partition))) return true;
    return false;
  }

  /**
   * order: "topic", Kafka's committed offsets unknown at the join: reads them again (backing off
   * up to 30 s) while this epoch lasts and holds remain, and releases a hold Kafka has committed
   * past (#releasePassed).
   */
  async #confirmHolds(parts: Map<string, PartitionState>, groupId: string): Promise<void> {
    const assignment = this.#assignment;
    for (let attempt = 1; ; attempt++) {
      try {
        await sleep(Math.min(30_000, 500 * 2 ** attempt), this.#stopWaits.signal);
      } catch {
        return; // stopping
      }
      if (parts !== this.#parts || !this.#holdsIn(parts)) return;
      try {
        const inKafka = await this.#withAdmin((admin) => this.#readCommitted(groupId, assignment, admin));
        if (parts !== this.#parts) return;
        this.#log.info("read the group's committed offsets again; checking the topic holds against them", { attempt });
        this.#releasePassed(parts, inKafka);
        return;
      } catch (err) {
        this.#log.debug("still cannot read the group's committed offsets; the topic holds stay", { attempt, error: err });
      }
    }
  }

  /**
   * Releases each hold whose message Kafka's committed offset is past: an owner finished it (or
   * dead-lettered it) and committed, so it waits no more, and Kafka never delivers it again.
   */
  #releasePassed(parts: Map<string, PartitionState>, inKafka: Map<string, bigint>): void {
    for (const [topic, h] of [...this.#topicHolds]) {
      const k = key(topic, h.partition);
      const committed = inKafka.get(k);
      if (!parts.has(k) || committed === undefined || committed <= h.offset) continue;
      this.#log.info("releasing the topic: Kafka's committed offset is past the message that held it", {
        topic, partition: h.partition, offset: h.offset.toString(), committed: committed.toString(),
      });
      this.#releaseTopic(topic, h.partition, h.offset);
    }
  }

  /** A message of `partition` at or past the hold's offset is done (or the partition is gone). */
  #releaseTopic(topic: string, partition: number, offset: bigint): void {
    const h = this.#topicHolds.get(topic);
    if (!h || h.partition !== partition || offset < h.offset) return;
    this.#topicHolds.delete(topic);
    for (const resume of h.resumes) resume();
  }

  // ---- progress and commits ----

  /**
   * Journal durable, then offsets committed; if Kafka refuses (rebalance), progress published.
   * `via`: commit through this instead of the consumer (see beforeLeave).
   */
  async #settle(via?: CommitVia): Promise<void> {
    // What this epoch knows of Kafka's offsets and the previous owner's (bounded, never rejects).
    await Promise.all([...this.#parts.values()].map((p) => p.ready));
    // order "key": what finished above `next` so far, made durable by the flush below.
    const done = this.#doneAbove();
    await this.#journal.flush();
    const log = this.#progressLog;
    let refused = false;
    try {
      await this.#commitOffsets(via);
    } catch (err) {
      if (!log) throw err;
      refused = true;
    }
    if (!log) return;
    const records: ProgressRecord[] = [];
    for (const p of this.#parts.values()) {
      const above = done.get(p)?.from(p.durable);
      // order "topic": the message holding its topic while it waits for its next try; the topic's
      // next owner holds it too (its journal knows nothing of the failed attempts).
      const hold = this.#topicHolds.get(p.topic);
      const waiting = hold?.partition === p.partition ? hold.offset : undefined;
      if ((refused && p.durable >= 0n && p.durable > p.committed) || (above && !above.empty) || waiting !== undefined) {
        records.push({ groupId: this.handler.groupId, topic: p.topic, partition: p.partition, next: p.durable, done: above, waiting });
      }
    }
    if (records.length === 0) return;
    await log.publish(records);
    this.#log.info(refused ? "offset commit refused; progress published for the next owner" : "progress above the committed offset published for the next owner", {
      partitions: records.map((r) => `${r.topic}/${r.partition}@${r.next}${r.done && !r.done.empty ? ` +${r.done.ranges.length} done ranges` : ""}${r.waiting !== undefined ? ` waiting at ${r.waiting}` : ""}`),
    });
  }

  /**
   * order "key": per partition, the offsets finished above `next` (by this instance, or by the
   * previous owner and not yet passed): a new owner with its own journal must not run them again.
   */
  #doneAbove(): Map<PartitionState, OffsetRanges> {
    const out = new Map<PartitionState, OffsetRanges>();
    if (!this.#keySlots) return out;
    for (const p of this.#parts.values()) {
      const finished = p.lanes?.finishedAbove() ?? [];
      if (finished.length === 0 && p.inherited.empty) continue;
      out.set(p, OffsetRanges.of(finished).with(p.inherited));
    }
    return out;
  }

  #progressToJournal(): ProgressEntry[] {
    const out: ProgressEntry[] = [];
    for (const p of this.#parts.values()) {
      const next = p.next;
      if (next > p.journaled) {
        out.push({ groupId: this.handler.groupId, topic: p.topic, partition: p.partition, nextOffset: next });
        p.journaled = next;
      }
    }
    return out;
  }

  #hasProgress(): boolean {
    for (const p of this.#parts.values()) if (p.next > p.journaled) return true;
    return false;
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

  async #commitOffsets(via?: CommitVia): Promise<void> {
    while (this.#committing) await this.#committing.catch(() => {});
    const commit = via ?? commitThrough(this.handler.groupId);
    if (!commit) return;
    const todo = [...this.#parts.values()].filter((p) => p.durable >= 0n && p.durable > p.committed);
    if (todo.length === 0) return;
    const offsets = todo.map((p) => ({ topic: p.topic, partition: p.partition, offset: p.durable.toString() }));
    const done = todo.map((p) => [p, p.durable] as const);
    crashPoint("offsets.commit");
    this.#committing = (this.#txOut ? this.#txOut.commit(offsets) : commit(offsets))
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

/**
 * `copy`: key, value and header values copied out of the fetch response, whose views kafkajs
 * hands out (Buffer.slice): for a message kept after its batch returned (key lanes).
 */
function toMessage(
  topic: string,
  partition: number,
  m: EachBatchPayload["batch"]["messages"][number],
  copy = false,
): KafkaMessage {
  const headers = fromKafkajs(m.headers, copy);
  const message: KafkaMessage = {
    topic,
    partition,
    offset: m.offset,
    key: m.key ? (copy ? Buffer.from(m.key) : m.key) : null,
    value: m.value ? (copy ? Buffer.from(m.value) : m.value) : null,
    headers,
    timestamp: m.timestamp,
  };
  // kafkajs keeps it on the record batch (-1: the producer's, or a broker's, that set none).
  const leaderEpoch = (m as { batchContext?: { partitionLeaderEpoch?: unknown } }).batchContext?.partitionLeaderEpoch;
  if (typeof leaderEpoch === "number" && leaderEpoch >= 0) message.leaderEpoch = leaderEpoch;
  return message;
}

/** What a message waiting in a key lane holds in memory, near enough (every header value counted). */
function messageBytes(message: KafkaMessage): number {
  return 100 + (message.key?.length ?? 0) + (message.value?.length ?? 0) + headerBytes(allHeaders(message));
}

/**
 * A handler's RegExp topic as kafkajs matches it: once, against the topics the broker lists at
 * subscribe time, through test(). A g or y flag would make test() stateful, so only the other
 * flags are kept. It never matches Kafka's and kexo's internal topics (`__…`, unless the pattern
 * names them), nor the handler's own dead-letter topic of a topic it matches: /^orders/ matches
 * `orders.dlq` too, whose letters would come back to the handler, and theirs go to
 * `orders.dlq.dlq`, and so on.
 */
export class TopicPattern extends RegExp {
  readonly #deadLetterOf: (topic: string) => string | false;
  readonly #internal: boolean;

  constructor(pattern: RegExp, deadLetterOf: (topic: string) => string | false) {
    super(pattern.source, pattern.flags.replace(/[gy]/g, ""));
    this.#deadLetterOf = deadLetterOf;
    this.#internal = pattern.source.includes("__");
  }

  override test(topic: string): boolean {
    if (!super.test(topic)) return false;
    if (topic.startsWith("__") && !this.#internal) return false;
    const dot = topic.lastIndexOf(".");
    // The default dead-letter topic is `${topic}.dlq`; a named one the handler consumes is refused at load.
    return !(dot > 0 && this.#deadLetterOf(topic.slice(0, dot)) === topic && super.test(topic.slice(0, dot)));
  }
}
