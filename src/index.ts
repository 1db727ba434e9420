// The public API of kexo: what handler files import as "kexo". Everything here is a contract.
import * as v from "valibot";
import type { Logger } from "./log.ts";
export { PermanentError } from "./errors.ts";
export { v };

/** A Kafka message as kafkajs gives it. */
export interface KafkaMessage {
  topic: string;
  partition: number;
  /** Offset as a decimal string. */
  offset: string;
  key: Buffer | null;
  value: Buffer | null;
  headers: Record<string, Buffer | undefined>;
  /** Broker or producer timestamp, milliseconds as a decimal string. */
  timestamp: string;
  leaderEpoch?: number;
}

export type InValue = null | string | number | bigint | boolean | ArrayBuffer | Uint8Array | Date;
export type InStatement = string | { sql: string; args?: InValue[] | Record<string, InValue> };

export interface ResultSet {
  columns: string[];
  /** Each row as an object keyed by column name. */
  rows: Record<string, unknown>[];
  rowsAffected: number;
  lastInsertRowid: bigint | undefined;
}

/** The journal database as handlers see it: the handler's own tables live beside kexo's journal. */
export interface HandlerDb {
  execute(stmt: InStatement): Promise<ResultSet>;
  /** Runs the statements in order; all or none apply. */
  batch(stmts: InStatement[]): Promise<ResultSet[]>;
}

export interface EmitMessage {
  key?: string | Buffer | null;
  /** With `schema`: the object to encode (Avro record, Protobuf message, JSON Schema document). */
  value: string | Buffer | unknown;
  /** A name may repeat: give its values as an array (Kafka headers are a list). */
  headers?: Record<string, string | Buffer | (string | Buffer)[]>;
  partition?: number;
  /**
   * Encode `value` in the Confluent wire format with a registered schema (needs --schema-registry):
   * `{ id }`, or `{ subject }` (its latest version, looked up again after a minute) or
   * `{ subject, version }`. Protobuf values are encoded as the schema's first message.
   * `emit` stays synchronous: the encoding happens when `handle` returns, before the journal
   * records the outbox. A value that doesn't match, or an unknown subject or id, dead-letters the
   * message (reason `permanent`); an unreachable registry makes the message wait, without running
   * `handle` again, until it answers.
   */
  schema?: { id: number } | { subject: string; version?: number | "latest" };
}

export interface HandlerContext {
  readonly message: KafkaMessage;
  /**
   * The dedup id: header `kexo-id` if present, else the handler's business `key`, else
   * `kafka-unique-id-{topic}-{partition}-{groupId}-{offset}`. Stable across redeliveries; pass
   * `${ctx.id}:${stepName}` to external APIs as an idempotency key.
   */
  readonly id: string;
  /** 1 on the first attempt. */
  readonly attempt: number;
  /**
   * Runs `fn` once and records its JSON result. Once recorded (journal committed) it is never
   * run again; the recorded result is returned instead. Failure window: a crash after `fn`
   * finished but before the journal commit runs `fn` again on redelivery (at-least-once).
   */
  step<R>(name: string, fn: () => R | Promise<R>): Promise<R>;
  /**
   * Runs `fn` in a transaction of the journal database. Its writes commit atomically with a
   * record of this call: after any crash they appear exactly once, and a recorded call returns
   * its recorded result without running again. Keep `fn` to database work: other messages'
   * transactions wait while it runs.
   */
  tx<R>(fn: (db: HandlerDb) => Promise<R>): Promise<R>;
  /** Records an outbox message, published after this message's journal commit (at least once). */
  emit(topic: string, msg: EmitMessage): void;
  readonly log: Logger;
  /** Aborted on shutdown timeout and when this message's partition is revoked. */
  readonly signal: AbortSignal;
}

export interface RetryOptions {
  /** Every attempt, including the first. */
  attempts?: number;
  initialDelayMs?: number;
  maxDelayMs?: number;
}

