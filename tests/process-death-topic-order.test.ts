// The crash guard with order: "topic": a message whose handler crashes the process natively
// (process.abort(), SIGABRT) is dead-lettered (exhausted, ProcessDied) after retry.attempts
// attempts with a death while it ran alone, and its topic does not stay held for it: the topic's
// other partitions and its later messages go on, one at a time, each taking effect exactly once.
// Another handler's message running beside it is never blamed. (Another topic of the same
// handler would not run beside it on the development broker: kafkajs fetches from a broker again
// only once every batch of its last fetch returned.)
import { expect, test } from "bun:test";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { columnIn, countIn } from "./support/db.ts";
import { callsLog } from "./support/tmp.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { runArgs, WorkerProcess } from "./support/worker.ts";

const TOPIC = "pdt-in";
const OTHER = "pdt-other";
let broker: TestBroker;
let dir: string;

const handler = (topics: string[]) => `
import { defineHandler, v } from "kexo";
import { appendFileSync, readFileSync } from "node:fs";

const log = (x) => appendFileSync(process.env.CALLS_LOG!, JSON.stringify(x) + "\\n");
export default defineHandler({
  topics: ${JSON.stringify(topics)},
  order: "topic",
  schema: v.object({ id: v.string() }),
  retry: { attempts: 2, initialDelayMs: 50, maxDelayMs: 100 },
  async setup(db) {
    await db.execute("CREATE TABLE IF NOT EXISTS seen (id TEXT NOT NULL)");
  },
  async handle(p, ctx) {
    const m = ctx.message;
    log({ id: p.id, topic: m.topic, partition: m.partition, attempt: ctx.attempt, at: "start", t: Date.now() });
    if (p.id === "killer") {
      await new Promise((r) => setTimeout(r, 300));
      process.abort();
    }
    // v0 is still running when the killer crashes the process (it has run before at a restart).
    for (let i = 0; p.id === "v0" && i < 500 && !readFileSync(process.env.CALLS_LOG!, "utf8").includes('"killer"'); i++) {
      await new Promise((r) => setTimeout(r, 20));
    }
    await new Promise((r) => setTimeout(r, p.id === "v0" ? 1500 : 20));
    await ctx.tx((db) => db.execute({ sql: "INSERT INTO seen (id) VALUES (?)", args: [p.id] }));
    log({ id: p.id, topic: m.topic, partition: m.partition, attempt: ctx.attempt, at: "end", t: Date.now() });
  },
});
`;

withBroker({ [TOPIC]: 2, [`${TOPIC}.dlq`]: 1, [OTHER]: 1, [`${OTHER}.dlq`]: 1 }, { "pdt.ts": handler([TOPIC]), "other.ts": handler([OTHER]) }, (f) => ({ broker, dir } = f));

type Call = { id: string; topic: string; partition: number; attempt: number; at: "start" | "end"; t: number };
const msg = (topic: string, id: string, partition: number) => ({ value: JSON.stringify({ id }), partition, topic });

test("topic order: a message that crashes the process is dead-lettered after retry.attempts; its topic goes on, nothing else is blamed", async () => {
  const db = join(dir, "journal.db");
  const { env, calls } = callsLog<Call>(dir);
  const start = () => new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), db), { env });
  const first = start();
  await first.waitJoined(2);
  // v0 (another topic) runs beside the killer (crashes after 300 ms).
  await broker.produce(OTHER, [msg(OTHER, "v0", 0), msg(OTHER, "v1", 0)]);
  await waitUntil("v0 running", () => calls("v0").length > 0 || undefined);
  await broker.produce(TOPIC, [msg(TOPIC, "t0", 0), msg(TOPIC, "killer", 0), msg(TOPIC, "t2", 0), msg(TOPIC, "t3", 0)]);
  await broker.produce(TOPIC, [msg(TOPIC, "u0", 1), msg(TOPIC, "u1", 1), msg(TOPIC, "u2", 1)]);
  const ids = ["t0", "t2", "t3", "u0", "u1", "u2", "v0", "v1"];
  const code = await first.exited();
  expect(code).not.toBe(0);
  expect(calls("v0").filter((c) => c.at === "end")).toEqual([]);

  // Tracked (attempt 1), then alone (attempt 2): the process dies in each.
  for (const expected of ["1/0", "2/1"]) {
    const w = start();
    expect(await w.exited()).toBe(code);
    expect(w.find((l) => l.msg.includes("did not stop cleanly"))).toBeDefined();
    expect(columnIn<string>(db, `SELECT attempts || '/' || deaths FROM kexo_retries WHERE topic = '${TOPIC}' AND partition = 0 AND "offset" = 1`)).toEqual([expected]);
  }
  expect(calls("killer").map((c) => c.attempt)).toEqual([1, 1, 2]);

  const last = start();
  await last.waitJoined(2);
  await waitUntil("every other message handled", () => countIn(db, "SELECT count(*) AS n FROM seen") >= ids.length || undefined, { timeoutMs: 20_000 });
  await sleep(1000);
  last.kill("SIGTERM");
  expect(await last.exited()).toBe(0);

  const dead = await broker.readAll(`${TOPIC}.dlq`, 2, 5000);
  expect(dead.map((d) => [d.value?.toString(), d.headers["kexo-dlq-offset"]?.toString(), d.headers["kexo-dlq-reason"]?.toString(), d.headers["kexo-dlq-error-type"]?.toString(), d.headers["kexo-dlq-attempts"]?.toString()]))
    .toEqual([['{"id":"killer"}', "1", "exhausted", "ProcessDied", "2"]]);
  expect(await broker.readAll(`${OTHER}.dlq`, 1, 1000)).toEqual([]);
  expect(calls("killer")).toHaveLength(3);
  expect(columnIn<string>(db, "SELECT id FROM seen ORDER BY id")).toEqual([...ids].sort());
  expect(countIn(db, "SELECT count(*) AS n FROM kexo_retries")).toBe(0);

  // One at a time on the topic, each partition in offset order; t2 only after the killer's end.
  const topic = calls().filter((c) => c.topic === TOPIC);
  const finished = topic.filter((c) => c.id !== "killer" && c.at === "end");
  for (const p of [0, 1]) {
    expect(finished.filter((c) => c.partition === p).map((c) => c.id)).toEqual(p === 0 ? ["t0", "t2", "t3"] : ["u0", "u1", "u2"]);
  }
  const lastKiller = Math.max(...calls("killer").map((c) => c.t));
  expect(calls("t2").every((c) => c.t > lastKiller)).toBe(true);
  let running = 0;
  for (const c of topic) {
    if (c.id === "killer") continue; // dies in its run: no end
    running += c.at === "start" ? 1 : -1;
    expect(running).toBeLessThanOrEqual(1);
  }
}, 90_000);
