// The ceiling: plain kafkajs on the same broker and data as kexo, consuming in a child process
// (bench/raw-child.ts), and its end-to-end latency at an offered rate (in this process).
import { join } from "node:path";
import type { Kafka } from "kafkajs";
import { now, type SentRange } from "./data.ts";

/** Runs bench/raw-child.ts as a child process, as kexo runs, so rate and RSS compare. */
export async function rawConsume(brokers: string, topic: string, count: number, opts: { kexoDecoder?: boolean; timeoutMs?: number } = {}): Promise<{ rate: number; seconds: number; peakRssMiB: number; cpu: number }> {
  const timeoutMs = opts.timeoutMs ?? 120_000;
  const proc = Bun.spawn([process.execPath, join(import.meta.dir, "raw-child.ts"), brokers, topic, String(count), ...(opts.kexoDecoder ? ["kexo-decoder"] : [])], { stdout: "pipe", stderr: "pipe" });
  const timer = setTimeout(() => proc.kill("SIGKILL"), timeoutMs);
  const [out, err] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  clearTimeout(timer);
  try {
    return JSON.parse(out.trim().split("\n").pop() ?? "") as { rate: number; seconds: number; peakRssMiB: number; cpu: number };
  } catch {
    throw new Error(`raw consume of ${count} messages from ${topic} failed (exit ${proc.exitCode}): ${err.slice(-1000)}`);
  }
}

/** Raw kafkajs end-to-end latency at a fixed offered rate: producer send → eachBatch sees it. */
export async function rawLatency(kafka: Kafka, topic: string, offer: () => Promise<SentRange[]>): Promise<{ p50: number; p99: number; count: number }> {
  const consumer = kafka.consumer({ groupId: `bench-raw-lat-${Date.now()}`, sessionTimeout: 6000, heartbeatInterval: 500, maxWaitTimeInMs: 20 });
  const seen = new Map<string, number>();
  let joined!: () => void;
  const isJoined = new Promise<void>((r) => (joined = r));
  consumer.on(consumer.events.GROUP_JOIN, () => joined());
  await consumer.connect();
  await consumer.subscribe({ topics: [topic], fromBeginning: true });
  await consumer.run({
    eachBatch: async ({ batch }) => {
      const t = now();
      for (const m of batch.messages) seen.set(`${batch.partition}:${m.offset}`, t);
    },
  });
  await isJoined;
  const ranges = await offer();
  const total = ranges.reduce((n, r) => n + r.count, 0);
  const deadline = Date.now() + 30_000;
  while (seen.size < total && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  await consumer.disconnect();
  const latencies: number[] = [];
  for (const r of ranges) {
    for (let i = 0; i < r.count; i++) {
      const at = seen.get(`${r.partition}:${r.first + BigInt(i)}`);
      if (at !== undefined) latencies.push(at - r.sentAt);
    }
  }
  return { ...percentiles(latencies), count: latencies.length };
}

export function percentiles(latencies: number[]): { p50: number; p99: number; max: number } {
  latencies.sort((a, b) => a - b);
  const pct = (q: number) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] ?? NaN;
  return { p50: pct(0.5), p99: pct(0.99), max: latencies[latencies.length - 1] ?? NaN };
}
