// Prometheus metrics (prom-client), one registry per worker. This module only subscribes to the
// event bus; metric names and labels are a contract (SPEC "HTTP").
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";
import { BatchedCounts, BatchedHistogram, type HistogramSeries } from "./batched.ts";
import type { EventBus, Outcome } from "../events.ts";
import { LagTracker } from "./lag.ts";

export interface Metrics {
  readonly registry: Registry;
  readonly lag: LagTracker;
  /** Messages in a handler attempt right now, by handler. */
  inflight(): Map<string, number>;
  render(): Promise<{ contentType: string; body: string }>;
  close(): void;
}

interface TopicSeries {
  cells: Record<Outcome, { n: number }>;
  duration: HistogramSeries;
}

const OUTCOMES: Outcome[] = ["processed", "deduplicated", "retried", "dead_lettered", "failed"];
/** Outcomes whose time is the handler's work (a dedup hit or a retry would skew the histogram). */
const TIMED = new Set<Outcome>(["processed", "dead_lettered", "failed"]);

const HEAP_SPACE_METRICS = ["total", "used", "available"].map((m) => `nodejs_heap_space_size_${m}_bytes`);

export function createMetrics(bus: EventBus, opts: { processMetrics?: boolean } = {}): Metrics {
  const registry = new Registry();
  const registers = [registry];
  if (opts.processMetrics !== false) {
    collectDefaultMetrics({ register: registry });
    // Under Bun, v8.getHeapSpaceStatistics() walks the whole JavaScriptCore heap: ~26 ms of the
    // JavaScript thread per scrape with 300k objects live, every message waiting meanwhile. The
    // heap's size stays in nodejs_heap_size_*_bytes and process_resident_memory_bytes.
    if ((globalThis as { Bun?: unknown }).Bun) for (const name of HEAP_SPACE_METRICS) registry.removeSingleMetric(name);
  }

  // Per-message counts and durations: plain numbers, given to prom-client when scraped (batched.ts).
  const counts = new BatchedCounts<"handler" | "topic" | "outcome">();
  const messages = new Counter({
    name: "kexo_messages_total",
    help: "Messages by handler, topic and outcome (disjoint: a deduplicated message is not processed)",
    labelNames: ["handler", "topic", "outcome"] as const,
    registers,
    collect() {
      counts.flush(this);
    },
  });
  const duration = new BatchedHistogram({
    name: "kexo_handler_duration_seconds",
    help: "Time from a message's arrival in the executor to its completion or dead letter, retries included",
    buckets: [0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    registers,
  });
  const lag = new LagTracker(bus);
  new Gauge({
    name: "kexo_consumer_lag",
    help: "Messages behind the partition's high watermark (from fetches; absent until a partition's first fetch)",
    labelNames: ["group", "topic", "partition"] as const,
    registers,
    collect() {
      this.reset();
      for (const p of lag.snapshot()) this.set({ group: p.group, topic: p.topic, partition: String(p.partition) }, Number(p.lag));
    },
  });
  const attempts = new Map<string, number>();
  new Gauge({
    name: "kexo_inflight_messages",
    help: "Messages inside a handler attempt now",
    labelNames: ["handler"] as const,
    registers,
    collect() {
      this.reset();
      for (const [handler, n] of attempts) this.set({ handler }, n);
    },
  });
  const rebalances = new Counter({
    name: "kexo_rebalances_total",
    help: "Group joins (each one a rebalance generation) by consumer group",
    labelNames: ["group"] as const,
    registers,
  });
  const journalCommit = new Histogram({
    name: "kexo_journal_commit_seconds",
    help: "Time to commit one journal group commit",
    buckets: [0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
    registers,
  });
  const outboxPending = new Gauge({
    name: "kexo_outbox_pending",
    help: "Outbox records journaled but not yet published",
    registers,
  });

  // message.handled fires for every message: its series are found through two map lookups.
  const series = new Map<string, Map<string, TopicSeries>>();
  const seriesOf = (handler: string, topic: string): TopicSeries => {
    let byTopic = series.get(handler);
    if (!byTopic) series.set(handler, (byTopic = new Map()));
    let s = byTopic.get(topic);
    if (!s) {
      const cells = {} as Record<Outcome, { n: number }>;
      for (const outcome of OUTCOMES) cells[outcome] = counts.cell({ handler, topic, outcome });
      byTopic.set(topic, (s = { cells, duration: duration.series({ handler, topic }) }));
    }
    return s;
  };
  const off = [
    bus.on("message.handled", (e) => {
      const s = seriesOf(e.handler, e.topic);
      s.cells[e.outcome].n++;
      if (TIMED.has(e.outcome)) s.duration.observe(e.seconds);
    }),
    bus.on("message.started", (e) => void attempts.set(e.handler, (attempts.get(e.handler) ?? 0) + 1)),
    bus.on("message.finished", (e) => void attempts.set(e.handler, Math.max(0, (attempts.get(e.handler) ?? 1) - 1))),
    bus.on("consumer.joined", (e) => {
      rebalances.inc({ group: e.group });
      if (!attempts.has(e.handler)) attempts.set(e.handler, 0);
      // Every outcome series exists from the first join, so rates and sums start at 0.
      for (const topic of Object.keys(e.assignment)) for (const outcome of OUTCOMES) messages.inc({ handler: e.handler, topic, outcome }, 0);
    }),
    bus.on("journal.committed", (e) => journalCommit.observe(e.seconds)),
    bus.on("outbox.pending", (e) => outboxPending.set(e.count)),
  ];

  return {
    registry,
    lag,
    inflight: () => new Map(attempts),
    async render() {
      return { contentType: registry.contentType, body: await registry.metrics() };
    },
    close() {
      for (const f of off) f();
      lag.close();
      registry.clear();
    },
  };
}
