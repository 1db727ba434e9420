// An instance stalled past its session timeout (SIGSTOP: a long GC pause, a frozen VM) while a
// message is in flight: the coordinator expels it and gives its partitions to the other instance,
// which runs the message (each instance has its own journal). When the stalled process resumes
// (SIGCONT), the handler's timer fires at once, before any heartbeat answer tells kexo it is out
// of the group; its ctx.tx must not commit then, or the message takes effect twice (once in each
// journal). kexo fences it: the consumer had no heartbeat accepted for longer than the session
// allows, so the ctx.tx first asks the coordinator, which no longer knows the member, and the
// call is refused (AbortError) with nothing recorded. One handler per order (partition, key, topic)
// in the same two processes, so one stall covers all three.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { queryRows } from "./support/db.ts";
import { callsLog } from "./support/tmp.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { type LogLine, runArgs, WorkerProcess } from "./support/worker.ts";

/** Handler name → its order and topics (order "topic" gets two, so that each instance holds one). */
const HANDLERS = {
  part: { order: "partition", topics: ["fence-p"] },
  keyed: { order: "key", topics: ["fence-k"] },
  topical: { order: "topic", topics: ["fence-t1", "fence-t2"] },
} as const;
type Name = keyof typeof HANDLERS;
const NAMES = Object.keys(HANDLERS) as Name[];
/** How long the first run of each handler's message waits: it is in flight at the SIGSTOP, and its timer is due long before the SIGCONT. */
const WAIT_MS = 3000;

let broker: TestBroker;
let dir: string;

/**
 * The first run of the handler's message anywhere (marker file in HELD_DIR) waits WAIT_MS, then
 * writes its effect in ctx.tx; later runs write it at once. `rethrow`: a refused ctx.tx is thrown
 * on (else the handler catches it and returns, the worst case).
 */
function handler(name: Name, rethrow: boolean): string {
  const { order, topics } = HANDLERS[name];
  return `
import { defineHandler, v } from "kexo";
import { appendFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
const log = (line) => appendFileSync(process.env.CALLS_LOG, JSON.stringify({ ...line, id: "${name}", pid: process.pid, t: Date.now() }) + "\\n");
export default defineHandler({
  name: "${name}",
  topics: ${JSON.stringify(topics)},
  order: "${order}",
  schema: v.object({ n: v.number() }),
  retry: { attempts: 3, initialDelayMs: 100, maxDelayMs: 100 },
  async setup(db) { await db.execute("CREATE TABLE IF NOT EXISTS effects_${name} (n INTEGER, pid INTEGER)"); },
  async handle(p, ctx) {
    let first = true;
    try { writeFileSync(join(process.env.HELD_DIR, "${name}"), "", { flag: "wx" }); } catch { first = false; }
    log({ event: "start", first });
    if (first) await new Promise((r) => setTimeout(r, ${WAIT_MS}));
    const refused = await ctx.tx((db) => db.execute({ sql: "INSERT INTO effects_${name} (n, pid) VALUES (?, ?)", args: [p.n, process.pid] }))
      .then(() => null, (e) => e.name + ": " + e.message);
    log({ event: "end", first, refused });
    if (refused && ${rethrow}) throw new Error(refused);
  },
});
`;
}

withBroker({ "fence-p": 2, "fence-k": 2, "fence-t1": 1, "fence-t2": 1 }, {}, (f) => ({ broker, dir } = f));

type Call = { id: Name; event: "start" | "end"; first: boolean; refused?: string | null; pid: number; t: number };

test("a message in flight when its process stalls past the session takes effect once: the late ctx.tx is refused", async () => {
  await Bun.write(join(dir, "handlers", "part.ts"), handler("part", false));
  await Bun.write(join(dir, "handlers", "keyed.ts"), handler("keyed", true));
  await Bun.write(join(dir, "handlers", "topical.ts"), handler("topical", true));
  const { env, calls } = callsLog<Call>(dir);
  const start = (db: string) => new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), join(dir, db)), { env: { ...env, HELD_DIR: dir } });
  const joins = (w: WorkerProcess, name?: Name) => w.lines.filter((l) => l.msg === "joined group" && (name === undefined || l.handler === name));
  const a = start("a.db");
  await a.waitJoined(3);
  const b = start("b.db");
  await b.waitJoined(3);
  await a.waitJoined(6);
  try {
    // Each handler's message goes where B holds it. B's join lines may lag a rebalance that A's
    // last join began (B's latest logged assignment then empty): wait for B to hold one of each.
    const held = (name: Name) => Object.entries((joins(b, name).at(-1)?.assignment ?? {}) as Record<string, number[]>).find(([, ps]) => ps.length > 0);
    await waitUntil("B holds a partition of every handler", () => NAMES.every((n) => held(n)) || undefined, { timeoutMs: 20_000 });
    for (const name of NAMES) {
      const [topic, partitions] = held(name)!;
      await broker.produce(topic, [{ key: "k", value: JSON.stringify({ n: 1 }), partition: partitions[0]! }]);
    }
    await waitUntil("B runs every handler's message", () => NAMES.every((n) => calls(n).some((c) => c.event === "start" && c.pid === b.proc.pid)) || undefined);

    // B stalls past its session; A takes every partition and runs the messages.
    const joinsOfA = joins(a).length;
    b.kill("SIGSTOP");
    await a.waitJoined(joinsOfA + 3, 30_000);
    await waitUntil("A ran every message", () => NAMES.every((n) => calls(n).some((c) => c.event === "end" && c.pid === a.proc.pid && c.refused === null)) || undefined, { timeoutMs: 15_000 });
    await sleep(1000); // A's offsets reach Kafka
    // B wakes: its handlers' timers are long due and fire at once.
    b.kill("SIGCONT");
    const ends = await waitUntil("B's runs end", () => {
      const e = NAMES.map((n) => calls(n).find((c) => c.event === "end" && c.pid === b.proc.pid));
      return e.every(Boolean) ? (e as Call[]) : undefined;
    }, { timeoutMs: 15_000 });
    console.log(ends.map((c) => `${c.id}: ${c.refused ?? "committed"}`).join("\n"));
    await sleep(3000);
    a.kill("SIGTERM");
    b.kill("SIGTERM");
    expect([await a.exited(), await b.exited()]).toEqual([0, 0]);

    const effects = (name: Name) => ["a.db", "b.db"].flatMap((db) => queryRows<{ pid: number }>(join(dir, db), `SELECT pid FROM effects_${name}`)).map((r) => (r.pid === a.proc.pid ? "A" : "B"));
    expect(Object.fromEntries(NAMES.map((n) => [n, effects(n)]))).toEqual({ part: ["A"], keyed: ["A"], topical: ["A"] });
    // Refused for the stall, naming it.
    for (const c of ends) expect(c.refused ?? "").toMatch(/^AbortError: ctx\.tx refused .*no heartbeat accepted/);
    const refusedLog = (l: LogLine) => /handler failed|retrying/.test(l.msg) && l.handler !== undefined;
    // The refused attempts count as no failure: nothing retried or dead-lettered for them.
    expect(b.lines.filter(refusedLog).map((l) => l.msg)).toEqual([]);
  } finally {
    b.kill("SIGCONT");
    a.kill("SIGKILL");
    b.kill("SIGKILL");
  }
}, 60_000);
