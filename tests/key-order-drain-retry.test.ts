// A SIGTERM with order: "key" while a message waits for its next try drains as in partition
// order: the wait ends at once (the message is not in flight; its failed attempts are journaled),
// its key's later messages are left for the next start, running handlers and the messages queued
// behind them finish, and kexo exits 0 well before --shutdown-timeout. After the restart the
// message goes on counting its attempts; every message takes effect once, in key order, and the
// progress published at the stop never calls a message done that did not finish.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { queryRows } from "./support/db.ts";
import { callsLog } from "./support/tmp.ts";
import { waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";
import { PROGRESS_TOPIC } from "../src/kafka/progress-log.ts";

const TOPIC = "keys-drain-retry-in";
const GROUP = `kexo-keyed-${TOPIC}`;
const SHUTDOWN_TIMEOUT_MS = 30_000;
let broker: TestBroker;
let dir: string;

// r:0 fails while R_DOWN=1 (the first run), then until its third attempt; each wait is
// RETRY_DELAY_MS (equal jitter: half to all of it). s:0 takes 3 s.
const HANDLER = `
import { defineHandler, v } from "kexo";
import { appendFileSync } from "node:fs";

const delay = Number(process.env.RETRY_DELAY_MS);
export default defineHandler({
  topics: ["${TOPIC}"],
  schema: v.object({ k: v.string(), n: v.number() }),
  order: "key",
  concurrency: 2,
  retry: { attempts: 10, initialDelayMs: delay, maxDelayMs: delay },
  async setup(db) { await db.execute("CREATE TABLE IF NOT EXISTS effects (k TEXT, n INTEGER)"); },
  async handle(p, ctx) {
    appendFileSync(process.env.CALLS_LOG!, JSON.stringify({ id: p.k, n: p.n, attempt: ctx.attempt, pid: process.pid }) + "\\n");
    if (p.k === "r" && p.n === 0 && (process.env.R_DOWN === "1" || ctx.attempt < 3)) throw new Error("downstream is down");
    if (p.k === "s" && p.n === 0) await new Promise((r) => setTimeout(r, 3000));
    await ctx.tx((db) => db.execute({ sql: "INSERT INTO effects (k, n) VALUES (?, ?)", args: [p.k, p.n] }));
  },
});
`;

withBroker({ [TOPIC]: 1, [`${TOPIC}.dlq`]: 1 }, { "keyed.ts": HANDLER }, (f) => ({ broker, dir } = f));

type Call = { id: string; n: number; attempt: number; pid: number };
const msg = (k: string, n: number) => ({ key: k, value: JSON.stringify({ k, n }) });

test("SIGTERM while a keyed message waits for its next try drains at once, exit 0; the restart counts on", async () => {
  const db = join(dir, "journal.db");
  const { env, calls } = callsLog<Call>(dir);
  const start = (delayMs: number, rDown: string) => new WorkerProcess(
    runArgs(broker.brokers, join(dir, "handlers"), db, "--shutdown-timeout", String(SHUTDOWN_TIMEOUT_MS)),
    { env: { ...env, RETRY_DELAY_MS: String(delayMs), R_DOWN: rDown } },
  );
  const effects = () => queryRows<{ k: string; n: number }>(db, "SELECT k, n FROM effects").map((e) => `${e.k}:${e.n}`);

  // Offsets 0–9: r:0 a:0 b:0 r:1 a:1 b:1 r:2 a:2 b:2 r:3; then 10, 11: s:0 s:1.
  const first = start(20_000, "1");
  await first.waitJoined();
  await broker.produce(TOPIC, [0, 1, 2, 3].flatMap((n) => (n < 3 ? ["r", "a", "b"] : ["r"]).map((k) => msg(k, n))));
  await waitUntil("a and b done, r:0 failed once", () => effects().length >= 6 && calls("r").length >= 1 || undefined, { timeoutMs: 30_000 });
  await broker.produce(TOPIC, [msg("s", 0), msg("s", 1)]);
  await waitUntil("s:0 running", () => calls("s").length >= 1 || undefined, { timeoutMs: 10_000 });
  // r:0 waits 10–20 s for attempt 2, s:0 runs, s:1 waits behind it.
  expect(calls("r").map((c) => c.attempt)).toEqual([1]);
  const t0 = performance.now();
  first.kill("SIGTERM");
  const code = await first.exited();
  const seconds = (performance.now() - t0) / 1000;
  console.log(`SIGTERM to exit: ${seconds.toFixed(1)} s, exit ${code}`);
  expect({ code, aborted: first.lines.some((l) => l.msg.startsWith("shutdown timeout ran out")) }).toEqual({ code: 0, aborted: false });
  expect(seconds).toBeLessThan(SHUTDOWN_TIMEOUT_MS / 2000);
  // The running handler and the message queued behind it finished; r's did not run again.
  expect(effects().sort()).toEqual(["a:0", "a:1", "a:2", "b:0", "b:1", "b:2", "s:0", "s:1"]);
  expect(calls("r").map((c) => c.attempt)).toEqual([1]);
  // What finished above r:0 (offset 0) is published as done, and nothing of r.
  const progress = (await broker.readAll(PROGRESS_TOPIC, 1000, 3000))
    .filter((r) => r.key?.toString().startsWith(`${GROUP}\u0000${TOPIC}\u0000`))
    .map((r) => JSON.parse(r.value!.toString()) as { next: string; done?: [string, string][] });
  const last = progress.at(-1)!;
  expect({ belowR0: BigInt(last.next) <= 0n, done: last.done }).toEqual({ belowR0: true, done: [["1", "2"], ["4", "5"], ["7", "8"], ["10", "11"]] });

  const second = start(1000, "0");
  await second.waitJoined();
  await waitUntil("every message done", () => effects().length >= 12 || undefined, { timeoutMs: 30_000 });
  second.kill("SIGTERM");
  expect(await second.exited()).toBe(0);

  // Only r ran again: r:0 on from its count (2, 3), then r:1–r:3 in order.
  const again = calls().filter((c) => c.pid === second.proc.pid);
  expect(again.map((c) => `${c.id}:${c.n}#${c.attempt}`)).toEqual(["r:0#2", "r:0#3", "r:1#1", "r:2#1", "r:3#1"]);
  const all = effects();
  expect(all.length).toBe(12);
  expect(new Set(all).size).toBe(12);
  for (const k of ["r", "a", "b", "s"]) {
    expect({ k, ns: all.filter((e) => e.startsWith(`${k}:`)) }).toEqual({ k, ns: [0, 1, 2, 3].slice(0, { r: 4, a: 3, b: 3, s: 2 }[k]).map((n) => `${k}:${n}`) });
  }
}, 120_000);
