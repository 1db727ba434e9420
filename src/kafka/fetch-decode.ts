// A faster decoder for kafkajs's Fetch v11 responses (the version kafkajs uses with any broker
// from Kafka 2.3 on, and with the development broker). kafkajs decodes every record through a
// new Decoder object and does its offset and timestamp arithmetic with Long values parsed from
// strings: at the benchmark's 150-byte records that was most of its consuming cost, on the same
// JavaScript thread as the handlers. This decoder reads record batches (magic 2) straight from
// the response buffer (compressed ones from what kafkajs's codec for them gives),
// with number arithmetic while offsets and timestamps stay below 2^53, and gives kafkajs the very
// objects its own decoder gives: the same fields, the same types, key, value and header values as
// Buffers over the response. Anything else — an older message format, a codec kafkajs has none
// registered for, a number past 2^53 — goes through kafkajs's own decoder, partition by
// partition. tests/unit/fetch-decode compares the two on such responses.
// @ts-expect-error: kafkajs's protocol modules have no type declarations.
import fetchV11Response from "kafkajs/src/protocol/requests/fetch/v11/response.js";
// @ts-expect-error: as above.
import kafkajsDecodeMessages from "kafkajs/src/protocol/requests/fetch/v4/decodeMessages.js";
// @ts-expect-error: as above.
import Decoder from "kafkajs/src/protocol/decoder.js";
// @ts-expect-error: as above.
import compression from "kafkajs/src/protocol/message/compression/index.js";

interface KafkajsDecoder {
  buffer: Buffer;
  offset: number;
  readInt8(): number;
  readInt16(): number;
  readInt32(): number;
  readInt64(): { toString(): string };
  readString(): string;
  readArray<T>(reader: (d: KafkajsDecoder) => T): T[];
  readArrayAsync<T>(reader: (d: KafkajsDecoder) => Promise<T>): Promise<T[]>;
  canReadBytes(n: number): boolean;
}

type DecoderClass = new (buffer: Buffer) => KafkajsDecoder;
const KDecoder = Decoder as DecoderClass;
const decodeMessagesSlow = kafkajsDecodeMessages as (d: KafkajsDecoder) => Promise<unknown[]>;
const { lookupCodecByAttributes } = compression as { lookupCodecByAttributes(attributes: number): { decompress(b: Buffer): Promise<Buffer> } | null };

/** A record as kafkajs's record decoder (recordBatch/record/v0) makes it. */
export interface DecodedRecord {
  magicByte: number;
  attributes: number;
  timestamp: string;
  offset: string;
  key: Buffer | null;
  value: Buffer | null;
  headers: Record<string, Buffer | null | (Buffer | null)[]>;
  isControlRecord: boolean;
  batchContext: BatchContext;
}

interface BatchContext {
  firstOffset: string;
  firstTimestamp: string;
  partitionLeaderEpoch: number;
  inTransaction: boolean;
  isControlBatch: boolean;
  lastOffsetDelta: number;
  producerId: string;
  producerEpoch: number;
  firstSequence: number;
  maxTimestamp: string;
  timestampType: number;
  magicByte: number;
}

// kafkajs's constants (recordBatch/v0/decoder.js, fetch/v4/decodeMessages.js, timestampTypes.js).
const MAGIC_OFFSET = 16;
const RECORD_BATCH_OVERHEAD = 49;
const BATCH_HEADER = 61;
const TIMESTAMP_TYPE_FLAG_MASK = 0x8;
const TRANSACTIONAL_FLAG_MASK = 0x10;
const CONTROL_FLAG_MASK = 0x20;
const COMPRESSION_CODEC_MASK = 0x7;
const CREATE_TIME = 0;
const LOG_APPEND_TIME = 1;

/** Thrown inside the fast path when a partition's data needs kafkajs's decoder. */
const SLOW = Symbol("slow");

class Reader {
  constructor(readonly buf: Buffer, public pos: number) {}

  /** kafkajs's Decoder.readVarInt, zigzag included (32-bit). */
  varInt(): number {
    const buf = this.buf;
    let b: number;
    let result = 0;
    let i = 0;
    do {
      b = buf[this.pos++]!;
      result += (b & 0x7f) << i;
      i += 7;
    } while (b >= 0x80);
    return (result >>> 1) ^ -(result & 1);
  }

