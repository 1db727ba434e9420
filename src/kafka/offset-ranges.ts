// Offsets done above a partition's shared progress (order: "key" finishes messages out of order),
// as sorted, disjoint, inclusive ranges: what one owner hands the next through the progress log,
// so that a new owner with its own journal does not run them again (guarantee 7).

/**
 * Most ranges one progress record carries (≈ 25 B each, so under Kafka's default 1 MB record): the
 * lowest are kept, and a new owner runs the offsets past them again. A partition's ranges number
 * at most its unfinished messages + 1, which the key lanes bound at 64 × concurrency (at least
 * 1000): only a concurrency above 390 can reach this.
 */
export const MAX_RANGES = 25_000;

export class OffsetRanges {
  /** [first, last] pairs, sorted, disjoint and not adjacent. */
  readonly ranges: readonly (readonly [bigint, bigint])[];

  private constructor(ranges: (readonly [bigint, bigint])[]) {
    this.ranges = ranges;
  }

  static readonly EMPTY = new OffsetRanges([]);

  /** From offsets in any order, duplicates allowed. */
  static of(offsets: Iterable<bigint>): OffsetRanges {
    return OffsetRanges.union(Array.from(offsets, (o) => [o, o] as const));
  }

  /** From a progress record's `done` ([first, last] as decimal strings); undefined when malformed. */
  static decode(raw: unknown): OffsetRanges | undefined {
    if (!Array.isArray(raw)) return undefined;
    const pairs: [bigint, bigint][] = [];
    for (const r of raw) {
      if (!Array.isArray(r) || r.length !== 2 || typeof r[0] !== "string" || typeof r[1] !== "string") return undefined;
      if (!/^\d+$/.test(r[0]) || !/^\d+$/.test(r[1])) return undefined;
      const a = BigInt(r[0]);
      const b = BigInt(r[1]);
      if (b < a) return undefined;
      pairs.push([a, b]);
    }
    return OffsetRanges.union(pairs);
  }

  encode(): [string, string][] {
    return this.ranges.slice(0, MAX_RANGES).map(([a, b]) => [a.toString(), b.toString()]);
  }

  get empty(): boolean {
    return this.ranges.length === 0;
  }

  has(offset: bigint): boolean {
    let lo = 0;
    let hi = this.ranges.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const [a, b] = this.ranges[mid]!;
      if (offset < a) hi = mid - 1;
      else if (offset > b) lo = mid + 1;
      else return true;
    }
    return false;
  }

  /** The part at or above `from`. */
  from(from: bigint): OffsetRanges {
    if (this.ranges.length === 0 || this.ranges[0]![0] >= from) return this;
    const out: [bigint, bigint][] = [];
    for (const [a, b] of this.ranges) {
      if (b < from) continue;
      out.push([a < from ? from : a, b]);
    }
    return new OffsetRanges(out);
  }

  /** Both sets' offsets. */
  with(other: OffsetRanges): OffsetRanges {
    if (other.empty) return this;
    if (this.empty) return other;
    return OffsetRanges.union([...this.ranges, ...other.ranges]);
  }

  private static union(pairs: (readonly [bigint, bigint])[]): OffsetRanges {
    const sorted = [...pairs].sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0));
    const out: [bigint, bigint][] = [];
    for (const [a, b] of sorted) {
      const last = out[out.length - 1];
      if (last && a <= last[1] + 1n) {
        if (b > last[1]) last[1] = b;
      } else out.push([a, b]);
    }
    return new OffsetRanges(out);
  }
}
