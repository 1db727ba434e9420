// Per-message metrics kept in plain numbers and handed to prom-client's registry only when scraped.
// prom-client hashes the label set on every labelled inc() and observe(), child or not: on the hot
// path that was ≈ 2 µs a message (bench (b): 46k → 52k msg/s without it). A series here is looked
// up once per label set and then costs an add, or a bucket search and two adds.
import type { Counter, Metric, MetricObjectWithValues, MetricType, MetricValueWithName, Registry } from "prom-client";

/** One label set of a BatchedHistogram: observe() is all the hot path calls. */
export class HistogramSeries {
  readonly labels: Record<string, string>;
  /** Per bucket (not cumulative); the last one is +Inf. */
  readonly counts: Float64Array;
  sum = 0;
  count = 0;
  readonly #bounds: readonly number[];

  constructor(labels: Record<string, string>, bounds: readonly number[]) {
    this.labels = labels;
    this.#bounds = bounds;
    this.counts = new Float64Array(bounds.length + 1);
  }

  observe(value: number): void {
    const bounds = this.#bounds;
    let i = 0;
    while (i < bounds.length && value > bounds[i]!) i++;
    this.counts[i]!++;
    this.sum += value;
    this.count++;
  }
}

/**
 * A Prometheus histogram in prom-client's registry, rendered by prom-client, whose observations
 * skip its label hashing. Same exposition as prom-client's Histogram (`_bucket` with `le`,
 * `_sum`, `_count`).
 */
export class BatchedHistogram {
  readonly name: string;
  readonly help: string;
  readonly type = "histogram";
  readonly aggregator = "sum";
  readonly bounds: readonly number[];
  #series = new Map<string, HistogramSeries>();

  constructor(opts: { name: string; help: string; buckets: number[]; registers: Registry[] }) {
    this.name = opts.name;
    this.help = opts.help;
    this.bounds = [...opts.buckets].sort((a, b) => a - b);
    // The registry only calls get() and reset() (and reads name/type): it duck-types its metrics.
    for (const r of opts.registers) r.registerMetric(this as unknown as Metric<string>);
  }

  /** The series for a label set; callers keep it (the lookup builds a key). */
  series(labels: Record<string, string>): HistogramSeries {
    const key = JSON.stringify(labels);
    let s = this.#series.get(key);
    if (!s) this.#series.set(key, (s = new HistogramSeries(labels, this.bounds)));
    return s;
  }

  async get(): Promise<MetricObjectWithValues<MetricValueWithName<string>>> {
    const values: MetricValueWithName<string>[] = [];
    const bucket = `${this.name}_bucket`;
    for (const s of this.#series.values()) {
      let acc = 0;
      this.bounds.forEach((le, i) => {
        acc += s.counts[i]!;
        values.push({ labels: { le, ...s.labels }, value: acc, metricName: bucket });
      });
      values.push({ labels: { le: "+Inf", ...s.labels }, value: s.count, metricName: bucket });
      values.push({ labels: { ...s.labels }, value: s.sum, metricName: `${this.name}_sum` });
      values.push({ labels: { ...s.labels }, value: s.count, metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: "histogram" as unknown as MetricType, values, aggregator: "sum", collect: () => {} };
  }

  reset(): void {
    this.#series.clear();
  }
}

/**
 * Counts for one prom-client Counter kept in plain numbers: the hot path adds to a cell's `n`;
 * `flush`, from the counter's collect() (before every scrape), moves what was added since into
 * prom-client.
 */
export class BatchedCounts<L extends string> {
  #entries = new Map<string, { labels: Partial<Record<L, string>>; n: number }>();

  /** The cell for a label set; callers keep it and add to `n`. */
  cell(labels: Partial<Record<L, string>>): { n: number } {
    const key = JSON.stringify(labels);
    let e = this.#entries.get(key);
    if (!e) this.#entries.set(key, (e = { labels, n: 0 }));
    return e;
  }

  flush(counter: Counter<L>): void {
    for (const e of this.#entries.values()) {
      if (e.n === 0) continue;
      counter.inc(e.labels, e.n);
      e.n = 0;
    }
  }
}