  /** A zigzag varlong as a number; SLOW past 2^53 (kafkajs keeps a Long) or past 10 bytes (kafkajs throws). */
  varLong(): number {
    const buf = this.buf;
    let b: number;
    let result = 0;
    let mul = 1;
    do {
      if (mul > 2 ** 63) throw SLOW;
      b = buf[this.pos++]!;
      result += (b & 0x7f) * mul;
      mul *= 128;
    } while (b >= 0x80);
    if (result > Number.MAX_SAFE_INTEGER) throw SLOW;
    return result % 2 === 0 ? result / 2 : -(result + 1) / 2;
  }

  /** kafkajs's readVarIntBytes: a Buffer over the response, or null. */
  bytes(): Buffer | null {
    const n = this.varInt();
    if (n === -1) return null;
    // kafkajs reads a record from its own slice, where a negative length means something else.
    if (n < 0) throw SLOW;
    const start = this.pos;
    this.pos += n;
    return this.buf.subarray(start, start + n);
  }
}

/** A safe integer as a number, or SLOW. */
function safe(v: bigint): number {
  if (v > 9007199254740991n || v < -9007199254740991n) throw SLOW;
  return Number(v);
}

/** a + b, or SLOW when not exact. */
function sum(a: number, b: number): number {
  const s = a + b;
  if (!Number.isSafeInteger(s)) throw SLOW;
  return s;
}

function decodeHeaders(r: Reader, end: number): DecodedRecord["headers"] {
  const count = r.varInt();
  // Each header takes two bytes at least: a count past that is a corrupt record, left to kafkajs.
  if (count < -1 || count > (end - r.pos) / 2) throw SLOW;
  const headers: DecodedRecord["headers"] = {};
  for (let i = 0; i < count; i++) {
    const keyLength = r.varInt();
    let key: string;
    if (keyLength === -1) key = "null";
    else if (keyLength < 0) throw SLOW;
    else {
      key = r.buf.toString("utf8", r.pos, r.pos + keyLength);
      r.pos += keyLength;
    }
    const value = r.bytes();
    const before = Object.prototype.hasOwnProperty.call(headers, key) ? headers[key] : undefined;
    const next = before === undefined ? value : Array.isArray(before) ? before.concat([value]) : [before, value];
    // An own property even for "__proto__", as kafkajs's object spread makes it.
    if (key === "__proto__") Object.defineProperty(headers, key, { value: next, enumerable: true, writable: true, configurable: true });
    else headers[key] = next;
  }
  return headers;
}

/**
 * The records of one partition's record set, as kafkajs's decodeMessages returns them for
 * magic-2 batches, compressed ones through kafkajs's codecs (CompressionCodecs); SLOW for anything else.
 */
export async function decodeRecordSet(buf: Buffer): Promise<DecodedRecord[]> {
  const records: DecodedRecord[] = [];
  if (buf.length <= MAGIC_OFFSET || buf.readInt8(MAGIC_OFFSET) !== 2) throw SLOW;
  let p = 0;
  while (buf.length - p >= RECORD_BATCH_OVERHEAD) {
    const length = buf.readInt32BE(p + 8);
    // A batch cut short by the fetch's size limit: kafkajs stops there.
    if (buf.length - (p + 12) < length) break;
    const end = p + 12 + length;
    const magicByte = buf.readInt8(p + 16);
    const attributes = buf.readInt16BE(p + 21);
    if (magicByte !== 2 || length < BATCH_HEADER - 12) throw SLOW;
    const firstOffset = buf.readBigInt64BE(p);
    const firstTimestamp = buf.readBigInt64BE(p + 27);
    const maxTimestamp = buf.readBigInt64BE(p + 35);
    const timestampType = (attributes & TIMESTAMP_TYPE_FLAG_MASK) > 0 ? LOG_APPEND_TIME : CREATE_TIME;
    const isControlBatch = (attributes & CONTROL_FLAG_MASK) > 0;
    const batchContext: BatchContext = {
      firstOffset: firstOffset.toString(),
      firstTimestamp: firstTimestamp.toString(),
      partitionLeaderEpoch: buf.readInt32BE(p + 12),
      inTransaction: (attributes & TRANSACTIONAL_FLAG_MASK) > 0,
      isControlBatch,
      lastOffsetDelta: buf.readInt32BE(p + 23),
      producerId: buf.readBigInt64BE(p + 43).toString(),
      producerEpoch: buf.readInt16BE(p + 51),
      firstSequence: buf.readInt32BE(p + 53),
      maxTimestamp: maxTimestamp.toString(),
      timestampType,
      magicByte,
    };
    const baseOffset = safe(firstOffset);
    const baseTimestamp = safe(firstTimestamp);
    const appendTime = timestampType === LOG_APPEND_TIME ? batchContext.maxTimestamp : undefined;
    const count = buf.readInt32BE(p + 57);
    let r: Reader;
    let recordsEnd: number;
    if ((attributes & COMPRESSION_CODEC_MASK) === 0) {
      if (count < 0) throw SLOW;
      r = new Reader(buf.subarray(0, end), p + BATCH_HEADER);
      recordsEnd = end;
    } else {
      // kafkajs: no records when the count is not positive; else the rest of the batch, decompressed.
      if (count <= 0) {
        p = end;
        continue;
      }
      const plain = await decompress(attributes, buf.subarray(p + BATCH_HEADER, end));
      r = new Reader(plain, 0);
      recordsEnd = plain.length;
    }
    for (let i = 0; i < count; i++) {
      const size = r.varInt();
      const next = r.pos + size;
      if (size < 0 || next > recordsEnd) throw SLOW;
      const recordAttributes = r.buf.readInt8(r.pos++);
      const timestampDelta = r.varLong();
      const offsetDelta = r.varInt();
      const timestamp = appendTime ?? String(sum(baseTimestamp, timestampDelta));
      const key = r.bytes();
      const value = r.bytes();
      const headers = decodeHeaders(r, next);
      if (r.pos > next) throw SLOW;
      r.pos = next;
      records.push({
        magicByte,
        attributes: recordAttributes,
        timestamp,
        offset: String(sum(baseOffset, offsetDelta)),
        key,
        value,
        headers,
        isControlRecord: isControlBatch,
        batchContext,
      });
    }
    p = end;
  }
  return records;
}

