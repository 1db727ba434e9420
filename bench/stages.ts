// Per-stage timings of kexo's per-message path, in process and without Kafka: synthetic messages
// of the benchmark's shape run through execute() exactly as the consumer's batch loop runs them
// (a real journal file, the worker's metrics, liveness and GC pacer listening, partition progress
// through a commit hook). Each stage adds one part, so the differences say what each part costs.
//
//   bun bench/stages.ts [--messages 200000] [--only fetch,decode,insert,noop,tx,steptx,guarded]
//
// The figures are µs of one core per message; the end-to-end benchmark (bench/run.ts) adds
// kafkajs's fetch and kexo's Fetch decoding on top. `insert` is the handler's INSERT alone
// through the libsql driver kexo uses, prepared, 4000 to a transaction, without kexo: with decode
// and the consumer's own cost (1 / the rate of bench/run.ts's raw row with kexo's decoder) it is
// the floor of scenario (b) on one JS thread.
// `fetch` decodes Fetch v11 responses of the same messages (one 1000-record batch per partition
// per response, as the development broker serves them), with kafkajs's decoder and with kexo's
// (src/kafka/fetch-decode.ts), which the consumer uses; uncompressed, then gzip-compressed.
// `guarded` is `tx` after an unclean stop (src/processing/crash-guard.ts): the first 1000 messages
// per partition journal each attempt before it runs, the rest take the guard's shared side; with
// --messages 8000 (8 partitions) every message is tracked. `steptx` is scenario (c): a ctx.step
// before the tx, and the step's result returned (so a completion row with it, and a step row).
import Database from "libsql";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { EventBus } from "../src/events.ts";
import { Liveness } from "../src/health/liveness.ts";
import { resolveHandler } from "../src/handlers/resolve.ts";
import { defineHandler, type HandlerContext, type HandlerDb, type KafkaMessage, v } from "../src/index.ts";
import { Journal, type ProgressEntry } from "../src/journal/journal.ts";
import { createLogger } from "../src/log.ts";
import { startGcPacer } from "../src/memory/gc-pacer.ts";
import { createMetrics } from "../src/metrics/metrics.ts";
import { decodePayload } from "../src/processing/decode.ts";
import { CrashGuard } from "../src/processing/crash-guard.ts";
import { execute, type ExecutorDeps } from "../src/processing/executor.ts";
import { MemberFence } from "../src/kafka/membership.ts";
import { value } from "./data.ts";
import { decodeFetchV11, kafkajsDecodeFetchV11 } from "../src/kafka/fetch-decode.ts";
import { CompressionTypes } from "kafkajs";
import { fetchResponse, recordBatch } from "../tests/support/fetch-response.ts";

const { values: a } = parseArgs({
  options: { messages: { type: "string", default: "200000" }, only: { type: "string", default: "decode,insert,noop,tx" }, partitions: { type: "string", default: "8" } },
});
const N = Number(a.messages);
const P = Number(a.partitions);
const only = new Set(a.only!.split(","));

const schema = v.object({ id: v.string(), account: v.string(), amount: v.number(), sentAt: v.number(), pad: v.string() });
const TOPIC = "stages";

/** The broker's messages, made before timing: kafkajs's work is not measured here. */
function messages(): KafkaMessage[] {
  const out: KafkaMessage[] = [];
  for (let i = 0; i < N; i++) {
    out.push({ topic: TOPIC, partition: i % P, offset: String(Math.floor(i / P)), key: null, value: Buffer.from(value(i)), headers: {}, timestamp: "0" });
  }
  return out;
}

function resolved(name: string, def: unknown) {
  const h = resolveHandler(`${name}.ts`, name, def, []);
  if (!h) throw new Error(`handler ${name} did not resolve`);
  return h;
}

type Row = { id: string; account: string; amount: number };
const createRows = async (db: HandlerDb) => void (await db.execute("CREATE TABLE IF NOT EXISTS bench_rows (id TEXT PRIMARY KEY, account TEXT NOT NULL, amount REAL NOT NULL)"));
const insertRow = (e: Row, ctx: HandlerContext) =>
  ctx.tx(async (db) => void (await db.execute({ sql: "INSERT INTO bench_rows (id, account, amount) VALUES (?, ?, ?)", args: [e.id, e.account, e.amount] })));

const handlers = {
  noop: resolved("noop", defineHandler({ topics: [TOPIC], schema, async handle() {} })),
  tx: resolved("tx", defineHandler({
    topics: [TOPIC],
    schema,
    setup: createRows,
    async handle(e, ctx) {
      await insertRow(e, ctx);
    },
  })),
  steptx: resolved("steptx", defineHandler({
    topics: [TOPIC],
    schema,
    setup: createRows,
    async handle(e, ctx) {
      const score = await ctx.step("score", () => ({ score: e.amount * 2 }));
      await insertRow(e, ctx);
      return score;
    },
  })),
};

function report(name: string, ms: number): void {
  console.log(`${name.padEnd(44)} ${((ms * 1000) / N).toFixed(2).padStart(6)} µs/msg  ${Math.round(N / (ms / 1000)).toString().padStart(8)} msg/s`);
}

