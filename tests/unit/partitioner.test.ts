// kexo's partitioner must send every key where kafkajs's DefaultPartitioner (and the Java client)
// sends it: a keyed topic's order per key depends on it. Compared on many keys. (Why kexo has its
// own: tests/big-key.test.ts.)
import { expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { Partitioners } from "kafkajs";
// @ts-expect-error: kafkajs's murmur2 has no type declarations.
import kafkajsMurmur2 from "kafkajs/src/producer/partitioners/default/murmur2.js";
import { createOutboxPartitioner, createPartitioner, murmur2 } from "../../src/kafka/partitioner.ts";

test("murmur2 equals kafkajs's on keys of every length mod 4, strings, and high bytes", () => {
  const keys: (Buffer | string)[] = ["", "a", "ab", "abc", "abcd", "order-42", "é€𝄞", Buffer.from([0x80, 0xff, 0, 0x7f, 0xfe])];
  for (let n = 0; n < 400; n++) keys.push(randomBytes(n % 67));
  for (const key of keys) expect(murmur2(key)).toBe((kafkajsMurmur2 as (k: Buffer | string) => number)(key));
});

test("the partitioner picks kafkajs's partition for keyed messages and keeps explicit ones", () => {
  const meta = Array.from({ length: 12 }, (_, i) => ({ partitionErrorCode: 0, partitionId: i, leader: 1, replicas: [1], isr: [1] }));
  const ours = createPartitioner();
  const theirs = Partitioners.DefaultPartitioner();
  for (let n = 0; n < 300; n++) {
    const message = { key: randomBytes(1 + (n % 40)), value: null };
    expect(ours({ topic: "t", partitionMetadata: meta, message })).toBe(theirs({ topic: "t", partitionMetadata: meta, message }));
  }
  expect(ours({ topic: "t", partitionMetadata: meta, message: { key: "k", value: null, partition: 7 } })).toBe(7);
  const unkeyed = new Set(Array.from({ length: 24 }, () => ours({ topic: "u", partitionMetadata: meta, message: { value: "v" } })));
  expect(unkeyed.size).toBe(12); // round robin over the partitions with a leader
});

test("the outbox's partitioner places a keyless record by its kexo-id, the same on every call; keyed and explicit ones as usual", () => {
  const meta = Array.from({ length: 8 }, (_, i) => ({ partitionErrorCode: 0, partitionId: i, leader: 1, replicas: [1], isr: [1] }));
  const partition = (p: ReturnType<typeof createOutboxPartitioner>, message: { key?: Buffer | null; partition?: number; headers?: Record<string, Buffer> }) =>
    p({ topic: "t", partitionMetadata: meta, message: { value: null, ...message } });
  const first = createOutboxPartitioner();
  const again = createOutboxPartitioner();
  const spread = new Set<number>();
  for (let n = 0; n < 64; n++) {
    const headers = { "kexo-id": Buffer.from(`kafka-unique-id-in-0-g-${n}:emit:1`) };
    const p = partition(first, { key: null, headers });
    // A copy, published by another producer after a restart, goes where the first went.
    expect(partition(again, { key: null, headers })).toBe(p);
    expect(p).toBe((murmur2(headers["kexo-id"]) & 0x7fffffff) % 8);
    spread.add(p);
  }
  expect(spread.size).toBe(8);
  const keyed = createPartitioner();
  expect(partition(first, { key: Buffer.from("order-42"), headers: { "kexo-id": Buffer.from("x") } })).toBe(partition(keyed, { key: Buffer.from("order-42") }));
  expect(partition(first, { key: null, partition: 5, headers: { "kexo-id": Buffer.from("x") } })).toBe(5);
});
