// Kafka transactions for a handler with `kafkaTransactions: true`: its emits and its consumed
// offsets reach Kafka in one transaction, so a consumer reading with isolation read_committed
// sees every output exactly once, without a kexo on the reading side.
//
// How this combines with the journal (the journal commits first, Kafka second):
// - A message's completion, its ctx.tx writes and its emits (kexo_outbox rows) commit together
//   in the journal, as for every handler. The relay leaves these rows alone.
// - Then one Kafka transaction per offset commit: the rows of the messages below each partition's
//   durable progress, in emit order, plus sendOffsets(progress) for the handler's group, commit.
//   Only after that commit are the rows deleted from the journal.
// - Kafka's committed offset for the group moves only inside these transactions, so it says
//   exactly which rows are in Kafka: a row whose message offset is below it was published.
// Crash windows:
// 1. Before the journal commit: nothing is recorded; Kafka redelivers and the message runs again.
// 2. After the journal commit, before the Kafka commit: the open transaction is aborted (when the
//    producer with the same transactional id starts again, or by the broker's transaction
//    timeout), so read_committed consumers never see it. The message is redelivered from Kafka's
//    older offset and deduplicated by the journal; its rows, still there, go out in the next
//    transaction together with the offsets.
// 3. After the Kafka commit, before the rows are deleted: on assignment, rows of messages below
//    Kafka's committed offset are deleted unpublished (reconcile), so nothing goes out twice.
// Limits: the transactional id is per handler and client id (`--client-id`), so a restarted
// instance fences its own previous incarnation; two live instances with different client ids
// that both believe they own a partition (a zombie during a rebalance) are not fenced against
// each other (that needs one transactional id per input partition, or KIP-447, which kafkajs
// lacks). Rows of a partition this instance no longer owns wait until it is assigned back.
import type { Kafka, Producer } from "kafkajs";
import { crashPoint } from "../debug-point.ts";
import type { Journal } from "../journal/journal.ts";
import type { Logger } from "../log.ts";
import { type OutboxRow, toTopicMessages } from "./relay.ts";
import { createOutboxPartitioner } from "../kafka/partitioner.ts";

export interface PartitionOffset {
  topic: string;
  partition: number;
  /** Next offset to consume, as committed to Kafka. */
  offset: string;
}

const SOURCE_JOIN = `FROM kexo_outbox o JOIN kexo_messages m ON m.handler = o.handler AND m.id = o.message_id
  WHERE o.handler = ? AND m.topic = ? AND m.partition = ? AND m."offset" < ?`;

export class TransactionalOutput {
  #kafka: Kafka;
  #journal: Journal;
  #log: Logger;
  #handler: string;
  #groupId: string;
  #producer: Producer;
  #connected: Promise<void> | undefined;
  #reconciled: Promise<void> = Promise.resolve();

  constructor(deps: { kafka: Kafka; journal: Journal; log: Logger }, handler: string, groupId: string, clientId: string) {
    this.#kafka = deps.kafka;
    this.#journal = deps.journal;
    this.#log = deps.log.child({ component: "kafka-transactions", handler });
    this.#handler = handler;
    this.#groupId = groupId;
    this.#producer = deps.kafka.producer({
      // A transactional id makes kafkajs's producer idempotent; also setting idempotent: true
      // sends InitProducerId to the controller, which the development broker lacks.
      transactionalId: `kexo-tx-${groupId}-${clientId}`.slice(0, 255),
      maxInFlightRequests: 1,
      allowAutoTopicCreation: true,
      createPartitioner: createOutboxPartitioner,
    });
  }

  /**
   * On assignment: rows of messages below Kafka's committed offset went out in a committed
   * transaction (crash window 3); they are deleted, never published again.
   */
  reconcile(assignment: Record<string, number[]>): Promise<void> {
    this.#reconciled = this.#reconcile(assignment).catch((err: unknown) => {
      this.#log.error("could not read committed offsets; transactions wait for the next assignment", { error: err });
      throw err;
    });
    return this.#reconciled.catch(() => {});
  }

  async #reconcile(assignment: Record<string, number[]>): Promise<void> {
    const topics = Object.keys(assignment);
    if (topics.length === 0) return;
    const admin = this.#kafka.admin();
    await admin.connect();
    try {
      const committed = await admin.fetchOffsets({ groupId: this.#groupId, topics });
      for (const { topic, partitions } of committed) {
        for (const { partition, offset } of partitions) {
          if (!assignment[topic]?.includes(partition) || Number(offset) < 0) continue;
          this.#journal.write(`DELETE FROM kexo_outbox WHERE seq IN (SELECT o.seq ${SOURCE_JOIN})`, this.#handler, topic, partition, BigInt(offset));
        }
      }
      await this.#journal.flush();
    } finally {
      await admin.disconnect().catch(() => {});
    }
  }

  /**
   * Publishes the rows of every message below `offsets` and commits the offsets, in one Kafka
   * transaction; then deletes the rows. `offsets` must not pass the journal's durable progress.
   */
  async commit(offsets: PartitionOffset[]): Promise<void> {
    await this.#reconciled;
    this.#connected ??= this.#producer.connect().catch((err: unknown) => {
      this.#connected = undefined;
      throw err;
    });
    await this.#connected;
    const rows: OutboxRow[] = [];
    for (const o of offsets) {
      rows.push(...this.#journal.query<OutboxRow>(
        `SELECT o.seq, o.handler, o.topic, o.key, o.value, o.headers, o.partition ${SOURCE_JOIN} ORDER BY o.seq`,
        this.#handler, o.topic, o.partition, BigInt(o.offset),
      ));
    }
    rows.sort((a, b) => a.seq - b.seq);
    const tx = await this.#producer.transaction();
    try {
      if (rows.length > 0) await tx.sendBatch({ acks: -1, topicMessages: toTopicMessages(rows) });
      await tx.sendOffsets({
        consumerGroupId: this.#groupId,
        topics: [...new Set(offsets.map((o) => o.topic))].map((topic) => ({
          topic,
          partitions: offsets.filter((o) => o.topic === topic).map((o) => ({ partition: o.partition, offset: o.offset })),
        })),
      });
      crashPoint("kafka-tx.sent");
      await tx.commit();
    } catch (err) {
      await tx.abort().catch(() => {});
      throw err;
    }
    crashPoint("kafka-tx.committed");
    if (rows.length > 0) {
      const seqs = rows.map((r) => r.seq);
      for (let i = 0; i < seqs.length; i += 500) {
        const part = seqs.slice(i, i + 500);
        this.#journal.write(`DELETE FROM kexo_outbox WHERE seq IN (${part.map(() => "?").join(",")})`, ...part);
      }
    }
  }

  async close(): Promise<void> {
    if (this.#connected) await this.#producer.disconnect().catch(() => {});
  }
}
