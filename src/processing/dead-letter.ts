// The dead-letter record: original key, value and headers byte for byte, plus kexo's headers and
// the names Spring (kafka_dlt-*) and Kafka Connect (__connect.errors.*) tools already read.
import { capBytes } from "../errors.ts";
import { headerBytes, type WireHeaders } from "../kafka/headers.ts";
import type { ProducedRecord } from "./executor.ts";

export type DeadLetterReason = "poison" | "exhausted" | "permanent";

export interface DeadLetterInfo {
  topic: string;
  partition: number;
  offset: string;
  timestamp: string;
  groupId: string;
  /** The handler's name: Kafka Connect's connector name. */
  handler: string;
  reason: DeadLetterReason;
  error: string;
  errorType: string;
  stack?: string;
  attempts: number;
  failedAt: Date;
}

function int32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n);
  return b;
}

function int64(n: string): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigInt64BE(BigInt(n));
  return b;
}

/** Header values are capped so that a huge error message can't make the dead letter too big. */
const MAX_ERROR_BYTES = 8 * 1024;

export function deadLetterHeaders(original: WireHeaders, info: DeadLetterInfo, maxErrorBytes = MAX_ERROR_BYTES): WireHeaders {
  const error = Buffer.from(capBytes(info.error, maxErrorBytes));
  const stack = Buffer.from(capBytes(info.stack ?? info.error, maxErrorBytes));
  return {
    ...original,
    "kexo-dlq-topic": Buffer.from(info.topic),
    "kexo-dlq-partition": Buffer.from(String(info.partition)),
    "kexo-dlq-offset": Buffer.from(info.offset),
    "kexo-dlq-group": Buffer.from(info.groupId),
    "kexo-dlq-reason": Buffer.from(info.reason),
    "kexo-dlq-error": error,
    "kexo-dlq-error-type": Buffer.from(info.errorType),
    "kexo-dlq-attempts": Buffer.from(String(info.attempts)),
    "kexo-dlq-failed-at": Buffer.from(info.failedAt.toISOString()),
    // Spring Kafka's DeadLetterPublishingRecoverer names and encodings (ints and longs big-endian).
    "kafka_dlt-original-topic": Buffer.from(info.topic),
    "kafka_dlt-original-partition": int32(info.partition),
    "kafka_dlt-original-offset": int64(info.offset),
    "kafka_dlt-original-timestamp": int64(info.timestamp || "0"),
    "kafka_dlt-original-consumer-group": Buffer.from(info.groupId),
    "kafka_dlt-exception-fqcn": Buffer.from(info.errorType),
    "kafka_dlt-exception-message": error,
    "kafka_dlt-exception-stacktrace": stack,
    // Kafka Connect's errors.deadletterqueue.context.headers.enable names (strings).
    "__connect.errors.topic": Buffer.from(info.topic),
    "__connect.errors.partition": Buffer.from(String(info.partition)),
    "__connect.errors.offset": Buffer.from(info.offset),
    "__connect.errors.exception.class.name": Buffer.from(info.errorType),
    "__connect.errors.exception.message": error,
    "__connect.errors.exception.stacktrace": stack,
    // Where it failed, as Connect names its stages: reading the value (poison), or the sink's put.
    "__connect.errors.stage": Buffer.from(info.reason === "poison" ? "VALUE_CONVERTER" : "TASK_PUT"),
    "__connect.errors.class.name": Buffer.from("kexo"),
    "__connect.errors.connector.name": Buffer.from(info.handler),
    "__connect.errors.task.id": Buffer.from("0"),
  };
}

/** What a dead letter may leave out, in order, when the broker refuses it as too large. */
export const SMALLER_STEPS = 2;
const KEEP_BYTES = 1024;

/**
 * The dead letter, smaller, after the broker refused it as too large (its max.message.bytes; a
 * message near the source topic's limit grows past it with kexo's headers): step 1 cuts the error
 * texts to 1 KB; step 2 also leaves out the value, and the key and original headers when over
 * 1 KB, naming each in `kexo-dlq-omitted`. The journal keeps the whole message: `kexo dlq show`
 * prints it and `kexo dlq replay` publishes it. A partition must not wait forever for a dead letter
 * no broker will take.
 */
export function smallerDeadLetter(message: ProducedRecord, original: WireHeaders, info: DeadLetterInfo, step: number): ProducedRecord {
  if (step < 2) return { key: message.key, value: message.value, headers: deadLetterHeaders(original, info, KEEP_BYTES) };
  const omitted: string[] = [];
  if (message.value !== null) omitted.push(`value (${message.value.byteLength} bytes)`);
  const key = message.key !== null && message.key.byteLength > KEEP_BYTES ? null : message.key;
  if (key !== message.key) omitted.push(`key (${message.key!.byteLength} bytes)`);
  const originalBytes = headerBytes(original);
  const kept = originalBytes > KEEP_BYTES ? {} : original;
  if (kept !== original) omitted.push(`headers (${originalBytes} bytes)`);
  const headers = deadLetterHeaders(kept, info, KEEP_BYTES);
  headers["kexo-dlq-omitted"] = Buffer.from(`${omitted.join(", ")}: the broker refused the dead letter as too large; the journal keeps the whole message (kexo dlq show, kexo dlq replay)`);
  return { key, value: null, headers };
}
