// Offsets done above a partition's progress, as the progress log carries them (order: "key").
import { expect, test } from "bun:test";
import { MAX_RANGES, OffsetRanges } from "../../src/kafka/offset-ranges.ts";

test("offsets fold into sorted, disjoint ranges; has() finds members only", () => {
  const r = OffsetRanges.of([7n, 3n, 4n, 5n, 9n, 4n, 10n]);
  expect(r.encode()).toEqual([["3", "5"], ["7", "7"], ["9", "10"]]);
  for (const o of [3n, 4n, 5n, 7n, 9n, 10n]) expect(r.has(o)).toBe(true);
  for (const o of [0n, 2n, 6n, 8n, 11n]) expect(r.has(o)).toBe(false);
  expect(OffsetRanges.EMPTY.has(0n)).toBe(false);
});

test("from() cuts below a progress; with() unites; decode() reads what encode() wrote", () => {
  const r = OffsetRanges.of([3n, 4n, 5n, 7n, 9n, 10n]);
  expect(r.from(4n).encode()).toEqual([["4", "5"], ["7", "7"], ["9", "10"]]);
  expect(r.from(11n).empty).toBe(true);
  expect(r.with(OffsetRanges.of([6n, 8n])).encode()).toEqual([["3", "10"]]);
  expect(OffsetRanges.decode(r.encode())!.encode()).toEqual(r.encode());
});

test("decode() refuses what is not a list of offset pairs", () => {
  for (const bad of [null, "1-2", [["1"]], [[1, 2]], [["2", "1"]], [["-1", "2"]], [["a", "b"]]]) {
    expect(OffsetRanges.decode(bad)).toBeUndefined();
  }
});

test("encode() keeps the lowest ranges past the limit (a subset of done offsets is still true)", () => {
  const r = OffsetRanges.of(Array.from({ length: MAX_RANGES + 5 }, (_, i) => BigInt(i * 2)));
  const e = r.encode();
  expect(e.length).toBe(MAX_RANGES);
  expect(e[0]).toEqual(["0", "0"]);
});
