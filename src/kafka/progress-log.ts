// The progress log: a Kafka topic where an instance records a partition's journaled progress when
// Kafka refused its offset commit (a rebalance had begun), and, for order "key", the offsets it
// finished above that progress; for order "topic", the message that holds its topic while it waits
// for its next try. kexo needs only each partition's latest record, so the topic may be
// compacted (the broker's auto-creation makes it with its defaults). The next owner reads the
// log to its end on assignment and skips what the previous owner already did, so a graceful
// rebalance handles no message twice even when every instance has its own journal.
//
// Why a topic: the development broker rejects OffsetCommit as soon as a group starts joining,
// while real Kafka accepts commits until it syncs; a produce is accepted in either. The previous
// owner publishes before its batch returns, so before it rejoins, so before the new owner is
// assigned the partition: the new owner's read to the end always sees it.
import { randomUUID } from "node:crypto";
import type { Admin, Consumer, Kafka, Producer } from "kafkajs";
import type { Logger } from "../log.ts";
import { TIMED_OUT, within } from "../timeout.ts";
import { OffsetRanges } from "./offset-ranges.ts";
import { createPartitioner } from "./partitioner.ts";

export const PROGRESS_TOPIC = "__kexo_progress";

export interface ProgressRecord {
  groupId: string;
  topic: string;
  partition: number;
  next: bigint;
  /**
   * order: "key": offsets at or above `next` that are done too (their messages finished while a
   * lower one of another key had not, when the partition had to move on). The latest record of a
   * partition carries every such offset its writer knew of, inherited ones included.
   */
  done?: OffsetRanges;
  /**
   * order: "topic": the offset (at or above `next`) of the message waiting for its next try that
   * holds the topic: its next owner holds the topic too until it is done. The latest record of a
   * partition says it; one without it says nothing waits.
   */
  waiting?: bigint;
}

const keyOf = (groupId: string, topic: string, partition: number) => `${groupId}\u0000${topic}\u0000${partition}`;

export class ProgressLog {
  #kafka: Kafka;
  #log: Logger;
  #clientId: string;
  #consumer: Consumer | undefined;
  #producer: Producer | undefined;
  #producerReady: Promise<void> | undefined;
  #latest = new Map<string, bigint>();
  /** Per partition, every `done` offset read or published, at or above its latest `next` (absent: none). */
  #done = new Map<string, OffsetRanges>();
  /** Per partition, the latest record's `waiting` (absent: none). */
  #waiting = new Map<string, bigint>();
  /** Next offset to read, per partition of the progress topic. */
  #position = new Map<number, bigint>();
  #joined: Promise<void>;
  #stopped = false;
  #onJoined!: () => void;

  constructor(kafka: Kafka, log: Logger, clientId: string) {
    this.#kafka = kafka;
    this.#log = log.child({ component: "progress-log" });
    this.#clientId = clientId;
    this.#joined = new Promise((r) => (this.#onJoined = r));
  }