/**
 * - "partition" (default): one message at a time per partition, in offset order; partitions run
 *   concurrently up to `concurrency`.
 * - "key": within a partition, one message at a time per Kafka message key, in offset order;
 *   different keys run concurrently, up to `concurrency` for the whole handler. All messages with
 *   a null key form one key. A slow key holds up only its own key (until 64 × concurrency
 *   messages, at least 1000, wait behind slow keys); so does a retrying one, whose waits for its
 *   next try take no slot of `concurrency`. The committed offset is the lowest unfinished
 *   one; work finished above it is recorded and never runs again after a restart.
 * - "topic": one message at a time per topic, across all its partitions (topics by name only). A
 *   message waiting for its next try holds up the whole topic until it is done or dead-lettered.
 */
export type Order = "partition" | "key" | "topic";

/**
 * How a message's value becomes the handler's payload:
 * - "json" (the default with a `schema`): strict UTF-8, then JSON.
 * - "avro", "protobuf", "json-schema": the Confluent wire format (magic byte 0, 4-byte schema id,
 *   body; Protobuf with message indexes), decoded with the writer's schema fetched from the schema
 *   registry (--schema-registry; required) and cached. Avro gives avsc's values, Protobuf a plain
 *   object (int64 as decimal strings, enums by name, defaults filled in), JSON Schema the validated
 *   JSON. An unknown schema id or a body that doesn't decode is poison (dead letter, reason
 *   `poison`); an unreachable registry is waited for with the retry backoff, without using up
 *   attempts: the message is not at fault.
 * - "raw" (the default without a `schema`): the value's Buffer (or null), as Kafka delivered it.
 * Then, when the handler has a `schema`, the decoded payload is validated by it.
 */
export type PayloadFormat = "json" | "avro" | "protobuf" | "json-schema" | "raw";

interface HandlerOptions<T> {
  name?: string;
  /**
   * Topic names or RegExps. A RegExp is matched once, at start, against the topics the broker
   * lists (kafkajs's behaviour): a topic created later is consumed after the next restart.
   */
  topics: (string | RegExp)[];
  groupId?: string;
  key?: (payload: T, message: KafkaMessage) => string;
  order?: Order;
  /** Payload format; see PayloadFormat. */
  format?: PayloadFormat;
  /** Messages in flight for this handler (default 16). */
  concurrency?: number;
  retry?: RetryOptions;
  deadLetter?: string | false;
  /**
   * Kafka→Kafka work with Kafka transactions: this handler's emits and its consumed offsets are
   * written to Kafka in one transaction (after the journal commit), for downstream consumers that
   * read with isolation read_committed and are not kexo. Without it (the default) emits go
   * through the outbox relay, at least once, deduplicated downstream by kexo on `kexo-id`.
   * Failure window: none for read_committed readers; a crash between the journal commit and the
   * Kafka commit aborts that transaction and the next one carries the same records.
   */
  kafkaTransactions?: boolean;
  setup?(db: HandlerDb): Promise<void> | void;
  handle(payload: T, ctx: HandlerContext): unknown;
}

export const HANDLER = Symbol.for("kexo.handler");

/** What defineHandler returns; the loader recognizes it by its brand. */
export interface Handler<T = unknown> extends HandlerOptions<T> {
  schema?: v.GenericSchema<unknown, T>;
  readonly [HANDLER]: true;
}

export function defineHandler<S extends v.GenericSchema>(
  def: HandlerOptions<v.InferOutput<S>> & { schema: S },
): Handler<v.InferOutput<S>>;
export function defineHandler(
  def: HandlerOptions<unknown> & { schema?: undefined; format: "json" | "avro" | "protobuf" | "json-schema" },
): Handler<unknown>;
export function defineHandler(def: HandlerOptions<Buffer | null> & { schema?: undefined; format?: "raw" }): Handler<Buffer | null>;
// deno-lint-ignore no-explicit-any
export function defineHandler(def: HandlerOptions<any> & { schema?: v.GenericSchema }): Handler<any> {
  return Object.assign(Object.create(null), def, { [HANDLER]: true as const }) as Handler<any>;
}
