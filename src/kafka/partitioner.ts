// kafkajs's default partitioner (Java-compatible murmur2 of the key, else round robin) with the
// hash on 32-bit integers. kafkajs computes murmur2 through its 64-bit Long emulation, ≈ 45 µs per
// key byte: one dead letter or emit with a 1 MB key held the event loop ≈ 45 s, past the session
// timeout (heartbeats, /healthz and every other handler stopped). Only the low 32 bits of
// kafkajs's products and xors reach its result, so Math.imul gives the same partition for every
// key (tests/unit/partitioner.test.ts compares the two).
import { randomBytes } from "node:crypto";
import type { ICustomPartitioner } from "kafkajs";

const M = 0x5bd1e995;

/** Kafka's murmur2 (Utils.murmur2 of the Java client), as a signed 32-bit integer. */
export function murmur2(key: Buffer | string): number {
  const data = Buffer.isBuffer(key) ? key : Buffer.from(String(key));
  const length = data.length;
  let h = (0x9747b28c ^ length) | 0;
  const whole = length & ~3;
  for (let i = 0; i < whole; i += 4) {
    let k = data[i]! | (data[i + 1]! << 8) | (data[i + 2]! << 16) | (data[i + 3]! << 24);
    k = Math.imul(k, M);
    k ^= k >>> 24;
    k = Math.imul(k, M);
    h = Math.imul(h, M) ^ k;
  }
  switch (length & 3) {
    case 3:
      h ^= data[whole + 2]! << 16;
    // falls through
    case 2:
      h ^= data[whole + 1]! << 8;
    // falls through
    case 1:
      h ^= data[whole]!;
      h = Math.imul(h, M);
  }
  h ^= h >>> 13;
  h = Math.imul(h, M);
  h ^= h >>> 15;
  return h | 0;
}

const toPositive = (x: number) => x & 0x7fffffff;

/** For kafka.producer({ createPartitioner }): kafkajs's DefaultPartitioner, decision for decision. */
export const createPartitioner: ICustomPartitioner = () => {
  const counters: Record<string, number> = {};
  return ({ topic, partitionMetadata, message }) => {
    if (!(topic in counters)) counters[topic] = randomBytes(4).readUInt32BE(0);
    if (message.partition !== null && message.partition !== undefined) return message.partition;
    const numPartitions = partitionMetadata.length;
    if (message.key !== null && message.key !== undefined) return toPositive(murmur2(message.key)) % numPartitions;
    const available = partitionMetadata.filter((p) => p.leader >= 0);
    if (available.length > 0) return available[toPositive(++counters[topic]!) % available.length]!.partitionId;
    return toPositive(++counters[topic]!) % numPartitions;
  };
};

/**
 * The outbox's: kafkajs's default, except that a record without a key goes by its kexo-id (the
 * same murmur2 hash a key gets) instead of round robin. A crash between a broker's acknowledgement
 * and the outbox row's delete publishes the record again; the copy then lands on the partition
 * of the first, whose consumer (with its own journal, in a downstream of several instances) saw
 * the id and deduplicates it. Round robin sent it to any partition, maybe another instance's.
 */
export const createOutboxPartitioner: ICustomPartitioner = () => {
  const byDefault = createPartitioner();
  return (args) => {
    const { message, partitionMetadata } = args;
    if (message.partition == null && message.key == null) {
      const header = message.headers?.["kexo-id"];
      const id = Array.isArray(header) ? header[header.length - 1] : header;
      if (id !== undefined) return toPositive(murmur2(id)) % partitionMetadata.length;
    }
    return byDefault(args);
  };
};
