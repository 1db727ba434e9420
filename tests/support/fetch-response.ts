// Fetch v11 responses as a broker sends them, built with kafkajs's own encoders: for
// tests/unit/fetch-decode and bench/stages (`fetch`), which decode them with kafkajs and with kexo.
import { CompressionTypes } from "kafkajs";
// @ts-expect-error: kafkajs's protocol modules have no type declarations.
import Encoder from "kafkajs/src/protocol/encoder.js";
// @ts-expect-error: as above.
import recordBatchModule from "kafkajs/src/protocol/recordBatch/v0/index.js";
// @ts-expect-error: as above.
import Record from "kafkajs/src/protocol/recordBatch/record/v0/index.js";
// @ts-expect-error: as above.
import Long from "kafkajs/src/utils/long.js";

type Enc = { buffer: Buffer; writeInt32(n: number): Enc; writeInt16(n: number): Enc; writeInt64(n: unknown): Enc; writeString(s: string): Enc; writeArray(a: unknown[]): Enc; writeBytes(b: Buffer): Enc };
const E = Encoder as new () => Enc;
const RecordBatch = (recordBatchModule as { RecordBatch: (o: unknown) => Promise<Enc> }).RecordBatch;

export interface BatchRecord {
  key?: Buffer | string | null;
  value: Buffer | string | null;
  headers?: Record<string, string | string[]>;
  offsetDelta: number;
  timestampDelta?: number;
}

const bytes = (b: Buffer | string | null | undefined) => (b === undefined || b === null ? null : Buffer.from(b));

/** One record batch (magic 2) as it sits in a Fetch response's record set. `patch` edits its bytes. */
export async function recordBatch(
  firstOffset: string,
  records: BatchRecord[],
  opts: { compression?: CompressionTypes; firstTimestamp?: number; patch?: (b: Buffer) => void } = {},
): Promise<Buffer> {
  const encoded = await RecordBatch({
    compression: opts.compression ?? CompressionTypes.None,
    firstOffset: Long.fromString(firstOffset),
    firstTimestamp: opts.firstTimestamp ?? 1_700_000_000_000,
    maxTimestamp: 1_700_000_009_999,
    lastOffsetDelta: records.length ? records[records.length - 1]!.offsetDelta : 0,
    records: records.map((r) => (Record as (o: unknown) => unknown)({
      offsetDelta: r.offsetDelta,
      timestampDelta: r.timestampDelta ?? r.offsetDelta * 3,
      key: bytes(r.key),
      value: bytes(r.value),
      headers: r.headers ?? {},
    })),
  });
  const buf = Buffer.from(encoded.buffer);
  opts.patch?.(buf);
  return buf;
}

/** A Fetch v11 response of one topic, each partition's record set as given. */
export function fetchResponse(topic: string, partitions: { partition: number; records: Buffer }[]): Buffer {
  const parts = partitions.map(({ partition, records }) =>
    new E().writeInt32(partition).writeInt16(0).writeInt64(Long.fromInt(1000)).writeInt64(Long.fromInt(1000)).writeInt64(Long.fromInt(0))
      .writeArray([]).writeInt32(-1).writeBytes(records));
  return Buffer.from(new E().writeInt32(0).writeInt16(0).writeInt32(7).writeArray([new E().writeString(topic).writeArray(parts)]).buffer);
}
