// The Confluent wire format: magic byte 0, a 4-byte big-endian schema id, then the body. Protobuf
// bodies start with message indexes (which message of the schema file): a zigzag-varint count, then
// that many zigzag-varint indexes; the single byte 0 stands for [0], the first message.
import { PoisonError } from "../errors.ts";

export interface WireFrame {
  schemaId: number;
  /** The bytes after the schema id (for protobuf still holding the message indexes). */
  body: Buffer;
}

export function readFrame(value: Buffer): WireFrame {
  if (value.length < 5 || value[0] !== 0) {
    const start = value.subarray(0, 5).toString("hex");
    throw new PoisonError(
      `value is not in the Confluent wire format (magic byte 0 and a 4-byte schema id; got ${value.length} bytes starting ${start || "(empty)"})`,
    );
  }
  return { schemaId: value.readInt32BE(1), body: value.subarray(5) };
}

export function writeFrame(schemaId: number, body: Uint8Array, messageIndexes?: number[]): Buffer {
  const head = Buffer.alloc(5);
  head.writeInt32BE(schemaId, 1);
  const parts: Buffer[] = [head];
  if (messageIndexes) parts.push(writeIndexes(messageIndexes));
  parts.push(Buffer.from(body.buffer, body.byteOffset, body.byteLength));
  return Buffer.concat(parts);
}

/** Reads protobuf message indexes; returns them and the message bytes after them. */
export function readIndexes(body: Buffer): { indexes: number[]; rest: Buffer } {
  let pos = 0;
  const next = (): number => {
    let shift = 0;
    let raw = 0;
    for (;;) {
      if (pos >= body.length || shift > 28) throw new PoisonError("protobuf message indexes are truncated or malformed");
      const b = body[pos++]!;
      raw |= (b & 0x7f) << shift;
      if ((b & 0x80) === 0) break;
      shift += 7;
    }
    return (raw >>> 1) ^ -(raw & 1);
  };
  const count = next();
  if (count < 0 || count > 100) throw new PoisonError(`protobuf message index count ${count} is not plausible`);
  const indexes = count === 0 ? [0] : Array.from({ length: count }, next);
  return { indexes, rest: body.subarray(pos) };
}

function writeIndexes(indexes: number[]): Buffer {
  // [0] is written as the single byte 0, as Confluent's serializers do.
  if (indexes.length === 1 && indexes[0] === 0) return Buffer.from([0]);
  const bytes: number[] = [];
  for (const n of [indexes.length, ...indexes]) {
    let z = ((n << 1) ^ (n >> 31)) >>> 0;
    while (z > 0x7f) {
      bytes.push((z & 0x7f) | 0x80);
      z >>>= 7;
    }
    bytes.push(z);
  }
  return Buffer.from(bytes);
}
