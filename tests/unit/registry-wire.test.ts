// The Confluent wire format as kexo reads and writes it: magic byte 0, a big-endian 4-byte schema
// id, and for protobuf the zigzag-varint message indexes ([0] as the single byte 0).
import { expect, test } from "bun:test";
import { PoisonError } from "../../src/errors.ts";
import { readFrame, readIndexes, writeFrame } from "../../src/registry/wire.ts";

test("a frame carries the schema id big-endian after magic byte 0", () => {
  const framed = writeFrame(0x01020304, Buffer.from("body"));
  expect([...framed.subarray(0, 5)]).toEqual([0, 1, 2, 3, 4]);
  expect(readFrame(framed)).toEqual({ schemaId: 0x01020304, body: Buffer.from("body") });
});

test("a value without magic byte 0 or shorter than the header is poison", () => {
  expect(() => readFrame(Buffer.from("{\"a\":1}"))).toThrow(PoisonError);
  expect(() => readFrame(Buffer.from([0, 0, 1]))).toThrow("not in the Confluent wire format");
});

test("message indexes: [0] is one zero byte; others are a zigzag count and zigzag indexes", () => {
  expect([...writeFrame(7, Buffer.from([9]), [0]).subarray(5)]).toEqual([0, 9]);
  expect([...writeFrame(7, Buffer.from([9]), [1, 2]).subarray(5)]).toEqual([4, 2, 4, 9]);
  expect(readIndexes(Buffer.from([0, 9]))).toEqual({ indexes: [0], rest: Buffer.from([9]) });
  expect(readIndexes(Buffer.from([4, 2, 4, 9]))).toEqual({ indexes: [1, 2], rest: Buffer.from([9]) });
  const big = writeFrame(7, Buffer.from([]), [300]).subarray(5);
  expect(readIndexes(big).indexes).toEqual([300]);
});

test("truncated or implausible message indexes are poison", () => {
  expect(() => readIndexes(Buffer.from([0x80]))).toThrow(PoisonError);
  expect(() => readIndexes(Buffer.from([1]))).toThrow("not plausible");
});
