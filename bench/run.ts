// `npm run bench`: one run on the development broker (in this process) that produces the data,
// measures raw kafkajs (the ceiling), then kexo as a child process per scenario, and prints and
// writes a markdown table. Ratios are within one run: the machine is shared, absolute numbers drift.
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Kafka, logLevel } from "kafkajs";
import { createMockCluster } from "../src/dev/mock-cluster.ts";
import { silenceTimeoutNegativeWarning } from "../src/kafka/client.ts";
import { PROGRESS_TOPIC } from "../src/kafka/progress-log.ts";
import { produceBulk, producePaced } from "./data.ts";
import { handlerSource } from "./handlers.ts";
import { type KexoResult, runKexo } from "./kexo.ts";
import { rawConsume, rawLatency } from "./raw.ts";

const ROOT = join(import.meta.dir, "..");
const { values: a } = parseArgs({
  options: {
    n: { type: "string", default: "200000" },
    partitions: { type: "string", default: "16" },
    kexo: { type: "string" },
    only: { type: "string", default: "raw,rawdec,a,b,c,d,latency" },
    rate: { type: "string", default: "10000" },
    "latency-seconds": { type: "string", default: "10" },
    "key-messages": { type: "string", default: "10000" },
    keys: { type: "string", default: "1000" },
    "key-partitions": { type: "string", default: "4" },
    out: { type: "string", default: join(ROOT, "bench", "results", "latest.md") },
    // A slow disk: every fsync of kexo's takes this much longer (bench/slow-fsync.c; needs cc).
    "fsync-delay-ms": { type: "string" },
  },
});
const N = Number(a.n);
const P = Number(a.partitions);
const only = new Set(a.only!.split(","));
const dist = join(ROOT, "dist", "kexo");
// --kexo "bun --cpu-prof-md main.ts" works too: the command is split on spaces.
const cmd = a.kexo ? a.kexo.split(/\s+/) : existsSync(dist) ? [dist] : [process.execPath, join(ROOT, "main.ts")];
const fsyncDelayMs = a["fsync-delay-ms"] === undefined ? undefined : Number(a["fsync-delay-ms"]);
/** kexo's environment: the slow-fsync shim when asked for. */
const kexoEnv = fsyncDelayMs === undefined ? undefined : (() => {
  const dir = join(ROOT, ".tmp");
  mkdirSync(dir, { recursive: true });
  const lib = join(dir, "slow-fsync.so");
  execFileSync("cc", ["-shared", "-fPIC", "-O2", "-o", lib, join(ROOT, "bench", "slow-fsync.c"), "-ldl"]);
  return { LD_PRELOAD: lib, KEXO_BENCH_FSYNC_DELAY_US: String(Math.round(fsyncDelayMs * 1000)) };
})();
// The dev broker keeps ≤100k messages and ≤5 MiB per partition; ~230 bytes per record on disk.
if (N / P > 20_000) throw new Error(`--n ${N} over ${P} partitions exceeds the dev broker's retention (≈20k of these messages per partition); add partitions`);

silenceTimeoutNegativeWarning();
const cluster = createMockCluster();
const brokers = cluster.bootstrap;
const kafka = new Kafka({ clientId: "kexo-bench", brokers: brokers.split(","), logLevel: logLevel.NOTHING });
cluster.createTopic(PROGRESS_TOPIC, 1);

interface Row {
  name: string;
  rate?: number;
  p50?: number;
  p99?: number;
  rss?: number;
  cpu?: number;
  mainCpu?: number;
  note?: string;
}
const rows: Row[] = [];
let raw: number | undefined;
const say = (s: string) => process.stderr.write(`${s}\n`);

async function scenario(name: string, fn: () => Promise<KexoResult>, note?: string) {
  say(`… ${name}`);
  try {
    const r = await fn();
    rows.push({ name, rate: r.rate, p50: r.latency?.p50, p99: r.latency?.p99, rss: r.peakRssMiB, cpu: r.cpu, mainCpu: r.mainCpu, note });
    say(`  ${Math.round(r.rate)} msg/s${r.latency ? `, p50 ${r.latency.p50.toFixed(1)} ms, p99 ${r.latency.p99.toFixed(1)} ms` : ""}, peak RSS ${r.peakRssMiB.toFixed(0)} MiB${r.cpu === undefined ? "" : `, CPU ${(100 * r.cpu).toFixed(0)}% of a core (main thread ${(100 * (r.mainCpu ?? 0)).toFixed(0)}%)`}`);
  } catch (err) {
    rows.push({ name, note: `failed: ${(err as Error).message.split("\n")[0]}` });
    say(`  failed: ${(err as Error).message}`);
  }
}

