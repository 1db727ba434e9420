// Bad input never crashes the worker nor blocks its partition: poison (garbage bytes, invalid
// UTF-8, empty and null values, wrong schema, deeply nested JSON, a 500 KB non-JSON value) and
// PermanentErrors are dead-lettered at once, other errors are retried `retry.attempts` times in all
// with backoff, and each dead letter carries the original key, value and headers byte for byte plus
// the kexo-dlq-*, Spring and Connect headers, and a row in the journal.
import { expect, test } from "bun:test";
import Database from "libsql";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { callsLog } from "./support/tmp.ts";
import { waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "bad-in";
const DLQ = "bad-in.dlq";
const GROUP = "kexo-bad-bad-in";
const HANDLER_NAME = "bad";
let broker: TestBroker;
let dir: string;

const HANDLER = `
import { defineHandler, v, PermanentError } from "kexo";
import { appendFileSync } from "node:fs";

export default defineHandler({
  topics: ["${TOPIC}"],
  schema: v.object({ id: v.string(), n: v.number() }),
  retry: { attempts: 3, initialDelayMs: 200, maxDelayMs: 1000 },
  async setup(db) {
    await db.execute("CREATE TABLE IF NOT EXISTS effects (id TEXT NOT NULL)");
  },
  async handle(p, ctx) {
    appendFileSync(process.env.CALLS_LOG!, JSON.stringify({ id: p.id, attempt: ctx.attempt, t: Date.now() }) + "\\n");
    if (p.id === "throw-once" && ctx.attempt === 1) throw new Error("first attempt fails");
    if (p.id === "permanent") throw new PermanentError("order 7 was cancelled upstream");
    if (p.id === "always") throw new TypeError("the payment service said no");
    await ctx.tx((db) => db.execute({ sql: "INSERT INTO effects (id) VALUES (?)", args: [p.id] }));
    return { id: p.id };
  },
});
`;

const KEY = Buffer.from([0xff, 0x00, 0x41, 0x80]);
const HEADERS = { "trace-id": Buffer.from("trace-42"), bin: Buffer.from([0xfe, 0x00, 0xff]) };
const json = (id: string, n = 1) => Buffer.from(JSON.stringify({ id, n }));
const BIG = Buffer.from(JSON.stringify({ id: "big", n: 2, pad: "p".repeat(500 * 1024) }));
const BIG_POISON = Buffer.from("x".repeat(500 * 1024));
const DEEP = Buffer.from("[".repeat(100_000) + "]".repeat(100_000));

/** In partition order; `dlq` is the dead letter each must produce (reason, attempts, error check). */
const CASES: { name: string; value: Buffer | null; dlq?: { reason: string; type: string; attempts: number; error: (e: string) => boolean } }[] = [
  { name: "ok-1", value: json("ok-1") },
  { name: "garbage", value: Buffer.from("9f00ff13c0afdeadbeef", "hex"), dlq: { reason: "poison", type: "PoisonError", attempts: 1, error: (e) => e === "value is not valid UTF-8 (10 bytes) but the handler expects JSON" } },
  { name: "invalid-utf8", value: Buffer.concat([Buffer.from('{"id":"'), Buffer.from([0xc3, 0x28]), Buffer.from('","n":1}')]), dlq: { reason: "poison", type: "PoisonError", attempts: 1, error: (e) => e === "value is not valid UTF-8 (17 bytes) but the handler expects JSON" } },
  { name: "text", value: Buffer.from("hello, not json"), dlq: { reason: "poison", type: "PoisonError", attempts: 1, error: (e) => e.startsWith("value is not JSON: ") } },
  { name: "empty", value: Buffer.alloc(0), dlq: { reason: "poison", type: "PoisonError", attempts: 1, error: (e) => e === "value is empty but the handler expects JSON matching its schema" } },
  { name: "null", value: null, dlq: { reason: "poison", type: "PoisonError", attempts: 1, error: (e) => e === "value is null (a tombstone) but the handler expects JSON matching its schema" } },
  { name: "big", value: BIG },
  { name: "big-poison", value: BIG_POISON, dlq: { reason: "poison", type: "PoisonError", attempts: 1, error: (e) => e.startsWith("value is not JSON: ") && e.length < 1000 } },
  {
    name: "wrong-schema",
    value: Buffer.from(JSON.stringify({ id: 5, n: "x" })),
    dlq: { reason: "poison", type: "PoisonError", attempts: 1, error: (e) => e === 'value does not match the schema: id: Invalid type: Expected string but received 5; n: Invalid type: Expected number but received "x"' },
  },
  { name: "deep", value: DEEP, dlq: { reason: "poison", type: "PoisonError", attempts: 1, error: (e) => e.startsWith("value does not match the schema: ") } },
  { name: "throw-once", value: json("throw-once") },
  { name: "permanent", value: json("permanent"), dlq: { reason: "permanent", type: "PermanentError", attempts: 1, error: (e) => e === "order 7 was cancelled upstream" } },
  { name: "always", value: json("always"), dlq: { reason: "exhausted", type: "TypeError", attempts: 3, error: (e) => e === "the payment service said no" } },
  { name: "ok-last", value: json("ok-last") },
];
const DEAD = CASES.flatMap((c, offset) => (c.dlq ? [{ ...c, offset, dlq: c.dlq }] : []));

const DLQ_HEADERS = [
  "kexo-dlq-topic", "kexo-dlq-partition", "kexo-dlq-offset", "kexo-dlq-group", "kexo-dlq-reason", "kexo-dlq-error",
  "kexo-dlq-error-type", "kexo-dlq-attempts", "kexo-dlq-failed-at",
  "kafka_dlt-original-topic", "kafka_dlt-original-partition", "kafka_dlt-original-offset", "kafka_dlt-original-timestamp",
  "kafka_dlt-original-consumer-group", "kafka_dlt-exception-fqcn", "kafka_dlt-exception-message", "kafka_dlt-exception-stacktrace",
  "__connect.errors.topic", "__connect.errors.partition", "__connect.errors.offset", "__connect.errors.exception.class.name",
  "__connect.errors.exception.message", "__connect.errors.exception.stacktrace",
  "__connect.errors.stage", "__connect.errors.class.name", "__connect.errors.connector.name", "__connect.errors.task.id",
];

withBroker({ [TOPIC]: 1, [DLQ]: 1 }, { "bad.ts": HANDLER }, (f) => ({ broker, dir } = f));

const int32 = (n: number) => Buffer.from([0, 0, 0, n]);
const int64 = (n: number) => {
  const b = Buffer.alloc(8);
  b.writeBigInt64BE(BigInt(n));
  return b;
};
/** Kafka has no distinction between an empty and a missing value on the way back; kafkajs gives null or an empty Buffer. */
const bytes = (b: Buffer | null) => (b === null ? null : [...b]);

test("poison and permanent errors are dead-lettered at once, exact to the byte; retries honour retry.attempts; the worker stays up", async () => {
  const db = join(dir, "journal.db");
  const { env, calls } = callsLog<{ id: string; attempt: number; t: number }>(dir);
  const w = new WorkerProcess(
    runArgs(broker.brokers, join(dir, "handlers"), db),
    { env },
  );
  const address = await w.httpAddress();
  await w.waitJoined();

  // Liveness is watched the whole time: any non-200 /healthz fails the test.
  const health: number[] = [];
  let watching = true;
  const watcher = (async () => {
    while (watching) {
      health.push(await fetch(`http://${address}/healthz`).then((r) => r.status, () => 0));
      await new Promise((r) => setTimeout(r, 200));
    }
  })();

  const started = Date.now();
  await broker.produce(TOPIC, CASES.map((c) => ({ key: KEY, value: c.value, headers: HEADERS, partition: 0 })));
  await waitUntil("ok-last handled", () => calls().some((c) => c.id === "ok-last") || undefined, { timeoutMs: 60_000 });
  const dead = await broker.readAll(DLQ, DEAD.length, 30_000);
  watching = false;
  await watcher;

  expect(w.proc.exitCode).toBeNull();
  expect(w.lines.filter((l) => l.msg === "starting").length).toBe(1);
  expect(health.length).toBeGreaterThan(5);
  expect(health.filter((s) => s !== 200)).toEqual([]);

  // Handler calls: poison never reaches the handler; throw-once twice; always exactly 3 attempts
  // numbered from 1, each wait at least the lower bound of its backoff (half of 200·2^(n-1) ms).
  const byId = (id: string) => calls().filter((c) => c.id === id);
  expect(calls().map((c) => c.id).sort()).toEqual(["always", "always", "always", "big", "ok-1", "ok-last", "permanent", "throw-once", "throw-once"]);
  expect(byId("throw-once").map((c) => c.attempt)).toEqual([1, 2]);
  expect(byId("permanent").map((c) => c.attempt)).toEqual([1]);
  const always = byId("always");
  expect(always.map((c) => c.attempt)).toEqual([1, 2, 3]);
  expect(always[1]!.t - always[0]!.t).toBeGreaterThanOrEqual(100 - 5);
  expect(always[2]!.t - always[1]!.t).toBeGreaterThanOrEqual(200 - 5);
  // Partition order: ok-last ran only after the failing message ahead of it was dead-lettered.
  expect(byId("ok-last")[0]!.t).toBeGreaterThanOrEqual(always[2]!.t);

  // Dead letters: one per bad message, in order, byte for byte, with every header.
  expect(dead.length).toBe(DEAD.length);
  for (const [i, d] of dead.entries()) {
    const c = DEAD[i]!;
    const h = d.headers;
    const s = (k: string) => h[k]?.toString("utf8");
    expect({ name: c.name, key: bytes(d.key) }).toEqual({ name: c.name, key: [...KEY] });
    if (c.value === null || c.value.length === 0) expect({ name: c.name, len: d.value?.length ?? 0 }).toEqual({ name: c.name, len: 0 });
    else expect({ name: c.name, equal: d.value !== null && d.value.equals(c.value) }).toEqual({ name: c.name, equal: true });
    if (c.value === null) expect({ name: c.name, value: d.value }).toEqual({ name: c.name, value: null });
    expect(Object.keys(h).sort()).toEqual([...Object.keys(HEADERS), ...DLQ_HEADERS].sort());
    expect(bytes(h["trace-id"]!)).toEqual([...HEADERS["trace-id"]]);
    expect(bytes(h.bin!)).toEqual([...HEADERS.bin]);
    const error = s("kexo-dlq-error")!;
    expect({ name: c.name, error, ok: c.dlq.error(error) }).toEqual({ name: c.name, error, ok: true });
    expect({
      name: c.name,
      topic: s("kexo-dlq-topic"), partition: s("kexo-dlq-partition"), offset: s("kexo-dlq-offset"), group: s("kexo-dlq-group"),
      reason: s("kexo-dlq-reason"), type: s("kexo-dlq-error-type"), attempts: s("kexo-dlq-attempts"),
      springTopic: s("kafka_dlt-original-topic"), springPartition: bytes(h["kafka_dlt-original-partition"]!),
      springOffset: bytes(h["kafka_dlt-original-offset"]!), springGroup: s("kafka_dlt-original-consumer-group"),
      springType: s("kafka_dlt-exception-fqcn"), springMessage: s("kafka_dlt-exception-message"),
      connectTopic: s("__connect.errors.topic"), connectPartition: s("__connect.errors.partition"), connectOffset: s("__connect.errors.offset"),
      connectType: s("__connect.errors.exception.class.name"), connectMessage: s("__connect.errors.exception.message"),
      connectStage: s("__connect.errors.stage"), connector: s("__connect.errors.connector.name"),
    }).toEqual({
      name: c.name,
      topic: TOPIC, partition: "0", offset: String(c.offset), group: GROUP,
      reason: c.dlq.reason, type: c.dlq.type, attempts: String(c.dlq.attempts),
      springTopic: TOPIC, springPartition: [...int32(0)], springOffset: [...int64(c.offset)], springGroup: GROUP,
      springType: c.dlq.type, springMessage: error,
      connectTopic: TOPIC, connectPartition: "0", connectOffset: String(c.offset), connectType: c.dlq.type, connectMessage: error,
      connectStage: c.dlq.reason === "poison" ? "VALUE_CONVERTER" : "TASK_PUT", connector: HANDLER_NAME,
    });
    const failedAt = s("kexo-dlq-failed-at")!;
    expect(new Date(failedAt).toISOString()).toBe(failedAt);
    expect(Date.parse(failedAt)).toBeGreaterThanOrEqual(started - 1000);
    expect(h["kafka_dlt-original-timestamp"]!.length).toBe(8);
    expect(s("kafka_dlt-exception-stacktrace")!.length).toBeGreaterThan(0);
  }

  w.kill("SIGTERM");
  expect(await w.exited()).toBe(0);

  // The journal: each dead letter kept (original bytes, reason, attempts); completions for the rest.
  const conn = new Database(db, { readonly: true });
  const rows = conn.prepare(`SELECT message_id, "offset", reason, attempts, key, value, error FROM kexo_dead_letters ORDER BY seq`).all() as
    { message_id: string; offset: number; reason: string; attempts: number; key: ArrayBuffer | null; value: ArrayBuffer | null; error: string }[];
  const messages = conn.prepare(`SELECT id, status, attempts FROM kexo_messages ORDER BY "offset"`).all() as { id: string; status: string; attempts: number }[];
  const effects = conn.prepare("SELECT id FROM effects ORDER BY id").all() as { id: string }[];
  conn.close();
  expect(rows.map((r) => [r.message_id, r.offset, r.reason, r.attempts])).toEqual(
    DEAD.map((c) => [`kafka-unique-id-${TOPIC}-0-${GROUP}-${c.offset}`, c.offset, c.dlq.reason, c.dlq.attempts]),
  );
  for (const [i, r] of rows.entries()) {
    const c = DEAD[i]!;
    expect(r.key === null ? null : [...Buffer.from(r.key)]).toEqual([...KEY]);
    if (c.value !== null && c.value.length > 0) expect(Buffer.from(r.value!).equals(c.value)).toBe(true);
    expect(c.dlq.error(r.error)).toBe(true);
  }
  expect(messages.map((m) => m.status)).toEqual(CASES.map((c) => (c.dlq ? "dead_lettered" : "completed")));
  expect(messages.find((m) => m.id === `kafka-unique-id-${TOPIC}-0-${GROUP}-${CASES.findIndex((c) => c.name === "throw-once")}`)?.attempts).toBe(2);
  expect(effects.map((e) => e.id)).toEqual(["big", "ok-1", "ok-last", "throw-once"]);
}, 120_000);
