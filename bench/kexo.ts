// Runs kexo as a child process on one benchmark handler and watches its progress through the
// journal file (kexo_progress holds each partition's durable next offset, readable while kexo
// writes, WAL): throughput from the first progress seen (group join excluded), end-to-end
// latency as send time → journal commit, and the child's peak RSS (VmHWM).
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "libsql";
import { now, type SentRange } from "./data.ts";
import { percentiles } from "./raw.ts";

export interface KexoResult {
  rate: number;
  seconds: number;
  peakRssMiB: number;
  /** The child's CPU time over the measured interval, as a share of one core. */
  cpu?: number;
  /** The same for its main (JavaScript) thread alone: below 100% it waited, for the broker mostly. */
  mainCpu?: number;
  latency?: { p50: number; p99: number; max: number; count: number };
}

export interface KexoRunOptions {
  cmd: string[];
  brokers: string;
  /** Source of the one handler file (imports "kexo"). */
  handler: string;
  /** The handler's file name, so its group: unique per scenario, or a later one starts at the end. */
  name: string;
  topic: string;
  /** Messages the topic holds for this run (throughput mode). */
  count: number;
  /** Latency mode: produce while kexo runs; resolves with every sent range. */
  offer?: () => Promise<SentRange[]>;
  env?: Record<string, string>;
  timeoutMs?: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** utime + stime of a process (or of its main thread), in seconds (clock ticks of 100 Hz). */
function cpuSeconds(pid: number, mainThread = false): number {
  const fields = readFileSync(mainThread ? `/proc/${pid}/task/${pid}/stat` : `/proc/${pid}/stat`, "utf8").replace(/^.*\) /s, "").split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

function peakRssMiB(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? 0);
  return kb / 1024;
}

export async function runKexo(o: KexoRunOptions): Promise<KexoResult> {
  const dir = mkdtempSync(join(tmpdir(), "kexo-bench-"));
  mkdirSync(join(dir, "handlers"));
  writeFileSync(join(dir, "handlers", `${o.name}.ts`), o.handler);
  const dbPath = join(dir, "kexo.db");
  const tail: string[] = [];
  const proc = Bun.spawn(
    [...o.cmd, "run", "--brokers", o.brokers, "--handlers", join(dir, "handlers"), "--db", `file:${dbPath}`, "--http", "127.0.0.1:0", "--log-level", "warn"],
    { cwd: dir, env: { ...process.env, ...o.env }, stdin: "ignore", stdout: "ignore", stderr: "pipe" },
  );
  void (async () => {
    const decoder = new TextDecoder();
    for await (const chunk of proc.stderr) {
      tail.push(decoder.decode(chunk));
      if (tail.length > 20) tail.shift();
      if (process.env.BENCH_VERBOSE) process.stderr.write(decoder.decode(chunk));
    }
  })();
  const deadline = Date.now() + (o.timeoutMs ?? 300_000);
  const alive = () => {
    if (proc.exitCode !== null) throw new Error(`kexo exited with ${proc.exitCode}: ${tail.join("").slice(-2000)}`);
    if (Date.now() > deadline) throw new Error(`kexo did not finish in time: ${tail.join("").slice(-2000)}`);
  };
  try {
    while (!existsSync(dbPath)) {
      alive();
      await sleep(20);
    }
    await sleep(100);
    const db = new Database(dbPath, { readonly: true });
    const read = db.prepare("SELECT partition, next_offset FROM kexo_progress WHERE topic = ?");
    const progress = () => {
      const out = new Map<number, bigint>();
      for (const r of read.all(o.topic) as { partition: number; next_offset: number }[]) out.set(r.partition, BigInt(r.next_offset));
      return out;
    };
    const total = (m: Map<number, bigint>) => [...m.values()].reduce((a, b) => a + Number(b), 0);
    try {
      if (o.offer) return await latencyRun(o, proc.pid, progress, alive);
      let first = 0;
      let firstCount = 0;
      let firstCpu = 0;
      let firstMain = 0;
      let last = -1;
      let lastChange = performance.now();
      for (;;) {
        alive();
        const done = total(progress());
        const t = performance.now();
        if (done !== last) [last, lastChange] = [done, t];
        if (t - lastChange > 60_000) throw new Error(`kexo made no progress for 60 s at ${done} of ${o.count}: ${tail.join("").slice(-2000)}`);
        if (first === 0 && done > 0) {
          first = t;
          firstCount = done;
          firstCpu = cpuSeconds(proc.pid);
          firstMain = cpuSeconds(proc.pid, true);
        }
        if (done >= o.count) {
          const seconds = (t - first) / 1000;
          const cpu = (cpuSeconds(proc.pid) - firstCpu) / seconds;
          const mainCpu = (cpuSeconds(proc.pid, true) - firstMain) / seconds;
          return { rate: (o.count - firstCount) / seconds, seconds, peakRssMiB: peakRssMiB(proc.pid), cpu, mainCpu };
        }
        await sleep(10);
      }
    } finally {
      db.close();
    }
  } finally {
    proc.kill("SIGTERM");
    const exited = await Promise.race([proc.exited, sleep(30_000).then(() => undefined)]);
    if (exited === undefined) proc.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  }
}

async function latencyRun(o: KexoRunOptions, pid: number, progress: () => Map<number, bigint>, alive: () => void): Promise<KexoResult> {
  // The group must be joined before the clock starts: wait for the first partition row.
  const sentinel = Date.now() + 60_000;
  while (progress().size === 0) {
    alive();
    if (Date.now() > sentinel) break;
    await sleep(20);
  }
  const started = performance.now();
  let ranges: SentRange[] | undefined;
  const offering = o.offer!().then((r) => (ranges = r));
  // Completion times per partition: each poll, every offset below the new next_offset completed now.
  const completions = new Map<number, { next: bigint; at: number }[]>();
  for (;;) {
    alive();
    const t = now();
    for (const [p, next] of progress()) {
      const list = completions.get(p) ?? [];
      if (list.length === 0 || list[list.length - 1]!.next < next) list.push({ next, at: t });
      completions.set(p, list);
    }
    if (ranges) {
      const last = new Map<number, bigint>();
      for (const r of ranges) last.set(r.partition, r.first + BigInt(r.count));
      const finished = [...last].every(([p, end]) => {
        const list = completions.get(p);
        return list !== undefined && list.length > 0 && list[list.length - 1]!.next >= end;
      });
      if (finished) break;
    }
    await sleep(2);
  }
  await offering;
  const latencies: number[] = [];
  // Ranges of one partition come in offset order, so one cursor per partition walks its completions.
  const cursor = new Map<number, number>();
  for (const r of ranges!) {
    const list = completions.get(r.partition)!;
    let c = cursor.get(r.partition) ?? 0;
    for (let i = 0; i < r.count; i++) {
      const offset = r.first + BigInt(i);
      while (c < list.length && list[c]!.next <= offset) c++;
      if (c < list.length) latencies.push(list[c]!.at - r.sentAt);
    }
    cursor.set(r.partition, c);
  }
  return {
    rate: latencies.length / ((performance.now() - started) / 1000),
    seconds: (performance.now() - started) / 1000,
    peakRssMiB: peakRssMiB(pid),
    latency: { ...percentiles(latencies), count: latencies.length },
  };
}