try {
  const topic = "bench";
  cluster.createTopic(topic, P);
  say(`producing ${N} messages (~150 B) to ${topic} (${P} partitions)`);
  const t0 = performance.now();
  await produceBulk(kafka, topic, P, N);
  say(`  produced in ${((performance.now() - t0) / 1000).toFixed(1)} s`);

  if (only.has("raw")) {
    say("… raw kafkajs eachBatch no-op (ceiling)");
    const r = await rawConsume(brokers, topic, N);
    raw = r.rate;
    rows.push({ name: "raw kafkajs eachBatch, no-op (ceiling)", rate: r.rate, rss: r.peakRssMiB, cpu: r.cpu });
    say(`  ${Math.round(r.rate)} msg/s, peak RSS ${r.peakRssMiB.toFixed(0)} MiB, CPU ${(100 * r.cpu).toFixed(0)}% of a core`);
  }
  if (only.has("rawdec")) {
    // Not a ceiling: how much of kafkajs's cost was its Fetch decoding, which kexo replaces.
    say("… raw kafkajs eachBatch no-op, with kexo's Fetch decoder");
    const r = await rawConsume(brokers, topic, N, { kexoDecoder: true });
    rows.push({ name: "raw kafkajs with kexo's Fetch decoder (not the ceiling)", rate: r.rate, rss: r.peakRssMiB, cpu: r.cpu });
    say(`  ${Math.round(r.rate)} msg/s, peak RSS ${r.peakRssMiB.toFixed(0)} MiB, CPU ${(100 * r.cpu).toFixed(0)}% of a core`);
  }
  const base = { cmd, brokers, count: N, topic, env: kexoEnv };
  if (only.has("a")) await scenario("(a) kexo, no-op handler", () => runKexo({ ...base, name: "noop", handler: handlerSource("noop", topic) }));
  if (only.has("b")) await scenario("(b) kexo, one ctx.tx insert", () => runKexo({ ...base, name: "tx", handler: handlerSource("tx", topic) }));
  if (only.has("c")) await scenario("(c) kexo, ctx.step + ctx.tx", () => runKexo({ ...base, name: "step-tx", handler: handlerSource("step-tx", topic) }));
  if (only.has("d")) {
    const kt = "bench-keys";
    const count = Number(a["key-messages"]);
    const kp = Number(a["key-partitions"]);
    cluster.createTopic(kt, kp);
    await produceBulk(kafka, kt, kp, count, { keys: Number(a.keys) });
    await scenario(`(d) kexo, order "key", 5 ms handler, ${a.keys} keys`, () => runKexo({ cmd, brokers, count, topic: kt, env: kexoEnv, name: "key-order", handler: handlerSource("key-order", kt) }),
      `${count} msgs on ${kp} partitions; per-partition order would cap at ${kp * 200} msg/s`);
  }
  if (only.has("latency")) {
    const lt = "bench-latency";
    const rate = Number(a.rate);
    const seconds = Number(a["latency-seconds"]);
    cluster.createTopic(lt, P);
    if (only.has("raw")) {
      const rl = "bench-latency-raw";
      cluster.createTopic(rl, P);
      say(`… raw kafkajs at ${rate} msg/s offered`);
      const r = await rawLatency(kafka, rl, () => producePaced(kafka, rl, P, rate, seconds));
      rows.push({ name: `raw kafkajs at ${rate} msg/s offered, ${seconds} s`, p50: r.p50, p99: r.p99, note: "latency: producer send → eachBatch" });
      say(`  p50 ${r.p50.toFixed(1)} ms, p99 ${r.p99.toFixed(1)} ms (${r.count} msgs)`);
    }
    await scenario(`(b) at ${rate} msg/s offered, ${seconds} s`, () =>
      runKexo({ cmd, brokers, count: 0, topic: lt, env: kexoEnv, name: "latency", handler: handlerSource("tx", lt), offer: () => producePaced(kafka, lt, P, rate, seconds) }),
      "latency: producer send → journal commit");
  }
} finally {
  cluster.close();
}

const cell = (x: number | undefined, digits = 0) => (x === undefined ? "" : x.toFixed(digits));
const bunVersion = (() => {
  try {
    return JSON.parse(readFileSync(join(ROOT, "node_modules", "bun", "package.json"), "utf8")).version as string;
  } catch {
    return Bun.version;
  }
})();
const lines = [
  `kexo benchmark, ${new Date().toISOString()}: ${N} messages of ~150 B on ${P} partitions, development broker (librdkafka mock).`,
  `Machine: ${cpus().length} × ${cpus()[0]?.model ?? "cpu"}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB; Bun ${bunVersion}; kexo: \`${a.kexo ?? (cmd.length === 1 ? "dist/kexo" : "bun main.ts")}\`${fsyncDelayMs === undefined ? "" : `; every kexo fsync slowed by ${fsyncDelayMs} ms (bench/slow-fsync.c)`}.`,
  "",
  "| scenario | msg/s | of raw | p50 ms | p99 ms | peak RSS MiB | CPU | note |",
  "|---|---:|---:|---:|---:|---:|---:|---|",
  ...rows.map((r) => `| ${r.name} | ${cell(r.rate)} | ${r.rate !== undefined && raw ? `${((100 * r.rate) / raw).toFixed(0)}%` : ""} | ${cell(r.p50, 1)} | ${cell(r.p99, 1)} | ${cell(r.rss)} | ${r.cpu === undefined ? "" : `${(100 * r.cpu).toFixed(0)}%${r.mainCpu === undefined ? "" : ` (main ${(100 * r.mainCpu).toFixed(0)}%)`}`} | ${r.note ?? ""} |`),
];
const table = lines.join("\n") + "\n";
mkdirSync(join(a.out!, ".."), { recursive: true });
writeFileSync(a.out!, table);
process.stdout.write(`\n${table}\nwritten to ${a.out}\n`);
process.exit(0);
