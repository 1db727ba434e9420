// kexo's Fetch v11 decoder (src/kafka/fetch-decode.ts) against kafkajs's own, on responses built
// with kafkajs's encoders: both must give the same objects, down to each Buffer's bytes, for every
// shape a broker sends — and the fallback cases must reach kafkajs's decoder.
import { describe, expect, test } from "bun:test";
import { isDeepStrictEqual } from "node:util";
import { CompressionCodecs, CompressionTypes } from "kafkajs";
// @ts-expect-error: kafkajs's protocol modules have no type declarations.
import MessageSet from "kafkajs/src/protocol/messageSet/index.js";
// @ts-expect-error: as above.
import fetchProtocol from "kafkajs/src/protocol/requests/fetch/index.js";
import { createKafka } from "../../src/kafka/client.ts";
import { decodeFetchV11, decodeRecordSet, kafkajsDecodeFetchV11 } from "../../src/kafka/fetch-decode.ts";
import { createLogger } from "../../src/log.ts";
import { type BatchRecord as Rec, fetchResponse, recordBatch as batch } from "../support/fetch-response.ts";

const response = (partitions: { partition: number; records: Buffer }[]) => fetchResponse("orders", partitions);

const plain = (n: number): Rec[] =>
  Array.from({ length: n }, (_, i) => ({ key: i % 3 ? `k${i}` : null, value: i % 5 === 4 ? null : JSON.stringify({ i, pad: "x".repeat(i % 40) }), offsetDelta: i }));

async function same(raw: Buffer): Promise<unknown> {
  const ours = await decodeFetchV11(raw);
  const theirs = await kafkajsDecodeFetchV11(raw);
  expect(ours).toEqual(theirs as typeof ours);
  // toEqual looks through Buffers' bytes; make sure the types match too.
  const records = (r: unknown) => (r as { responses: { partitions: { messages: { key: unknown; value: unknown; headers?: object }[] }[] }[] }).responses[0]!.partitions.flatMap((p) => p.messages);
  const a = records(ours);
  const b = records(theirs);
  for (let i = 0; i < a.length; i++) {
    expect(Buffer.isBuffer(a[i]!.value)).toBe(Buffer.isBuffer(b[i]!.value));
    expect(Buffer.isBuffer(a[i]!.key)).toBe(Buffer.isBuffer(b[i]!.key));
    // The legacy message format has no headers.
    expect(Object.getPrototypeOf(a[i]!.headers ?? {})).toBe(Object.getPrototypeOf(b[i]!.headers ?? {}));
    expect(Object.keys(a[i]!.headers ?? {})).toEqual(Object.keys(b[i]!.headers ?? {}));
  }
  return ours;
}

const messagesOf = (r: unknown) => (r as { responses: { partitions: { messages: { offset: string; timestamp: string; headers: Record<string, unknown> }[] }[] }[] }).responses[0]!.partitions.map((p) => p.messages);