  /** Starts tailing the log (its own throwaway group: every instance reads all of it). */
  async start(): Promise<void> {
    const consumer = this.#kafka.consumer({
      groupId: `kexo-progress-${this.#clientId}-${randomUUID()}`,
      sessionTimeout: 6000,
      heartbeatInterval: 500,
      maxWaitTimeInMs: 100,
    });
    this.#consumer = consumer;
    consumer.on(consumer.events.GROUP_JOIN, () => this.#onJoined());
    // kafkajs does not restart after an error it deems fatal (e.g. GROUP_AUTHORIZATION_FAILED on
    // a group call): start a new consumer, or the log would silently stop being read.
    consumer.on(consumer.events.CRASH, (e) => {
      // kafkajs may report one crash twice: only the current consumer's first report counts.
      if (e.payload.restart || this.#stopped || consumer !== this.#consumer) return;
      this.#consumer = undefined;
      this.#log.warn("progress log consumer crashed and kafkajs will not restart it; starting a new one", { error: e.payload.error });
      void consumer.disconnect().catch(() => {}).then(() => this.#restart());
    });
    await consumer.connect();
    await consumer.subscribe({ topics: [PROGRESS_TOPIC], fromBeginning: true });
    await consumer.run({
      autoCommit: false,
      eachBatch: async ({ batch }) => {
        for (const m of batch.messages) {
          if (m.key && m.value) this.#read(m.key.toString(), m.value.toString(), batch.partition, m.offset);
          this.#position.set(batch.partition, BigInt(m.offset) + 1n);
        }
        if (batch.messages.length === 0) {
          const hw = BigInt(batch.highWatermark);
          if (hw > (this.#position.get(batch.partition) ?? 0n)) this.#position.set(batch.partition, hw);
        }
      },
    });
  }

  /**
   * Resolves once everything published before this call has been read (or after `timeoutMs`,
   * logged: processing goes on with the journal and Kafka's offsets alone). `admin`: a connected
   * admin client the caller shares with its other reads at the same join.
   */
  async caughtUp(admin: Promise<Admin>, timeoutMs = 15_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    try {
      if ((await within(this.#joined, timeoutMs)) === TIMED_OUT) throw new Error("progress log not joined");
      const ends = await (await admin).fetchTopicOffsets(PROGRESS_TOPIC);
      while (ends.some((e) => (this.#position.get(e.partition) ?? 0n) < BigInt(e.high))) {
        if (Date.now() > deadline) throw new Error("timed out reading the progress log to its end");
        await new Promise((r) => setTimeout(r, 20));
      }
    } catch (err) {
      this.#log.warn("progress log not read to its end; relying on the journal and Kafka offsets", { error: err });
    }
  }

  /** One record of the log; one that is not ours (or garbled) is logged and skipped. */
  #read(key: string, value: string, partition: number, offset: string): void {
    let next: bigint;
    let done: OffsetRanges | undefined;
    let waiting: bigint | undefined;
    try {
      const parsed = JSON.parse(value) as { next?: unknown; done?: unknown; waiting?: unknown };
      next = BigInt(String(parsed.next));
      if (parsed.waiting !== undefined) waiting = BigInt(String(parsed.waiting));
      if (parsed.done !== undefined) {
        done = OffsetRanges.decode(parsed.done);
        if (!done) throw new Error("`done` is not a list of [first, last] offset pairs");
      }
    } catch (err) {
      this.#log.warn("skipping an unreadable progress record", { topic: PROGRESS_TOPIC, partition, offset, error: err });
      return;
    }
    this.#remember(key, next, done, waiting);
  }

  #remember(key: string, next: bigint, done: OffsetRanges | undefined, waiting: bigint | undefined): void {
    if (next > (this.#latest.get(key) ?? -1n)) this.#latest.set(key, next);
    if (waiting === undefined) this.#waiting.delete(key);
    else this.#waiting.set(key, waiting);
    // Done offsets stay done: a later record without them (or with fewer) takes none away.
    // Below the partition's progress they say nothing more.
    const known = this.#done.get(key);
    if ((done && !done.empty) || known) {
      const all = (known ?? OffsetRanges.EMPTY).with(done ?? OffsetRanges.EMPTY).from(this.#latest.get(key)!);
      if (all.empty) this.#done.delete(key);
      else this.#done.set(key, all);
    }
  }

  get(groupId: string, topic: string, partition: number): bigint | undefined {
    return this.#latest.get(keyOf(groupId, topic, partition));
  }

  /** order: "key": offsets a previous owner finished above the partition's progress. */
  done(groupId: string, topic: string, partition: number): OffsetRanges {
    return this.#done.get(keyOf(groupId, topic, partition)) ?? OffsetRanges.EMPTY;
  }

  /** order: "topic": the offset of the message that held the topic when its last owner let go. */
  waiting(groupId: string, topic: string, partition: number): bigint | undefined {
    return this.#waiting.get(keyOf(groupId, topic, partition));
  }

  /** Resolves once every record is acknowledged by all in-sync replicas. */
  async publish(records: ProgressRecord[]): Promise<void> {
    if (records.length === 0) return;
    this.#producer ??= this.#kafka.producer({ allowAutoTopicCreation: true, createPartitioner });
    this.#producerReady ??= this.#producer.connect().catch((err: unknown) => {
      this.#producerReady = undefined;
      throw err;
    });
    await this.#producerReady;
    const encode = (r: ProgressRecord) => ({
      key: keyOf(r.groupId, r.topic, r.partition),
      value: JSON.stringify({ next: r.next.toString(), at: new Date().toISOString(), ...(r.done && !r.done.empty ? { done: r.done.encode() } : {}),
        ...(r.waiting !== undefined ? { waiting: r.waiting.toString() } : {}) }),
    });
    // A record with done ranges may be large: each goes in a request of its own, so that one never
    // takes the others past the topic's max.message.bytes.
    const large = (r: ProgressRecord) => (r.done?.ranges.length ?? 0) >= 100;
    for (const part of [records.filter((r) => !large(r)), ...records.filter(large).map((r) => [r])]) {
      if (part.length > 0) await this.#producer.send({ topic: PROGRESS_TOPIC, acks: -1, messages: part.map(encode) });
    }
    for (const r of records) this.#remember(keyOf(r.groupId, r.topic, r.partition), r.next, r.done, r.waiting);
  }

  async #restart(): Promise<void> {
    for (let attempt = 1; !this.#stopped; attempt++) {
      try {
        await this.start();
        return;
      } catch (err) {
        this.#log.warn("progress log consumer restart failed; retrying", { attempt, error: err });
        await new Promise((r) => setTimeout(r, Math.min(10_000, 500 * attempt)));
      }
    }
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    await Promise.all([this.#consumer?.disconnect().catch(() => {}), this.#producerReady ? this.#producer?.disconnect().catch(() => {}) : undefined]);
  }
}
