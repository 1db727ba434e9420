// The crash guard with order: "key": a message whose handler calls process.exit(1) while other
// keys' messages run beside it is dead-lettered (exhausted, ProcessDied) after retry.attempts
// attempts with a death while it ran alone; the messages that ran beside it are never blamed and
// take effect exactly once, its key's later messages run after it in order, and a poison message
// dead-lettered above the partition's lowest unfinished offset is not dead-lettered again at
// each restart.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { columnIn, countIn } from "./support/db.ts";
import { callsLog } from "./support/tmp.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { runArgs, WorkerProcess } from "./support/worker.ts";

const TOPIC = "pdk-in";
let broker: TestBroker;
let dir: string;

const HANDLER = `
import { defineHandler, v } from "kexo";
import { appendFileSync } from "node:fs";

const log = (x) => appendFileSync(process.env.CALLS_LOG!, JSON.stringify(x) + "\\n");
export default defineHandler({
  topics: ["${TOPIC}"],
  order: "key",
  concurrency: 4,
  schema: v.object({ id: v.string(), k: v.string(), seq: v.number() }),
  retry: { attempts: 2, initialDelayMs: 50, maxDelayMs: 100 },
  async setup(db) {
    await db.execute("CREATE TABLE IF NOT EXISTS seen (id TEXT NOT NULL)");
  },
  async handle(p, ctx) {
    log({ id: p.id, k: p.k, seq: p.seq, attempt: ctx.attempt, at: "start", t: Date.now() });
    if (p.id === "killer") {
      await new Promise((r) => setTimeout(r, 300));
      process.exit(1);
    }
    await new Promise((r) => setTimeout(r, p.id.endsWith("0") ? 800 : 10));
    await ctx.tx((db) => db.execute({ sql: "INSERT INTO seen (id) VALUES (?)", args: [p.id] }));
    log({ id: p.id, k: p.k, seq: p.seq, attempt: ctx.attempt, at: "end", t: Date.now() });
  },
});
`;

withBroker({ [TOPIC]: 1, [`${TOPIC}.dlq`]: 1 }, { "pdk.ts": HANDLER }, (f) => ({ broker, dir } = f));

type Call = { id: string; k: string; seq: number; attempt: number; at: "start" | "end"; t: number };
const msg = (k: string, id: string, seq: number) => ({ key: k, value: JSON.stringify({ id, k, seq }), partition: 0 });

test("key order: a message that kills the process is dead-lettered after retry.attempts, the keys beside it are never blamed", async () => {
  const db = join(dir, "journal.db");
  const { env, calls } = callsLog<Call>(dir);
  const start = () => new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), db), { env });
  // B0 and C0 (800 ms) run beside the killer (exits after 300 ms); the poison on D is
  // dead-lettered at once, above the lowest unfinished offset.
  const records = [
    msg("B", "B0", 0), msg("C", "C0", 0), { key: "D", value: "not json", partition: 0 }, msg("A", "killer", 0),
    msg("A", "A1", 1), msg("B", "B1", 1), msg("C", "C1", 1), msg("D", "D1", 1), msg("A", "A2", 2),
  ];
  const ids = ["B0", "C0", "A1", "B1", "C1", "D1", "A2"];

  const first = start();
  await first.waitJoined();
  await broker.produce(TOPIC, records);
  expect(await first.exited()).toBe(1);
  expect(first.find((l) => l.msg.includes("did not stop cleanly"))).toBeUndefined();
  const beside = calls().filter((c) => c.at === "start" && c.id !== "killer").map((c) => c.id);
  expect(beside).toContain("B0");
  expect(beside).toContain("C0");

  // Tracked (attempt 1, shared, B0 and C0 beside it), then alone (attempt 2): the process dies in each.
  for (const expected of ["1/0", "2/1"]) {
    const w = start();
    expect(await w.exited()).toBe(1);
    expect(w.find((l) => l.msg.includes("did not stop cleanly"))).toBeDefined();
    expect(columnIn<string>(db, `SELECT attempts || '/' || deaths FROM kexo_retries WHERE "offset" = 3`)).toEqual([expected]);
  }
  expect(calls("killer").filter((c) => c.at === "start").map((c) => c.attempt)).toEqual([1, 1, 2]);

  // The next start dead-letters it without running it; everything else runs, A1 and A2 after it.
  const last = start();
  await last.waitJoined();
  await waitUntil("every other message handled", () => countIn(db, "SELECT count(*) AS n FROM seen") >= ids.length || undefined, { timeoutMs: 20_000 });
  await sleep(1000);
  last.kill("SIGTERM");
  expect(await last.exited()).toBe(0);

  const dead = await broker.readAll(`${TOPIC}.dlq`, 4, 5000);
  expect(dead.map((d) => [d.key?.toString(), d.headers["kexo-dlq-offset"]?.toString(), d.headers["kexo-dlq-reason"]?.toString(), d.headers["kexo-dlq-error-type"]?.toString(), d.headers["kexo-dlq-attempts"]?.toString()]))
    .toEqual([["D", "2", "poison", "PoisonError", "1"], ["A", "3", "exhausted", "ProcessDied", "2"]]);
  expect(dead[1]!.headers["kexo-dlq-error"]?.toString()).toContain("in 1 of its 2 attempts");
  expect(calls("killer").filter((c) => c.at === "start")).toHaveLength(3);
  // Exactly once in effect, whatever the deaths cut short; never blamed.
  expect(columnIn<string>(db, "SELECT id FROM seen ORDER BY id")).toEqual([...ids].sort());
  expect(countIn(db, "SELECT count(*) AS n FROM kexo_retries")).toBe(0);
  expect(columnIn<string>(db, "SELECT message_id FROM kexo_dead_letters ORDER BY \"offset\"")).toEqual([
    `kafka-unique-id-${TOPIC}-0-kexo-pdk-${TOPIC}-2`, `kafka-unique-id-${TOPIC}-0-kexo-pdk-${TOPIC}-3`,
  ]);
  // Key A: A1 and A2 started only once the killer was dead-lettered, in order.
  const ends = calls().filter((c) => c.at === "end");
  const a = calls().filter((c) => c.k === "A" && c.id !== "killer" && c.at === "start").map((c) => c.id);
  expect(a).toEqual(["A1", "A2"]);
  const lastKiller = Math.max(...calls("killer").map((c) => c.t));
  expect(calls().filter((c) => c.k === "A" && c.id !== "killer").every((c) => c.t > lastKiller)).toBe(true);
  for (const k of ["B", "C", "D"]) {
    const order = ends.filter((c) => c.k === k).map((c) => c.seq);
    expect({ k, order }).toEqual({ k, order: [...order].sort() });
  }
}, 90_000);
