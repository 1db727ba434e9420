// The batched histogram and counter render exactly what prom-client's own types render for the
// same observations (the /metrics contract), including values on bucket bounds and past the last.
import { expect, test } from "bun:test";
import { Counter, Histogram, Registry } from "prom-client";
import { BatchedCounts, BatchedHistogram } from "../../src/metrics/batched.ts";

const buckets = [0.001, 0.01, 0.1, 1];
const samples: [string, number][] = [["a", 0], ["a", 0.001], ["a", 0.0011], ["b", 0.5], ["a", 1], ["b", 7], ["a", 0.05]];

test("BatchedHistogram renders like prom-client's Histogram", async () => {
  const ref = new Registry();
  const mine = new Registry();
  const h = new Histogram({ name: "x_seconds", help: "x", labelNames: ["handler", "topic"] as const, buckets, registers: [ref] });
  const b = new BatchedHistogram({ name: "x_seconds", help: "x", buckets, registers: [mine] });
  for (const [handler, v] of samples) {
    h.observe({ handler, topic: "t" }, v);
    b.series({ handler, topic: "t" }).observe(v);
  }
  expect(await mine.metrics()).toBe(await ref.metrics());
  b.reset();
  expect(await mine.metrics()).not.toContain("x_seconds_count");
});

test("BatchedCounts hands prom-client only what was added since the last scrape", async () => {
  const ref = new Registry();
  const mine = new Registry();
  const labelNames = ["handler", "outcome"] as const;
  const r = new Counter({ name: "m_total", help: "m", labelNames, registers: [ref] });
  const counts = new BatchedCounts<"handler" | "outcome">();
  new Counter({ name: "m_total", help: "m", labelNames, registers: [mine], collect() { counts.flush(this); } });
  const cell = counts.cell({ handler: "h", outcome: "processed" });
  for (let round = 1; round <= 3; round++) {
    for (let i = 0; i < round * 10; i++) {
      cell.n++;
      r.inc({ handler: "h", outcome: "processed" });
    }
    counts.cell({ handler: "h", outcome: "retried" }).n += round;
    r.inc({ handler: "h", outcome: "retried" }, round);
    expect(await mine.metrics()).toBe(await ref.metrics());
  }
  expect(await mine.metrics()).toContain('m_total{handler="h",outcome="processed"} 60');
});
