// A dead letter's error headers are capped at 8 KB; the cut must fall between characters, or the
// header is not valid UTF-8 (Java's decoders and Connect tools then show U+FFFD or refuse it).
import { expect, test } from "bun:test";
import { capBytes } from "../../src/errors.ts";
import { decodeHeaders, encodeHeaders } from "../../src/journal/journal.ts";
import { setOwn } from "../../src/own.ts";
import { deadLetterHeaders } from "../../src/processing/dead-letter.ts";
import { allHeaders, fromKafkajs } from "../../src/kafka/headers.ts";

const strict = new TextDecoder("utf-8", { fatal: true });

test("capBytes cuts before a character, within the bytes, and leaves short text alone", () => {
  expect(capBytes("short", 10)).toBe("short");
  expect(capBytes("é".repeat(10), 20)).toBe("é".repeat(10));
  for (const s of ["é".repeat(50), "€".repeat(50), "𝄞".repeat(50), `a${"é".repeat(50)}`]) {
    for (let max = 4; max < 40; max++) {
      const out = capBytes(s, max);
      expect(Buffer.byteLength(out)).toBeLessThanOrEqual(max);
      expect(out.endsWith("...")).toBe(true);
      expect(s.startsWith(out.slice(0, -3))).toBe(true);
    }
  }
});

test("a dead letter's error headers are valid UTF-8 when a long error is cut", () => {
  const error = "é".repeat(600_000);
  const headers = deadLetterHeaders({}, {
    topic: "t", partition: 0, offset: "1", timestamp: "0", groupId: "g", handler: "h", reason: "exhausted",
    error, errorType: "Error", stack: `Error: ${error}`, attempts: 3, failedAt: new Date(0),
  });
  const texts = Object.entries(headers).flatMap(([k, v]) => (Buffer.isBuffer(v) && v.length > 1000 ? [[k, v] as const] : []));
  expect(texts.length).toBeGreaterThanOrEqual(3);
  for (const [name, value] of texts) {
    expect(value.length, name).toBeLessThanOrEqual(8 * 1024);
    expect(() => strict.decode(value), name).not.toThrow();
  }
});

test("a header named __proto__ is kept as a header through the journal's encoding, not taken as a prototype", () => {
  const headers: Record<string, Buffer> = {};
  setOwn(headers, "__proto__", Buffer.from("p"));
  setOwn(headers, "x", Buffer.from("y"));
  expect(Object.keys(headers)).toEqual(["__proto__", "x"]);
  expect(Object.getPrototypeOf(headers)).toBe(Object.prototype);
  const back = decodeHeaders(encodeHeaders(headers));
  expect(Object.keys(back)).toEqual(["__proto__", "x"]);
  expect(Object.getOwnPropertyDescriptor(back, "__proto__")?.value.toString()).toBe("p");
  expect(Object.getPrototypeOf(back)).toBe(Object.prototype);
  expect(Object.keys(deadLetterHeaders(back, {
    topic: "t", partition: 0, offset: "1", timestamp: "0", groupId: "g", handler: "h", reason: "poison", error: "e", errorType: "Error", attempts: 1, failedAt: new Date(0),
  }))).toContain("__proto__");
});

test("kafkajs's headers: the last value of a repeated name for the handler, every value kept aside, invisible to enumeration", () => {
  const raw = { a: Buffer.from("1"), trace: [Buffer.from("t1"), "t2", undefined, Buffer.from("t3")], z: "zz", gone: undefined, empty: [] };
  const headers = fromKafkajs(raw);
  expect(Object.keys(headers)).toEqual(["a", "trace", "z"]);
  expect(JSON.stringify(headers)).toBe(JSON.stringify({ a: Buffer.from("1"), trace: Buffer.from("t3"), z: Buffer.from("zz") }));
  const message = { topic: "t", partition: 0, offset: "0", key: null, value: null, headers, timestamp: "0" };
  const all = allHeaders(message);
  expect(Object.keys(all)).toEqual(["a", "trace", "z"]);
  expect((all.trace as Buffer[]).map(String)).toEqual(["t1", "t2", "t3"]);
  expect(String(all.z)).toBe("zz");
  // One value per name: nothing kept aside, the headers are the message's own.
  const single = fromKafkajs({ a: "1", b: [Buffer.from("2")] });
  expect(allHeaders({ ...message, headers: single })).toBe(single);
  expect(fromKafkajs(undefined)).toEqual({});
  // Through the journal and back, and a dead letter's headers keep them.
  const back = decodeHeaders(encodeHeaders(all));
  expect((back.trace as Buffer[]).map(String)).toEqual(["t1", "t2", "t3"]);
  expect(String(back.a)).toBe("1");
  const dl = deadLetterHeaders(back, {
    topic: "t", partition: 0, offset: "1", timestamp: "0", groupId: "g", handler: "h", reason: "poison", error: "e", errorType: "Error", attempts: 1, failedAt: new Date(0),
  });
  expect((dl.trace as Buffer[]).map(String)).toEqual(["t1", "t2", "t3"]);
  // Rows journaled before repeated names were kept (one base64 string per name) still decode.
  expect(String(decodeHeaders(JSON.stringify({ x: Buffer.from("old").toString("base64") })).x)).toBe("old");
});
