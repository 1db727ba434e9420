// The dead-letter record: original key, value and headers byte for byte, plus kexo's headers and
// the names Spring (kafka_dlt-*) and Kafka Connect (__connect.errors.*) tools already read.
import { capBytes } from "../errors.ts";
import type { WireHeaders } from "../kafka/headers.ts";

export type DeadLetterReason = "poison" | "exhausted" | "permanent";

export interface DeadLetterInfo {
  topic: string;
  partition: number;
  offset: string;
  timestamp: string;
  groupId: string;
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
function capped(s: string): Buffer {
  return Buffer.from(capBytes(s, MAX_ERROR_BYTES));
}

export function deadLetterHeaders(original: WireHeaders, info: DeadLetterInfo): WireHeaders {
  const error = capped(info.error);
  const stack = capped(info.stack ?? info.error);
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
  };
}
