// Startup and footprint of the compiled binary: `bun bench/startup.ts [RUNS]` (after npm run build).
// For each run, from an empty directory against the development broker: spawn → "http listening",
// spawn → first /readyz 200, the group join (first JoinGroup request → last "joined group", from
// kafkajs's debug lines), start to /readyz without the join, and idle RSS 5 s after ready.
import { copyFileSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { startBroker } from "../tests/support/broker.ts";
import { tempDir } from "../tests/support/tmp.ts";
import { waitUntil } from "../tests/support/wait.ts";
import { ROOT, WorkerProcess } from "../tests/support/worker.ts";

const runs = Number(process.argv[2] ?? 5);
const binary = join(ROOT, "dist", "kexo");
const broker = await startBroker({ orders: 4, payments: 4 });
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const rows: { http: number; ready: number; join: number; withoutJoin: number; rssMiB: number }[] = [];

for (let i = 0; i < runs; i++) {
  const dir = tempDir("kexo-bench-");
  copyFileSync(binary, join(dir, "kexo"));
  const t0 = Date.now();
  const w = new WorkerProcess(["run", "--brokers", broker.brokers, "--http", "127.0.0.1:0", "--log-level", "debug"], { cmd: [join(dir, "kexo")], cwd: dir });
  const address = await w.httpAddress();
  const http = Date.parse(String(w.find((l) => l.msg === "http listening")!.time)) - t0;
  await waitUntil("/readyz 200", async () => (await fetch(`http://${address}/readyz`)).status === 200 || undefined, { timeoutMs: 60_000, intervalMs: 5 });
  const ready = Date.now() - t0;
  const joinStart = Date.parse(String(w.find((l) => l.msg.startsWith("Request JoinGroup"))!.time));
  const joinEnd = Math.max(...w.lines.filter((l) => l.msg === "joined group").map((l) => Date.parse(String(l.time))));
  await Bun.sleep(5000);
  const rss = Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${w.proc.pid}/status`, "utf8"))![1]) / 1024;
  w.kill("SIGTERM");
  await w.exited();
  rows.push({ http, ready, join: joinEnd - joinStart, withoutJoin: ready - (joinEnd - joinStart), rssMiB: Math.round(rss) });
  console.error(JSON.stringify(rows.at(-1)));
}
await broker.close();
console.log(
  `binary ${(statSync(binary).size / 1e6).toFixed(1)} MB · medians of ${runs}: spawn→http listening ${median(rows.map((r) => r.http))} ms · ` +
    `spawn→/readyz ${median(rows.map((r) => r.ready))} ms · group join ${median(rows.map((r) => r.join))} ms · ` +
    `start to /readyz without the join ${median(rows.map((r) => r.withoutJoin))} ms · idle RSS ${median(rows.map((r) => r.rssMiB))} MiB`,
);
