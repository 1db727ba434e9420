// The outbox relay: publishes the journal's committed kexo_outbox rows (ctx.emit) to Kafka in
// emit order, and deletes them once the broker acknowledged them.
//
// Invariants:
// - A row goes out only after the journal transaction that wrote it committed and is on disk:
//   the relay reads rows up to the seq that "journal.committed" reports (read at COMMIT, before
//   any later write, and announced after the fsync).
// - Rows go out in seq order, one request at a time, acks from all in-sync replicas: per topic and
//   partition, the order on the wire is the emit order.
// - A row is deleted only after its acknowledgement. A crash in between publishes it again on the
//   next start (at least once), with the same `kexo-id` header, which a downstream kexo dedups on:
//   exactly-once effects across a chain without Kafka transactions.
// - Rows of handlers with kafkaTransactions are not the relay's: they go out in the handler's
//   Kafka transaction (src/outbox/transactional.ts).
import type { Kafka, Producer } from "kafkajs";
import { crashPoint } from "../debug-point.ts";
import { errorMessage } from "../errors.ts";
import type { EventBus } from "../events.ts";
import { decodeHeaders, type Journal } from "../journal/journal.ts";
import type { WireHeaders } from "../kafka/headers.ts";
import type { Logger } from "../log.ts";
import { backoff } from "../processing/executor.ts";
import { within } from "../timeout.ts";
import { createOutboxPartitioner } from "../kafka/partitioner.ts";
import type { EnsureTopics } from "../kafka/topics.ts";
import { CREATE_TOPIC_HINT, refusedAsTooLarge, sendCreatingTopics } from "../kafka/produce-errors.ts";

export interface OutboxRow {
  seq: number;
  handler: string;
  topic: string;
  key: ArrayBuffer | null;
  value: ArrayBuffer | null;
  headers: string;
  partition: number | null;
}

export interface RelayDeps {
  kafka: Kafka;
  journal: Journal;
  bus: EventBus;
  log: Logger;
  /** Creates missing topics where the broker allows it (kafka/topics.ts; dev broker: mock API). */
  ensureTopics?: EnsureTopics;
  /** Handlers whose rows go out in Kafka transactions, not through the relay. */
  exceptHandlers?: string[];
}

const BATCH = 500;
/**
 * Bytes of keys, values and headers per request. Kafka measures its max.message.bytes (1 MB by
 * default) against a partition's whole record batch, and kafkajs puts every record of a request
 * for one partition into one batch: 500 rows of 3 KB would be refused for good, every time.
 */
const BATCH_BYTES = 512 * 1024;

/** A row's size on the wire, near enough (headers as their JSON text). */
function rowBytes(r: OutboxRow): number {
  return (r.key?.byteLength ?? 0) + (r.value?.byteLength ?? 0) + r.headers.length + 64;
}

/** The longest prefix of `rows` within `maxBytes`, and never fewer than one row. */
export function takeWithin(rows: OutboxRow[], maxBytes: number): OutboxRow[] {
  let total = 0;
  for (let i = 0; i < rows.length; i++) {
    total += rowBytes(rows[i]!);
    if (total > maxBytes) return rows.slice(0, Math.max(1, i));
  }
  return rows;
}

/** Rows as kafkajs topicMessages, in seq order per topic. */
export function toTopicMessages(rows: OutboxRow[]) {
  const byTopic = new Map<string, { key: Buffer | null; value: Buffer | null; headers: WireHeaders; partition?: number }[]>();
  for (const r of rows) {
    let list = byTopic.get(r.topic);
    if (!list) byTopic.set(r.topic, (list = []));
    // libsql returns BLOBs as ArrayBuffers; kafkajs encodes only Buffers (or strings) correctly.
    list.push({ key: r.key === null ? null : Buffer.from(r.key), value: r.value === null ? null : Buffer.from(r.value), headers: decodeHeaders(r.headers), ...(r.partition === null ? {} : { partition: r.partition }) });
  }
  return [...byTopic].map(([topic, messages]) => ({ topic, messages }));
}

