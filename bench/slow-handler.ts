// A merely slow handler with order "partition": 16 partitions of 500 messages, a 5 ms handler with
// one ctx.tx, concurrency 16, on the development broker. Prints msg/s (the ideal, 16 at a time at
// 5 ms each, is 3200; setTimeout's granularity makes each call a little longer) and the worker's
// peak RSS. kafkajs fetches a broker's partitions in rounds; batches running past 1 s let go of
// theirs (src/kafka/consumer.ts), so a partition that finished is fetched without waiting.
//   node_modules/.bin/bun bench/slow-handler.ts
import { join } from "node:path";
import { startBroker } from "../tests/support/broker.ts";
import { tempDir } from "../tests/support/tmp.ts";
import { WorkerProcess, runArgs } from "../tests/support/worker.ts";
import { countIn } from "../tests/support/db.ts";
const P = 16, PER = 500;
const broker = await startBroker({ slow: P });
const dir = tempDir();
await Bun.write(join(dir, "handlers", "slow.ts"), `import { defineHandler } from "kexo";
export default defineHandler({ topics: ["slow"], concurrency: 16,
  async setup(db) { await db.execute("CREATE TABLE IF NOT EXISTS effects (v TEXT NOT NULL)"); },
  async handle(value, ctx) { await new Promise((r) => setTimeout(r, 5)); await ctx.tx((db) => db.execute({ sql: "INSERT INTO effects (v) VALUES (?)", args: [String(value)] })); } });`);
const db = join(dir, "j.db");
const w = new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), db), { env: {} });
await w.waitJoined();
for (let p = 0; p < P; p++) await broker.produce("slow", Array.from({ length: PER }, (_, i) => ({ value: `${p}-${i}`, partition: p })));
const t0 = performance.now();
let n = 0, maxRss = 0;
while ((n = (() => { try { return countIn(db, "SELECT count(*) AS n FROM effects"); } catch { return 0; } })()) < P * PER) {
  const rss = Number(/VmRSS:\s+(\d+)/.exec(await Bun.file(`/proc/${w.proc.pid}/status`).text())?.[1] ?? 0) / 1024;
  maxRss = Math.max(maxRss, rss);
  await Bun.sleep(200);
  if (performance.now() - t0 > 60000) break;
}
const s = (performance.now() - t0) / 1000;
console.log(`${n} messages in ${s.toFixed(1)} s = ${(n / s).toFixed(0)} msg/s (ideal 3200), peak RSS ${maxRss.toFixed(0)} MiB`);
w.kill("SIGTERM");
console.log(`worker exit code after SIGTERM: ${await w.exited()}`);
await broker.close();
