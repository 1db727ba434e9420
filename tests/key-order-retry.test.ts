// Guarantee 5 with order: "key": a message waiting for its next try holds up only the later
// messages of its key, until it succeeds or is dead-lettered. The other keys keep flowing, even
// when the retrying keys are as many as `concurrency`: a wait is not a running message.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { callsLog } from "./support/tmp.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "keys-retry-in";
let broker: TestBroker;
let dir: string;

// "late:0" succeeds at its third attempt, "dead:0" never (dead-lettered after 3). Each wait is
// 2–4 s (equal jitter on 4 s).
const HANDLER = `
import { defineHandler, v } from "kexo";
import { appendFileSync } from "node:fs";

export default defineHandler({
  topics: ["${TOPIC}"],
  schema: v.object({ k: v.string(), n: v.number() }),
  order: "key",
  concurrency: 2,
  retry: { attempts: 3, initialDelayMs: 4000, maxDelayMs: 4000 },
  async handle(p, ctx) {
    appendFileSync(process.env.CALLS_LOG!, JSON.stringify({ id: p.k, n: p.n, attempt: ctx.attempt, t: Date.now() }) + "\\n");
    if (p.n === 0 && (p.k === "dead" || (p.k === "late" && ctx.attempt < 3))) throw new Error("downstream is down for " + p.k);
  },
});
`;

withBroker({ [TOPIC]: 1, [`${TOPIC}.dlq`]: 1 }, { "keyed.ts": HANDLER }, (f) => ({ broker, dir } = f));

type Call = { id: string; n: number; attempt: number; t: number };

test("a retrying message holds up only its own key; as many retrying keys as slots stop nothing else", async () => {
  const { env, calls } = callsLog<Call>(dir);
  const w = new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), join(dir, "journal.db")), { env });
  await w.waitJoined();
  const msgs = [];
  for (let n = 0; n < 5; n++) for (const k of ["late", "dead", "a", "b", "c"]) msgs.push({ key: k, value: JSON.stringify({ k, n }) });
  await broker.produce(TOPIC, msgs);

  await waitUntil("every message handled", () => calls().filter((c) => c.attempt === 1).length >= msgs.length || undefined, { timeoutMs: 30_000 });
  const dead = await broker.readAll(`${TOPIC}.dlq`, 1);
  await sleep(500);
  w.kill("SIGTERM");
  expect(await w.exited()).toBe(0);

  const all = calls();
  const attempts = (k: string) => all.filter((c) => c.id === k && c.n === 0);
  expect(attempts("late").map((c) => c.attempt)).toEqual([1, 2, 3]);
  expect(attempts("dead").map((c) => c.attempt)).toEqual([1, 2, 3]);
  // The other keys ran while both retrying keys (two, as many as the slots) waited for attempt 2.
  const secondTry = Math.min(attempts("late")[1]!.t, attempts("dead")[1]!.t);
  const others = all.filter((c) => !["late", "dead"].includes(c.id));
  expect(others.length).toBe(15);
  expect(others.filter((c) => c.t >= secondTry).map((c) => `${c.id}:${c.n}`)).toEqual([]);
  // Per key, in order; a retrying key's later messages only after its outcome (success or dead letter).
  for (const k of ["late", "dead", "a", "b", "c"]) {
    expect({ k, ns: all.filter((c) => c.id === k && c.attempt === 1).map((c) => c.n) }).toEqual({ k, ns: [0, 1, 2, 3, 4] });
    const outcome = attempts(k).at(-1)!.t;
    expect(all.filter((c) => c.id === k && c.n > 0).every((c) => c.t >= outcome)).toBe(true);
  }
  expect(dead.map((d) => d.headers["kexo-dlq-reason"]?.toString())).toEqual(["exhausted"]);
}, 60_000);