export class OutboxRelay {
  #deps: RelayDeps;
  #log: Logger;
  #producer: Producer;
  #connected = false;
  #except: string;
  /** Highest seq known committed. */
  #watermark = 0;
  /** Every row up to here (not excepted) is published. */
  #published = 0;
  /**
   * Rows (not excepted) in (#published, #watermark]: counted whole once at start, then by the range
   * each commit adds and the rows each publish deletes. A count(*) per report scanned every pending
   * row (≈ 110 ms per million) after each request of 500: draining 1M rows took 156 s, 250k 14 s.
   * Rows an operator deletes stay counted until the outbox is empty (it is 0 then by definition).
   */
  #count = 0;
  /** Bytes per request now: BATCH_BYTES, or less while the broker refuses requests as too large. */
  #maxBytes = BATCH_BYTES;
  #wake: (() => void) | undefined;
  #stopping = false;
  #loop: Promise<void> | undefined;
  #off: () => void = () => {};

  constructor(deps: RelayDeps) {
    this.#deps = deps;
    this.#log = deps.log.child({ component: "outbox" });
    this.#producer = deps.kafka.producer({ allowAutoTopicCreation: true, createPartitioner: createOutboxPartitioner, retry: { retries: 5, initialRetryTime: 200, maxRetryTime: 5000 } });
    this.#except = (deps.exceptHandlers ?? []).map((h) => `'${h.replaceAll("'", "''")}'`).join(",");
  }

