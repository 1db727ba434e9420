// Every endpoint answers and every metric name is exposed (through app.request()); the counts in
// kexo_messages_total equal what was handled, outcome by outcome, and kexo_consumer_lag falls to 0
// once the backlog is drained. In key order, lag counts what is queued behind a slow key.
import { afterAll, beforeAll, expect, test } from "bun:test";
import Database from "libsql";
import { join } from "node:path";
import { PermanentError, defineHandler, v } from "../src/index.ts";
import type { Outcome } from "../src/events.ts";
import { resolveHandler } from "../src/handlers/resolve.ts";
import { createLogger } from "../src/log.ts";
import { Worker } from "../src/worker.ts";
import { mockEnsureTopics } from "../src/dev/mock-cluster.ts";
import { startBroker, type TestBroker } from "./support/broker.ts";
import { tempDir } from "./support/tmp.ts";
import { waitUntil } from "./support/wait.ts";

const TOPIC = "metrics-in";
const KEYED = "metrics-keyed-in";
const EMPTY = "metrics-empty-in";
const NAMES = [
  "kexo_messages_total",
  "kexo_handler_duration_seconds",
  "kexo_consumer_lag",
  "kexo_inflight_messages",
  "kexo_rebalances_total",
  "kexo_journal_commit_seconds",
  "kexo_outbox_pending",
  "process_resident_memory_bytes",
  "process_cpu_seconds_total",
  "nodejs_eventloop_lag_seconds",
];
let broker: TestBroker;

beforeAll(async () => {
  broker = await startBroker({ [TOPIC]: 3, [KEYED]: 1, [EMPTY]: 2 });
});

afterAll(async () => {
  await broker?.close();
});

/** Sample values of one metric from Prometheus text, by label string. */
function samples(text: string, name: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    const m = new RegExp(`^${name}(\\{[^}]*\\})? (\\S+)$`).exec(line);
    if (m) out.set(m[1] ?? "", Number(m[2]));
  }
  return out;
}

