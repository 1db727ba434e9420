// Memory probe: a kexo worker (child process, `bun main.ts run`) works through a backlog on the
// development broker while this script samples its RSS (VmRSS every 250 ms, VmHWM at the end).
// Runs until the backlog drained or --seconds passed, whichever comes first.
//   node_modules/.bin/bun bench/memory-probe.ts --messages 100000 --partitions 4 --order key --keys 10000 --delay 10 --concurrency 16
// Options:
//   --messages N --partitions P --batch B (messages per produce request per partition, default 1000)
//   --order partition|key --concurrency C --delay MS (async sleep in the handler) --tx (one ctx.tx insert)
//   --keys K (distinct Kafka keys; 0 = no key) --value-min BYTES --value-max BYTES (random size, default ~40 B JSON)
//   --emit E (ctx.emit records per message to topic probe-out) --emit-bytes BYTES
//   --emit-fail none|partition|produce (partition: emits name partition 7 of a 1-partition topic;
//     produce: every Produce request to the broker is refused while the worker runs)
//   --slow-key-ms MS (messages of key k0 take MS longer)
//   --seconds S (stop after S seconds of consumption) --cmd "CMD"
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { ApiKey } from "../src/dev/mock-cluster.ts";
import { startBroker } from "../tests/support/broker.ts";
import { tempDir } from "../tests/support/tmp.ts";
import { BUN, ROOT, WorkerProcess } from "../tests/support/worker.ts";

const { values } = parseArgs({
  options: {
    messages: { type: "string" }, partitions: { type: "string" }, batch: { type: "string" },
    order: { type: "string" }, concurrency: { type: "string" }, delay: { type: "string" }, tx: { type: "boolean" },
    keys: { type: "string" }, "value-min": { type: "string" }, "value-max": { type: "string" },
    emit: { type: "string" }, "emit-bytes": { type: "string" }, "emit-fail": { type: "string" },
    seconds: { type: "string" }, cmd: { type: "string" }, "log-level": { type: "string" }, "slow-key-ms": { type: "string" },
  },
});
const CMD = values.cmd ? values.cmd.split(" ").map((c) => (c === "bun" ? BUN : c === "main.ts" ? join(ROOT, "main.ts") : c)) : undefined;
const MESSAGES = Number(values.messages ?? 100_000);
const PARTITIONS = Number(values.partitions ?? 4);
const BATCH = Number(values.batch ?? 1000);
const ORDER = values.order ?? "partition";
const CONCURRENCY = Number(values.concurrency ?? 16);
const DELAY = Number(values.delay ?? 0);
const KEYS = Number(values.keys ?? 0);
const VMIN = Number(values["value-min"] ?? 0);
const VMAX = Number(values["value-max"] ?? VMIN);
const EMIT = Number(values.emit ?? 0);
const EMIT_BYTES = Number(values["emit-bytes"] ?? 100);
const EMIT_FAIL = values["emit-fail"] ?? "none";
const SECONDS = Number(values.seconds ?? 120);
const SLOW_KEY_MS = Number(values["slow-key-ms"] ?? 0);
const TOPIC = "probe-in";
const OUT = "probe-out";

const broker = await startBroker({ [TOPIC]: PARTITIONS, [OUT]: 1 });
const dir = tempDir("kexo-probe-");
await Bun.write(
  join(dir, "handlers", "probe.ts"),
  `import { defineHandler } from "kexo";
const pad = "e".repeat(${EMIT_BYTES});
export default defineHandler({
  topics: ["${TOPIC}"],
  order: "${ORDER}",
  concurrency: ${CONCURRENCY},
  async setup(db) { await db.execute("CREATE TABLE IF NOT EXISTS effects (n INTEGER NOT NULL)"); },
  async handle(value, ctx) {
    ${DELAY > 0 ? `await new Promise((r) => setTimeout(r, ${DELAY}));` : ""}
    ${SLOW_KEY_MS > 0 ? `if (String(ctx.message.key) === "k0") await new Promise((r) => setTimeout(r, ${SLOW_KEY_MS}));` : ""}
    ${values.tx ? `await ctx.tx((db) => db.execute({ sql: "INSERT INTO effects (n) VALUES (?)", args: [value ? value.length : 0] }));` : ""}
    for (let i = 0; i < ${EMIT}; i++) ctx.emit("${OUT}", { key: String(i), value: pad${EMIT_FAIL === "partition" ? ", partition: 7" : ""} });
  },
});`,
);

// The backlog, produced first: BATCH messages per partition per request.
const producer = broker.kafka.producer();
await producer.connect();
const produceStart = performance.now();
let bytes = 0;
for (let sent = 0; sent < MESSAGES; ) {
  const partition = Math.floor(sent / BATCH) % PARTITIONS;
  const n = Math.min(BATCH, MESSAGES - sent);
  const messages = Array.from({ length: n }, (_, i) => {
    const size = VMIN + Math.floor(Math.random() * (VMAX - VMIN + 1));
    const value = size > 0 ? Buffer.alloc(size, 120) : `{"n":${sent + i}}`;
    bytes += typeof value === "string" ? value.length : value.length;
    return { partition, key: KEYS > 0 ? `k${(sent + i) % KEYS}` : null, value };
  });
  await producer.send({ topic: TOPIC, acks: 1, messages });
  sent += n;
}
await producer.disconnect();
console.log(`produced ${MESSAGES} messages (${(bytes / 2 ** 20).toFixed(1)} MiB) on ${PARTITIONS} partitions in ${((performance.now() - produceStart) / 1000).toFixed(1)} s`);