/** A compressed batch's records through kafkajs's codec for it; SLOW where kafkajs has none (its decoder then says so). */
async function decompress(attributes: number, body: Buffer): Promise<Buffer> {
  let codec: { decompress(b: Buffer): Promise<Buffer> } | null;
  try {
    codec = lookupCodecByAttributes(attributes);
  } catch {
    throw SLOW;
  }
  if (!codec) throw SLOW;
  return codec.decompress(body);
}

/** fetch/v4/decodeMessages, fast where it can be. */
async function decodeMessages(decoder: KafkajsDecoder): Promise<unknown[]> {
  const start = decoder.offset;
  const size = decoder.readInt32();
  if (size <= 0 || !decoder.canReadBytes(size)) return [];
  const buf = decoder.buffer.subarray(decoder.offset, decoder.offset + size);
  try {
    const records = await decodeRecordSet(buf);
    decoder.offset += size;
    return records;
  } catch {
    // SLOW, or bytes this decoder could not read: kafkajs's decoder gives its result or its error.
    decoder.offset = start;
    return decodeMessagesSlow(decoder);
  }
}

// fetch/v11/response.js's decode, with the messages decoded above.
const decodeAbortedTransactions = (d: KafkajsDecoder) => ({
  producerId: d.readInt64().toString(),
  firstOffset: d.readInt64().toString(),
});

const decodePartition = async (d: KafkajsDecoder) => ({
  partition: d.readInt32(),
  errorCode: d.readInt16(),
  highWatermark: d.readInt64().toString(),
  lastStableOffset: d.readInt64().toString(),
  lastStartOffset: d.readInt64().toString(),
  abortedTransactions: d.readArray(decodeAbortedTransactions),
  preferredReadReplica: d.readInt32(),
  messages: await decodeMessages(d),
});

const decodeResponse = async (d: KafkajsDecoder) => ({
  topicName: d.readString(),
  partitions: await d.readArrayAsync(decodePartition),
});

export async function decodeFetchV11(rawData: Buffer) {
  const d = new KDecoder(rawData);
  const clientSideThrottleTime = d.readInt32();
  const errorCode = d.readInt16();
  const sessionId = d.readInt32();
  const responses = await d.readArrayAsync(decodeResponse);
  return { throttleTime: 0, clientSideThrottleTime, errorCode, sessionId, responses };
}

/** kafkajs's own Fetch v11 decode, kept for tests/unit/fetch-decode and the benchmark. */
export const kafkajsDecodeFetchV11 = (fetchV11Response as { decode(raw: Buffer): Promise<unknown> }).decode;

let installed = false;

/** Makes kafkajs decode Fetch v11 responses with decodeFetchV11. Idempotent. */
export function installFetchDecoder(): void {
  if (installed) return;
  installed = true;
  (fetchV11Response as { decode(raw: Buffer): Promise<unknown> }).decode = decodeFetchV11;
}