test("metrics count what was handled, lag drains to 0, every endpoint answers", async () => {
  const dir = tempDir();
  const db = join(dir, "journal.db");
  const problems: { path: string; message: string }[] = [];
  const handler = resolveHandler("metered.ts", "metered", defineHandler({
    topics: [TOPIC],
    schema: v.object({ n: v.number(), bad: v.boolean() }),
    retry: { attempts: 2, initialDelayMs: 10, maxDelayMs: 20 },
    async setup(hdb) {
      await hdb.execute("CREATE TABLE IF NOT EXISTS effects (n INTEGER NOT NULL)");
    },
    async handle(p, ctx) {
      if (p.bad) throw new PermanentError(`message ${p.n} is refused`);
      // Every 50th message fails once, then succeeds: one `retried` and one `processed`.
      if (p.n % 50 === 0 && ctx.attempt === 1) throw new Error("transient");
      await ctx.tx((tx) => tx.execute({ sql: "INSERT INTO effects (n) VALUES (?)", args: [p.n] }));
    },
  }), problems)!;
  expect(problems).toEqual([]);

  // 300 events with their own kexo-id; 10 refused; 5 re-published copies are deduplicated.
  const record = (n: number) => ({ key: String(n % 7), value: JSON.stringify({ n, bad: n % 30 === 29 }), headers: { "kexo-id": `event-${n}` } });
  await broker.produce(TOPIC, Array.from({ length: 300 }, (_, n) => record(n)));
  await broker.produce(TOPIC, [1, 2, 3, 4, 5].map(record));

  const worker = await Worker.start({
    handlers: [handler],
    kafka: { brokers: broker.brokers.split(","), clientId: "kexo-metrics-test" },
    db: `file:${db}`,
    shutdownTimeoutMs: 5000,
    log: createLogger({ level: "silent" }),
    ensureTopics: mockEnsureTopics(broker.cluster, 1),
  });
  const handled = new Map<Outcome, number>();
  worker.bus.on("message.handled", (e) => handled.set(e.outcome, (handled.get(e.outcome) ?? 0) + 1));
  const app = worker.app;
  const scrape = async () => (await app.request("/metrics")).text();

  try {
    const text = await waitUntil("the backlog drained with lag 0 on every partition", async () => {
      const t = await scrape();
      const lag = samples(t, "kexo_consumer_lag");
      const done = [...samples(t, "kexo_messages_total").entries()].filter(([l]) => !l.includes('"retried"')).reduce((n, [, c]) => n + c, 0);
      // And the journal committed once since (group commits run on a timer, after the handling).
      const commits = samples(t, "kexo_journal_commit_seconds_count").get("") ?? 0;
      return done === 305 && lag.size === 3 && [...lag.values()].every((x) => x === 0) && commits > 0 && t;
    }, { timeoutMs: 60_000, intervalMs: 200 });

    const res = await app.request("/metrics");
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toContain("text/plain");
    for (const name of NAMES) expect(text).toContain(`# TYPE ${name} `);

    const counts = samples(text, "kexo_messages_total");
    const count = (outcome: Outcome) => counts.get(`{handler="metered",topic="${TOPIC}",outcome="${outcome}"}`);
    const rows = new Database(db, { readonly: true });
    const effects = (rows.prepare("SELECT count(*) AS n FROM effects").get() as { n: number }).n;
    rows.close();
    expect(count("processed")).toBe(290);
    expect(effects).toBe(290);
    expect(count("dead_lettered")).toBe(10);
    expect(count("deduplicated")).toBe(5);
    expect(count("retried")).toBe(6);
    expect(count("failed")).toBe(0);
    for (const outcome of ["processed", "dead_lettered", "deduplicated", "retried"] as Outcome[]) expect(count(outcome)).toBe(handled.get(outcome)!);
    expect(samples(text, "kexo_handler_duration_seconds_count").get(`{handler="metered",topic="${TOPIC}"}`)).toBe(300);
    expect(samples(text, "kexo_inflight_messages").get('{handler="metered"}')).toBe(0);
    expect(samples(text, "kexo_rebalances_total").get(`{group="${handler.groupId}"}`)).toBeGreaterThanOrEqual(1);
    expect(samples(text, "kexo_journal_commit_seconds_count").get("")).toBeGreaterThan(0);
    expect(samples(text, "kexo_outbox_pending").get("")).toBe(0);
    expect(samples(text, "process_resident_memory_bytes").get("")).toBeGreaterThan(0);
    expect(samples(text, "nodejs_heap_size_used_bytes").get("")).toBeGreaterThan(0);
    // Not under Bun: each scrape walked the whole heap on the JavaScript thread (metrics.ts).
    expect(text).not.toContain("nodejs_heap_space_size_");

    // /status: per-partition committed offset, high watermark and lag; in-flight; no error.
    const status = (await (await app.request("/status")).json()) as {
      handlers: { handler: string; group: string; joined: boolean; assignment: Record<string, number[]>; inflight: number; partitions: { partition: number; committed: string; highWatermark: string; lag: string }[] }[];
      inflight: number;
      lastError?: string;
    };
    const h = status.handlers[0]!;
    expect(h.handler).toBe("metered");
    expect(h.group).toBe(handler.groupId);
    expect(h.joined).toBe(true);
    expect(h.assignment[TOPIC]!.sort()).toEqual([0, 1, 2]);
    expect(status.inflight).toBe(0);
    expect(status.lastError).toBeUndefined();
    await waitUntil("offsets committed up to the high watermarks", async () => {
      const s = (await (await app.request("/status")).json()) as typeof status;
      return s.handlers[0]!.partitions.every((p) => p.committed === p.highWatermark && p.lag === "0") || undefined;
    });
    const total = h.partitions.reduce((n, p) => n + Number(p.highWatermark), 0);
    expect(total).toBe(305);

    expect((await app.request("/healthz")).status).toBe(200);
    expect((await app.request("/readyz")).status).toBe(200);
  } finally {
    const stopping = worker.stop();
    // Readiness drops at once when a drain begins.
    const ready = await app.request("/readyz");
    expect(ready.status).toBe(503);
    expect(JSON.stringify(await ready.json())).toContain("draining");
    expect(await stopping).toBe(true);
  }
}, 90_000);