function status(pid: number): { rss: number; hwm: number } | undefined {
  try {
    const s = readFileSync(`/proc/${pid}/status`, "utf8");
    const rss = /VmRSS:\s+(\d+) kB/.exec(s);
    const hwm = /VmHWM:\s+(\d+) kB/.exec(s);
    return rss && hwm ? { rss: Number(rss[1]) / 1024, hwm: Number(hwm[1]) / 1024 } : undefined;
  } catch {
    return undefined;
  }
}

function sum(text: string, name: string, filter = ""): number {
  let total = 0;
  for (const line of text.split("\n")) if (line.startsWith(name) && line.includes(filter)) total += Number(line.split(" ").pop());
  return total;
}

const worker = new WorkerProcess(
  ["run", "--brokers", broker.brokers, "--handlers", join(dir, "handlers"), "--db", `file:${join(dir, "journal.db")}`, "--http", "127.0.0.1:0", "--log-level", values["log-level"] ?? "info"],
  { cmd: CMD },
);
const rss: number[] = [];
let hwm = 0;
const sampler = setInterval(() => {
  const r = status(worker.proc.pid);
  if (r !== undefined) {
    rss.push(r.rss);
    hwm = Math.max(hwm, r.hwm);
  }
}, 250);
const base = `http://${await worker.httpAddress()}`;
const scrape = async () => (await fetch(`${base}/metrics`)).text();
await worker.waitJoined(1, 60_000);
if (EMIT_FAIL === "produce") broker.cluster.pushRequestErrors(ApiKey.Produce, Array(200_000).fill(7)); // REQUEST_TIMED_OUT
const start = performance.now();
let held = 0;
let done = 0;
let drained = false;
let maxHeap = 0;
let maxExternal = 0;
let maxOutbox = 0;
while ((performance.now() - start) / 1000 < SECONDS) {
  await new Promise((r) => setTimeout(r, 1000));
  if (worker.proc.exitCode !== null) throw new Error(`worker exited with ${worker.proc.exitCode}: ${worker.raw.slice(-5).join("\n")}`);
  const text = await scrape();
  const lag = sum(text, "kexo_consumer_lag{");
  const lagLines = text.split("\n").filter((l) => l.startsWith("kexo_consumer_lag{")).length;
  done = sum(text, "kexo_messages_total{", 'outcome="processed"');
  const st = (await (await fetch(`${base}/status`)).json()) as { handlers: { partitions: { highWatermark?: string }[]; inflight: number }[] };
  held = st.handlers[0]!.partitions.reduce((n, p) => n + Number(p.highWatermark ?? 0), 0);
  const heap = sum(text, "nodejs_heap_size_used_bytes") / 2 ** 20;
  const external = sum(text, "nodejs_external_memory_bytes") / 2 ** 20;
  const outbox = sum(text, "kexo_outbox_pending");
  maxHeap = Math.max(maxHeap, heap);
  maxExternal = Math.max(maxExternal, external);
  maxOutbox = Math.max(maxOutbox, outbox);
  const t = ((performance.now() - start) / 1000).toFixed(0);
  console.log(`  t=${t}s handled ${done}, lag ${lag}, inflight ${st.handlers[0]!.inflight}, rss ${rss.at(-1)?.toFixed(0)} MiB, hwm ${hwm.toFixed(0)} (heap ${heap.toFixed(0)}, external ${external.toFixed(0)}), outbox pending ${outbox}`);
  if (lagLines === PARTITIONS && lag === 0 && done >= held && done > 0) {
    drained = true;
    break;
  }
}
const elapsed = (performance.now() - start) / 1000;
// With a working outbox: how long the relay takes to publish what is left once the input drained.
let outboxDrainS: number | undefined;
if (drained && EMIT > 0 && EMIT_FAIL === "none") {
  const t0 = performance.now();
  for (;;) {
    const text = await scrape();
    if (sum(text, "kexo_outbox_pending") === 0 || (performance.now() - start) / 1000 > SECONDS * 3) break;
    await new Promise((r) => setTimeout(r, 500));
  }
  outboxDrainS = (performance.now() - t0) / 1000;
}
clearInterval(sampler);
const last = status(worker.proc.pid);
if (last) hwm = Math.max(hwm, last.hwm);
const errors = worker.lines.filter((l) => l.level === "error");
worker.kill("SIGTERM");
const code = await worker.exited();
await broker.close();
const sorted = [...rss].sort((a, b) => a - b);
const median = sorted[Math.floor(sorted.length / 2)] ?? 0;
console.log(`
args: ${process.argv.slice(2).join(" ")}
topic held ${held} of ${MESSAGES} produced; kexo handled ${done} in ${elapsed.toFixed(1)} s (${drained ? "drained" : "NOT drained"}), ${Math.round(done / elapsed)} msg/s
RSS: peak (VmHWM) ${hwm.toFixed(1)} MiB, median ${median.toFixed(1)} MiB; max heap used ${maxHeap.toFixed(0)} MiB, max external ${maxExternal.toFixed(0)} MiB; max outbox pending ${maxOutbox}
${outboxDrainS === undefined ? "" : `outbox drained ${outboxDrainS.toFixed(1)} s after the input\n`}error lines: ${errors.length}${errors.length ? ` (first: ${JSON.stringify(errors[0]).slice(0, 300)})` : ""}; exit code after SIGTERM: ${code}`);
process.exit(0);