async function stage(name: keyof typeof handlers, msgs: KafkaMessage[], guarded = false): Promise<void> {
  const handler = handlers[name];
  const dir = mkdtempSync(join(tmpdir(), "kexo-stages-"));
  const bus = new EventBus();
  const journal = Journal.open({ url: `file:${join(dir, "kexo.db")}`, bus });
  const metrics = createMetrics(bus);
  const liveness = new Liveness(bus);
  const stopGc = startGcPacer(bus);
  let beat: ReturnType<typeof setInterval> | undefined;
  try {
    await handler.def.setup?.(journal.handlerDb);
    // The consumer's partition progress: next offset per partition, handed to a COMMIT once.
    const next = new Array<number>(P).fill(0);
    const shared = new Array<number>(P).fill(0);
    journal.addCommitHook({
      progress: () => {
        const out: ProgressEntry[] = [];
        for (let p = 0; p < P; p++) {
          if (next[p]! <= shared[p]!) continue;
          out.push({ groupId: handler.groupId, topic: TOPIC, partition: p, nextOffset: BigInt(next[p]!) });
          shared[p] = next[p]!;
        }
        return out;
      },
      hasProgress: () => next.some((n, p) => n > shared[p]!),
      committed: () => {},
    });
    // The consumer's membership fence, kept fresh as accepted heartbeats keep it (every 500 ms).
    const fence = new MemberFence(handler.groupId, 6000);
    fence.accepted(Date.now());
    beat = setInterval(() => fence.accepted(Date.now()), 500);
    const deps: ExecutorDeps = {
      journal, bus, log: createLogger({ level: "warn" }),
      dlq: { publish: () => Promise.reject(new Error("no dead letters in this benchmark")) },
      guard: guarded ? new CrashGuard() : undefined,
      fence,
    };
    // As the consumer's batches get it: shutdown's signal and the epoch's revoke, combined.
    const signal = AbortSignal.any([new AbortController().signal, new AbortController().signal]);
    const t0 = performance.now();
    // One loop per partition, interleaved as kafkajs's concurrent eachBatch calls are.
    await Promise.all(Array.from({ length: P }, async (_, p) => {
      for (let i = p; i < msgs.length; i += P) {
        const m = msgs[i]!;
        if (journal.pendingWrites >= 10_000) await journal.commit();
        const verdict = await execute(handler, m, deps, signal);
        if (verdict !== "done") throw new Error(`${name}: ${m.partition}@${m.offset} ended ${verdict}`);
        next[p] = Number(m.offset) + 1;
        journal.requestCommit();
      }
    }));
    await journal.flush();
    report(`execute(), ${name} handler, journal + listeners${guarded ? ", guarded" : ""}`, performance.now() - t0);
  } finally {
    clearInterval(beat);
    stopGc();
    liveness.close();
    metrics.close();
    await journal.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

const msgs = messages();
if (only.has("fetch")) {
  const PER = 1000;
  for (const compression of [CompressionTypes.None, CompressionTypes.GZIP]) {
    const responses: Buffer[] = [];
    for (let base = 0; base < msgs.length; base += PER * P) {
      const parts: { partition: number; records: Buffer }[] = [];
      for (let p = 0; p < P; p++) {
        const mine = [];
        for (let i = base + p; i < Math.min(base + PER * P, msgs.length); i += P) mine.push(msgs[i]!);
        if (!mine.length) continue;
        parts.push({ partition: p, records: await recordBatch(mine[0]!.offset, mine.map((m, i) => ({ offsetDelta: i, timestampDelta: i, value: m.value })), { compression }) });
      }
      responses.push(fetchResponse(TOPIC, parts));
    }
    for (const [name, decode] of [["kafkajs", kafkajsDecodeFetchV11], ["kexo", decodeFetchV11]] as const) {
      const t0 = performance.now();
      for (const r of responses) await decode(r);
      report(`Fetch v11 decode${compression ? ", gzip" : ""} (${name})`, performance.now() - t0);
    }
  }
}
if (only.has("decode")) {
  const t0 = performance.now();
  for (const m of msgs) decodePayload(handlers.noop, m);
  report("decode: UTF-8, JSON.parse, valibot", performance.now() - t0);
}
if (only.has("insert")) {
  // The payloads decoded beforehand: this times the statement alone.
  const rows = msgs.map((m) => decodePayload(handlers.tx, m) as unknown as { id: string; account: string; amount: number });
  const dir = mkdtempSync(join(tmpdir(), "kexo-stages-"));
  const db = new Database(join(dir, "insert.db"));
  try {
    db.exec("PRAGMA journal_mode = WAL");
    db.exec("PRAGMA synchronous = NORMAL");
    db.exec("CREATE TABLE bench_rows (id TEXT PRIMARY KEY, account TEXT NOT NULL, amount REAL NOT NULL)");
    const insert = db.prepare("INSERT INTO bench_rows (id, account, amount) VALUES (?, ?, ?)");
    const t0 = performance.now();
    for (let i = 0; i < rows.length; i += 4000) {
      db.exec("BEGIN IMMEDIATE");
      for (const r of rows.slice(i, i + 4000)) insert.run([r.id, r.account, r.amount]);
      db.exec("COMMIT");
    }
    report("the handler's INSERT alone (libsql driver)", performance.now() - t0);
  } finally {
    db.close();
    rmSync(dir, { recursive: true, force: true });
  }
}
if (only.has("noop")) await stage("noop", msgs);
if (only.has("tx")) await stage("tx", msgs);
if (only.has("steptx")) await stage("steptx", msgs);
if (only.has("guarded")) await stage("tx", msgs, true);