test("key order: lag counts the messages queued behind a slow key, not only the unhandled ones", async () => {
  const dir = tempDir();
  let release!: () => void;
  const slow = new Promise<void>((r) => (release = r));
  const handler = resolveHandler("keyed.ts", "keyed", defineHandler({
    topics: [KEYED],
    schema: v.object({ n: v.number() }),
    order: "key",
    concurrency: 4,
    async handle(p) {
      if (p.n === 0) await slow;
    },
  }), [])!;
  // Offset 0 (key "a") holds on; offsets 1–9 (keys "k1"…) finish out of order above it.
  await broker.produce(KEYED, Array.from({ length: 10 }, (_, n) => ({ key: n === 0 ? "a" : `k${n}`, value: JSON.stringify({ n }), partition: 0 })));
  const worker = await Worker.start({
    handlers: [handler],
    kafka: { brokers: broker.brokers.split(","), clientId: "kexo-metrics-keyed" },
    db: `file:${join(dir, "journal.db")}`,
    shutdownTimeoutMs: 5000,
    log: createLogger({ level: "silent" }),
    ensureTopics: mockEnsureTopics(broker.cluster, 1),
  });
  let processed = 0;
  worker.bus.on("message.handled", (e) => e.outcome === "processed" && processed++);
  const lag = async () => samples(await (await worker.app.request("/metrics")).text(), "kexo_consumer_lag").get(`{group="${handler.groupId}",topic="${KEYED}",partition="0"}`);
  try {
    await waitUntil("the nine fast keys processed", () => processed === 9 || undefined, { timeoutMs: 30_000 });
    // A commit interval later, the lag still counts all ten: nothing below offset 10 is consumed
    // until offset 0 is (Kafka would deliver them all again).
    await Bun.sleep(600);
    expect(await lag()).toBe(10);
    // Later messages arrive and finish too: the next fetch starts past the queued ones, but they
    // are still not consumed (the fetch position is no position for key order while any wait).
    await broker.produce(KEYED, Array.from({ length: 5 }, (_, i) => ({ key: `m${i}`, value: JSON.stringify({ n: 10 + i }), partition: 0 })));
    await waitUntil("the five later keys processed", () => processed === 14 || undefined, { timeoutMs: 30_000 });
    await Bun.sleep(600);
    expect(await lag()).toBe(15);
    release();
    await waitUntil("lag 0 once the slow key finished", async () => (await lag()) === 0 || undefined, { timeoutMs: 15_000, intervalMs: 100 });
  } finally {
    release();
    expect(await worker.stop()).toBe(true);
  }
}, 60_000);

test("/status before any message: offsets not known yet are null, not Kafka's -1", async () => {
  const handler = resolveHandler("idle.ts", "idle", defineHandler({ topics: [EMPTY], async handle() {} }), [])!;
  const worker = await Worker.start({
    handlers: [handler],
    kafka: { brokers: broker.brokers.split(","), clientId: "kexo-metrics-idle" },
    db: `file:${join(tempDir(), "journal.db")}`,
    shutdownTimeoutMs: 5000,
    log: createLogger({ level: "silent" }),
    ensureTopics: mockEnsureTopics(broker.cluster, 1),
  });
  try {
    type Partition = { partition: number; next: string | null; durable: string | null; committed: string | null };
    const partitions = await waitUntil("joined, both partitions assigned", async () => {
      const s = (await (await worker.app.request("/status")).json()) as { handlers: { joined: boolean; partitions: Partition[] }[] };
      const h = s.handlers[0]!;
      return h.joined && h.partitions.length === 2 && h.partitions;
    });
    for (const p of partitions) expect([p.next, p.durable, p.committed]).toEqual([null, null, null]);
  } finally {
    expect(await worker.stop()).toBe(true);
  }
}, 60_000);
