// Bounded memory: a kexo worker (a child process) drains a 1M-message backlog while this script
// samples its RSS from /proc. Prints peak and median RSS, throughput and what the topic held.
//   node_modules/.bin/bun bench/memory.ts [--messages 1000000] [--partitions 16]
// The development broker keeps ≤100k messages and ≤5 MiB per partition, so the backlog is spread
// over enough partitions and the script counts what was really kept (the sum of the high watermarks).
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { startBroker } from "../tests/support/broker.ts";
import { tempDir } from "../tests/support/tmp.ts";
import { waitUntil } from "../tests/support/wait.ts";
import { BUN, ROOT, WorkerProcess } from "../tests/support/worker.ts";

const { values } = parseArgs({ options: { messages: { type: "string" }, partitions: { type: "string" }, cmd: { type: "string" } } });
/** The kexo command to measure: `bun main.ts` by default, or e.g. --cmd dist/kexo or --cmd "bun --smol main.ts". */
const CMD = values.cmd ? values.cmd.split(" ").map((c) => (c === "bun" ? BUN : c === "main.ts" ? join(ROOT, "main.ts") : c)) : undefined;
const MESSAGES = Number(values.messages ?? 1_000_000);
const PARTITIONS = Number(values.partitions ?? 16);
const LIMIT_MIB = 150;
const TOPIC = "memory-in";

const broker = await startBroker({ [TOPIC]: PARTITIONS });
const dir = tempDir("kexo-bench-");
await Bun.write(
  join(dir, "handlers", "memory.ts"),
  `import { defineHandler, v } from "kexo";
export default defineHandler({
  topics: ["${TOPIC}"],
  schema: v.object({ n: v.number(), pad: v.string() }),
  async setup(db) { await db.execute("CREATE TABLE IF NOT EXISTS effects (n INTEGER NOT NULL)"); },
  async handle(p, ctx) { await ctx.tx((db) => db.execute({ sql: "INSERT INTO effects (n) VALUES (?)", args: [p.n] })); },
});`,
);

// Produce the backlog first: 1000-message batches per partition, as a real producer would.
const producer = broker.kafka.producer();
await producer.connect();
const pad = "x".repeat(16);
const produceStart = performance.now();
for (let sent = 0; sent < MESSAGES; ) {
  const partition = (sent / 1000) % PARTITIONS;
  const n = Math.min(1000, MESSAGES - sent);
  await producer.send({ topic: TOPIC, acks: 1, messages: Array.from({ length: n }, (_, i) => ({ partition, value: `{"n":${sent + i},"pad":"${pad}"}` })) });
  sent += n;
}
await producer.disconnect();
console.log(`produced ${MESSAGES} messages on ${PARTITIONS} partitions in ${((performance.now() - produceStart) / 1000).toFixed(1)} s`);

function rssMiB(pid: number): number | undefined {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) / 1024 : undefined;
  } catch {
    return undefined;
  }
}

function sum(text: string, name: string, filter = ""): number {
  let total = 0;
  for (const line of text.split("\n")) if (line.startsWith(name) && line.includes(filter)) total += Number(line.split(" ").pop());
  return total;
}

const worker = new WorkerProcess(["run", "--brokers", broker.brokers, "--handlers", join(dir, "handlers"), "--db", `file:${join(dir, "journal.db")}`, "--http", "127.0.0.1:0"], { cmd: CMD });
const rss: number[] = [];
const sampler = setInterval(() => {
  const r = rssMiB(worker.proc.pid);
  if (r !== undefined) rss.push(r);
}, 250);
const base = `http://${await worker.httpAddress()}`;
const scrape = async () => (await fetch(`${base}/metrics`)).text();
await worker.waitJoined(1, 60_000);
const drainStart = performance.now();
let held = 0;
await waitUntil("the backlog drained (lag 0 on every partition)", async () => {
  const text = await scrape();
  const lagLines = text.split("\n").filter((l) => l.startsWith("kexo_consumer_lag{"));
  const lag = sum(text, "kexo_consumer_lag{");
  const done = sum(text, "kexo_messages_total{", 'outcome="processed"');
  const status = (await (await fetch(`${base}/status`)).json()) as { handlers: { partitions: { highWatermark?: string }[] }[] };
  held = status.handlers[0]!.partitions.reduce((n, p) => n + Number(p.highWatermark ?? 0), 0);
  const heap = sum(text, "nodejs_heap_size_used_bytes") / 2 ** 20;
  const external = sum(text, "nodejs_external_memory_bytes") / 2 ** 20;
  process.stdout.write(`\r  handled ${done}, lag ${lag}, rss ${rss.at(-1)?.toFixed(0)} MiB (heap ${heap.toFixed(0)}, external ${external.toFixed(0)})   `);
  return lagLines.length === PARTITIONS && lag === 0 && done >= held && done > 0;
}, { timeoutMs: 30 * 60_000, intervalMs: 1000 });
const drainS = (performance.now() - drainStart) / 1000;
clearInterval(sampler);
const handled = sum(await scrape(), "kexo_messages_total{", 'outcome="processed"');
worker.kill("SIGTERM");
const code = await worker.exited();
await broker.close();

const sorted = [...rss].sort((a, b) => a - b);
const peak = sorted.at(-1) ?? 0;
const median = sorted[Math.floor(sorted.length / 2)] ?? 0;
console.log(`
topic held ${held} of ${MESSAGES} produced (development broker retention); kexo handled ${handled}
drain: ${drainS.toFixed(1)} s, ${Math.round(handled / drainS)} msg/s (journal writes included)
RSS of the kexo process: peak ${peak.toFixed(1)} MiB, median ${median.toFixed(1)} MiB, ${rss.length} samples every 250 ms
limit ${LIMIT_MIB} MiB: ${peak < LIMIT_MIB ? "OK" : "EXCEEDED"}; worker exit code after SIGTERM: ${code}`);
process.exit(peak < LIMIT_MIB && handled === held ? 0 : 1);