describe("Fetch v11 decoding matches kafkajs", () => {
  test("uncompressed batches: keys, null values, offsets, timestamps, several batches and partitions", async () => {
    const p0 = Buffer.concat([await batch("0", plain(50)), await batch("50", plain(30))]);
    const p1 = await batch("123456789012", plain(7));
    const r = await same(response([{ partition: 0, records: p0 }, { partition: 1, records: p1 }]));
    const [m0, m1] = messagesOf(r);
    expect(m0!.map((m) => m.offset)).toEqual(Array.from({ length: 80 }, (_, i) => String(i)));
    expect(m1![6]!.offset).toBe("123456789018");
    expect(m0![2]!.timestamp).toBe(String(1_700_000_000_000 + 6));
  });

  test("headers: several, repeated keys (arrays), null values, non-ASCII keys", async () => {
    const recs: Rec[] = [
      { value: "a", offsetDelta: 0, headers: { "kexo-id": "id-1", trace: ["t1", "t2", "t3"] } },
      { value: "b", offsetDelta: 1, headers: { "ключ": "значение", "": "empty name" } },
      { value: "c", offsetDelta: 2, headers: {} },
    ];
    await same(response([{ partition: 0, records: await batch("10", recs) }]));
  });

  test("headers named like Object.prototype's members are plain own values (kafkajs's differ here)", async () => {
    // kafkajs's reducer reads the inherited member as an earlier value of the name and makes
    // [member, value]: [Object, c] for `constructor`, [Object.prototype, p] for `__proto__`.
    // Ours: the header's value, as for any other name.
    const recs: Rec[] = [{ value: "a", offsetDelta: 0, headers: { ["__proto__"]: "p", constructor: "c", toString: ["t1", "t2"] } }];
    const raw = response([{ partition: 0, records: await batch("0", recs) }]);
    const headersOf = (r: unknown) => messagesOf(r)[0]![0]!.headers;
    const h = headersOf(await decodeFetchV11(raw));
    expect(Object.getPrototypeOf(h)).toBe(Object.prototype);
    expect(Object.getOwnPropertyNames(h).sort()).toEqual(["__proto__", "constructor", "toString"]);
    expect(String(Object.getOwnPropertyDescriptor(h, "__proto__")!.value)).toBe("p");
    expect(String(h.constructor)).toBe("c");
    expect((h.toString as unknown as Buffer[]).map(String)).toEqual(["t1", "t2"]);
    // kafkajs's, for the record: the difference this test is about.
    const theirs = headersOf(await kafkajsDecodeFetchV11(raw));
    expect(Object.getOwnPropertyDescriptor(theirs, "constructor")!.value).toEqual([Object, Buffer.from("c")]);
    expect(Object.getOwnPropertyDescriptor(theirs, "__proto__")!.value).toEqual([Object.prototype, Buffer.from("p")]);
  });

  test("a batch cut short by the fetch size is dropped, as kafkajs drops it", async () => {
    const whole = await batch("0", plain(20));
    const next = await batch("20", plain(20));
    const cut = Buffer.concat([whole, next.subarray(0, next.length - 17)]);
    const r = await same(response([{ partition: 0, records: cut }]));
    expect(messagesOf(r)[0]).toHaveLength(20);
  });

  test("log-append time, control and transactional batches, negative timestamps", async () => {
    const attr = (bits: number) => (b: Buffer) => b.writeInt16BE(b.readInt16BE(21) | bits, 21);
    const appendTime = await batch("0", plain(5), { patch: attr(0x8) });
    const control = await batch("5", plain(2), { patch: attr(0x20 | 0x10) });
    const noTime = await batch("7", plain(3), { firstTimestamp: -1 });
    const r = await same(response([{ partition: 0, records: Buffer.concat([appendTime, control, noTime]) }]));
    const m = messagesOf(r)[0]!;
    expect(m[0]!.timestamp).toBe("1700000009999");
    expect(m[8]!.timestamp).toBe(String(-1 + 1 * 3));
  });

  test("compressed batches: gzip, and a codec registered by the user", async () => {
    const gzip = await batch("0", plain(25), { compression: CompressionTypes.GZIP });
    expect(await decodeRecordSet(gzip)).toHaveLength(25);
    await same(response([{ partition: 0, records: gzip }]));
    // A mix of plain and compressed batches in one record set.
    await same(response([{ partition: 0, records: Buffer.concat([await batch("0", plain(3)), await batch("3", plain(3), { compression: CompressionTypes.GZIP }), await batch("6", plain(2))]) }]));
    // kafkajs has no LZ4 of its own; users register one in CompressionCodecs. An identity codec here.
    const before = CompressionCodecs[CompressionTypes.LZ4];
    CompressionCodecs[CompressionTypes.LZ4] = () => ({ compress: async (e: { buffer: Buffer }) => e.buffer, decompress: async (b: Buffer) => b });
    try {
      const lz4 = await batch("100", plain(10), { compression: CompressionTypes.LZ4 });
      const r = await same(response([{ partition: 0, records: lz4 }]));
      expect(messagesOf(r)[0]!.map((m) => m.offset)).toEqual(Array.from({ length: 10 }, (_, i) => String(100 + i)));
    } finally {
      CompressionCodecs[CompressionTypes.LZ4] = before;
    }
  });

  test("a codec kafkajs has none for fails as kafkajs's decoder fails", async () => {
    const snappy = await batch("0", plain(3), { patch: (b) => b.writeInt16BE(b.readInt16BE(21) | CompressionTypes.Snappy, 21) });
    const raw = response([{ partition: 0, records: snappy }]);
    const theirs = await kafkajsDecodeFetchV11(raw).then(() => "resolved", (e: Error) => e.message);
    expect(theirs).toContain("Snappy compression not implemented");
    expect(await decodeFetchV11(raw).then(() => "resolved", (e: Error) => e.message)).toBe(theirs);
  });

  test("offsets past 2^53 and the older message format go to kafkajs's decoder", async () => {
    const huge = await batch("9007199254740990", plain(5));
    expect(await decodeRecordSet(huge).catch((e: unknown) => typeof e)).toBe("symbol"); // SLOW: kafkajs decodes it
    const r = await same(response([{ partition: 0, records: huge }]));
    expect(messagesOf(r)[0]![4]!.offset).toBe("9007199254740994");
    // Magic 1, the message set of Kafka before 0.11.
    const entries = plain(4).map((r) => ({ key: r.key === undefined ? null : r.key, value: r.value, timestamp: 1_700_000_000_000 }));
    const legacy = Buffer.from((MessageSet as (o: unknown) => { buffer: Buffer })({ messageVersion: 1, compression: CompressionTypes.None, entries }).buffer);
    expect(await decodeRecordSet(legacy).catch((e: unknown) => typeof e)).toBe("symbol");
    expect(messagesOf(await same(response([{ partition: 0, records: legacy }])))[0]).toHaveLength(4);
  });

  test("empty and tiny record sets", async () => {
    await same(response([{ partition: 0, records: Buffer.alloc(0) }]));
    await same(response([{ partition: 0, records: await batch("0", []) }]));
  });

  test("kexo's Kafka client makes kafkajs's Fetch v11 requests decode with it", () => {
    createKafka({ brokers: ["127.0.0.1:9"], clientId: "t" }, createLogger({ level: "error" }));
    const v11 = (fetchProtocol as { protocol(o: { version: number }): (a: object) => { response: { decode: unknown } } })
      .protocol({ version: 11 })({ topics: [], maxWaitTime: 1, minBytes: 1, maxBytes: 1 });
    expect(v11.response.decode).toBe(decodeFetchV11);
  });

  test("corrupted record sets (random byte changes): the same records or the same error as kafkajs's", async () => {
    // Kafka checks CRCs, kafkajs does not: whatever bytes arrive, both decoders must agree.
    const recs = (n: number): Rec[] => Array.from({ length: n }, (_, i) => ({ key: i % 2 ? `k${i}` : null, value: i % 4 === 3 ? null : `value-${i}`, offsetDelta: i, headers: i % 3 ? { a: `x${i}`, b: ["1", "2"] } : {} }));
    const base = Buffer.concat([await batch("20", recs(3), { compression: CompressionTypes.GZIP }), await batch("5", recs(4)), await batch("9", recs(3))]);
    let seed = 12345;
    const rnd = () => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
    const settle = (p: Promise<unknown>) => p.then((ok) => ({ ok }), (e: unknown) => ({ err: String((e as Error)?.message ?? e) }));
    let differing = 0;
    for (let i = 0; i < 3000; i++) {
      const b = Buffer.from(base);
      for (let f = 1 + Math.floor(rnd() * 3); f > 0; f--) {
        const at = Math.floor(rnd() * b.length);
        b[at] = rnd() < 0.5 ? Math.floor(rnd() * 256) : b[at]! ^ (1 << Math.floor(rnd() * 8));
      }
      const raw = response([{ partition: 0, records: b }]);
      if (!isDeepStrictEqual(await settle(decodeFetchV11(raw)), await settle(kafkajsDecodeFetchV11(raw)))) differing++;
    }
    expect(differing).toBe(0);
  });
});