  /** Starts publishing what a previous run left, then every commit's rows. */
  start(): void {
    this.#watermark = this.#maxSeq();
    this.#count = this.#countRange(0, this.#watermark);
    this.#off = this.#deps.bus.on("journal.committed", (e) => {
      if (e.outboxSeq === undefined || e.outboxSeq <= this.#watermark) return;
      this.#count += this.#countRange(this.#watermark, e.outboxSeq);
      this.#watermark = e.outboxSeq;
      this.#wake?.();
    });
    this.#loop = this.#run();
  }

  /** Publishes what is committed, for up to `timeoutMs`; then stops. */
  async stop(timeoutMs: number): Promise<void> {
    // Once flushed, journal.committed has moved the watermark past everything committed.
    await this.#deps.journal.flush().catch(() => {});
    this.#stopping = true;
    this.#wake?.();
    this.#off();
    if (this.#loop) await within(this.#loop, timeoutMs);
    if (this.#published < this.#watermark && this.#count > 0) {
      this.#log.warn("outbox not empty at shutdown; the next start publishes the rest", { pending: this.#count });
    }
    if (this.#connected) await this.#producer.disconnect().catch(() => {});
  }

  #maxSeq(): number {
    return this.#deps.journal.query<{ m: number | null }>("SELECT max(seq) AS m FROM kexo_outbox")[0]?.m ?? 0;
  }

  #where(): string {
    return this.#except ? ` AND handler NOT IN (${this.#except})` : "";
  }

  #countRange(after: number, upto: number): number {
    return this.#deps.journal.query<{ n: number }>(`SELECT count(*) AS n FROM kexo_outbox WHERE seq > ? AND seq <= ?${this.#where()}`, after, upto)[0]!.n;
  }

  #report(): void {
    if (this.#published >= this.#watermark) this.#count = 0;
    if (this.#deps.bus.has("outbox.pending")) this.#deps.bus.emit("outbox.pending", { count: this.#count });
  }

  async #run(): Promise<void> {
    let failures = 0;
    for (;;) {
      if (this.#published >= this.#watermark) {
        this.#report();
        if (this.#stopping) return;
        await new Promise<void>((r) => (this.#wake = r));
        this.#wake = undefined;
        continue;
      }
      const upto = this.#watermark;
      const all = this.#deps.journal.query<OutboxRow>(
        `SELECT seq, handler, topic, key, value, headers, partition FROM kexo_outbox WHERE seq > ? AND seq <= ?${this.#where()} ORDER BY seq LIMIT ${BATCH}`,
        this.#published,
        upto,
      );
      const rows = takeWithin(all, this.#maxBytes);
      const last = rows.length < all.length || all.length === BATCH ? rows[rows.length - 1]!.seq : upto;
      try {
        if (rows.length > 0) await this.#send(rows);
        failures = 0;
        this.#maxBytes = BATCH_BYTES;
      } catch (err) {
        if (refusedAsTooLarge(err) && rows.length > 1) {
          // The broker's limit is below ours: halve until the rows pass, or one row alone is refused.
          this.#maxBytes = Math.max(1, Math.floor(rows.reduce((n, r) => n + rowBytes(r), 0) / 2));
          this.#log.warn("the broker refused an outbox request as too large; sending fewer records per request", { rows: rows.length, nextMaxBytes: this.#maxBytes, error: err });
          continue;
        }
        if (refusedAsTooLarge(err)) {
          err = new Error(
            `outbox record ${rows[0]!.seq} of handler ${rows[0]!.handler} (${rowBytes(rows[0]!)} bytes) is larger than ${rows[0]!.topic} takes ` +
              `(${errorMessage(err)}); it and the records after it wait: raise the topic's max.message.bytes (and the broker's), or delete the row from kexo_outbox`,
            { cause: err },
          );
        }
        failures++;
        // Rows wait while publishing fails: the gauge shows them (it stayed at its last value).
        this.#report();
        const wait = backoff(failures, 200, 10_000);
        this.#log.error("outbox publish failed; retrying", { topics: [...new Set(rows.map((r) => r.topic))], rows: rows.length, tries: failures, nextTryInMs: wait, error: err });
        if (this.#stopping && failures > 3) return;
        await new Promise((r) => setTimeout(r, wait));
        continue;
      }
      crashPoint("outbox.published");
      // Acknowledged: the rows may go (group-committed; a crash before that commit republishes them).
      this.#deps.journal.write(`DELETE FROM kexo_outbox WHERE seq > ? AND seq <= ?${this.#where()}`, this.#published, last);
      this.#published = last;
      // `rows` are every row of (published, last] the relay sends (ORDER BY seq, a prefix of them).
      this.#count -= rows.length;
      this.#report();
    }
  }

  async #send(rows: OutboxRow[]): Promise<void> {
    if (!this.#connected) {
      await this.#producer.connect();
      this.#connected = true;
    }
    // A topic nobody made (a cluster without auto-creation) is asked for, then sent once more.
    // Asked only then, not before a first send: most topics exist, and the ask costs an admin
    // connection.
    const topics = [...new Set(rows.map((r) => r.topic))];
    const acked = await sendCreatingTopics(
      () => this.#producer.sendBatch({ acks: -1, timeout: 10_000, topicMessages: toTopicMessages(rows) }),
      topics,
      this.#deps.ensureTopics,
      (cause, uncreated) => missingTopic(topics, uncreated, cause),
    );
    // kafkajs drops, without a word, records for a partition the topic does not have: each
    // partition a record named must be in the acknowledgement, or its rows stay to be sent again.
    const got = new Set(acked.map((m) => `${m.topicName}\0${m.partition}`));
    const lost = rows.find((r) => r.partition !== null && !got.has(`${r.topic}\0${r.partition}`));
    if (lost) {
      throw new Error(
        `outbox record ${lost.seq} of handler ${lost.handler} names partition ${lost.partition} of ${lost.topic}, which the broker did not acknowledge ` +
          "(the topic has fewer partitions?); it and the records after it wait: add partitions to the topic, or delete the row from kexo_outbox",
      );
    }
  }
}

/** An outbox topic missing, with why kexo could not create it (`uncreated`, when it asked). */
function missingTopic(topics: string[], uncreated: Map<string, string> | undefined, cause: unknown): Error {
  const why = uncreated?.size ? `; kexo could not create ${[...uncreated].map(([t, w]) => `${t} (${w})`).join(", ")}` : "";
  return new Error(
    `outbox topic missing (${topics.join(", ")})${why}: ` +
      `${CREATE_TOPIC_HINT}; ${errorMessage(cause)}`,
    { cause },
  );
}
