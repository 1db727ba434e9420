// After an unclean stop the crash guard runs a message that had failed attempts alone, and every
// other message waits its turn. A SIGTERM then drains as soon as the message running alone is
// done, exit 0, in every order (partition, key, topic): the messages waiting for the guard run no
// handler, so they stop waiting and end unfinished, with no attempt used up and nothing committed
// past them. Before, the guard let them in once the lone message was done, in the middle of the
// drain, and the drain waited for their handlers until --shutdown-timeout (exit 75). After the
// next start every message takes effect exactly once.
import { expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { countIn, queryRows } from "./support/db.ts";
import { callsLog } from "./support/tmp.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { runArgs, WorkerProcess } from "./support/worker.ts";

const LEAD = "dgw-lead";
const ORDERS = ["partition", "key", "topic"] as const;
const SHUTDOWN_TIMEOUT_MS = 20_000;
const PARTITIONS = 2;
let broker: TestBroker;
let dir: string;

// The lead message fails its first attempt (then waits 15-30 s for the next: the test kills the
// worker meanwhile); its second attempt, run alone after the unclean start, lasts until the test
// creates the RELEASE file.
const LEAD_HANDLER = `
import { defineHandler, v } from "kexo";
import { appendFileSync, existsSync } from "node:fs";

export default defineHandler({
  topics: ["${LEAD}"],
  schema: v.object({ id: v.string() }),
  retry: { attempts: 5, initialDelayMs: 30000, maxDelayMs: 30000 },
  async setup(db) { await db.execute("CREATE TABLE IF NOT EXISTS effects (handler TEXT, id TEXT)"); },
  async handle(p, ctx) {
    appendFileSync(process.env.CALLS_LOG!, JSON.stringify({ id: p.id, attempt: ctx.attempt, pid: process.pid }) + "\\n");
    if (ctx.attempt === 1) throw new Error("downstream is down");
    for (let i = 0; i < 1200 && !existsSync(process.env.RELEASE!); i++) await new Promise((r) => setTimeout(r, 50));
    await ctx.tx((db) => db.execute({ sql: "INSERT INTO effects VALUES ('lead', ?)", args: [p.id] }));
  },
});
`;

// Takes SLOW_MS (until ctx.signal aborts): a drain that let these in would wait for them.
const waiter = (order: string) => `
import { defineHandler, v } from "kexo";
import { appendFileSync } from "node:fs";

export default defineHandler({
  topics: ["dgw-${order}"],
  schema: v.object({ id: v.string() }),
  order: "${order}",
  async setup(db) { await db.execute("CREATE TABLE IF NOT EXISTS effects (handler TEXT, id TEXT)"); },
  async handle(p, ctx) {
    appendFileSync(process.env.CALLS_LOG!, JSON.stringify({ id: p.id, attempt: ctx.attempt, pid: process.pid }) + "\\n");
    const ms = Number(process.env.SLOW_MS);
    if (ms > 0) {
      await new Promise((resolve, reject) => {
        const t = setTimeout(resolve, ms);
        ctx.signal.addEventListener("abort", () => { clearTimeout(t); reject(new Error("aborted")); });
      });
    }
    await ctx.tx((db) => db.execute({ sql: "INSERT INTO effects VALUES (?, ?)", args: ["${order}", p.id] }));
  },
});
`;

withBroker(
  { [LEAD]: 1, ...Object.fromEntries(ORDERS.map((o) => [`dgw-${o}`, PARTITIONS])) },
  { "lead.ts": LEAD_HANDLER, ...Object.fromEntries(ORDERS.map((o) => [`w-${o}.ts`, waiter(o)])) },
  (f) => ({ broker, dir } = f),
);

type Call = { id: string; attempt: number; pid: number };
type Status = { handlers: { handler: string; blocked?: string }[] };

test("SIGTERM while messages wait for the crash guard drains once the lone message is done, exit 0", async () => {
  const db = join(dir, "journal.db");
  const release = join(dir, "release");
  const { env, calls } = callsLog<Call>(dir);
  const start = (slowMs: number) => new WorkerProcess(
    runArgs(broker.brokers, join(dir, "handlers"), db, "--shutdown-timeout", String(SHUTDOWN_TIMEOUT_MS)),
    { env: { ...env, RELEASE: release, SLOW_MS: String(slowMs) } },
  );
  const effects = () => queryRows<{ handler: string; id: string }>(db, "SELECT handler, id FROM effects").map((e) => `${e.handler}/${e.id}`);
  const ids = (o: string) => Array.from({ length: 2 * PARTITIONS }, (_, i) => `${o}-${i}`);

  // Run 1: the lead message's first attempt fails and is journaled; killed in its backoff.
  const first = start(0);
  await first.waitJoined(1 + ORDERS.length);
  await broker.produce(LEAD, [{ value: JSON.stringify({ id: "lead" }) }]);
  await waitUntil("attempt 1 journaled", () => countIn(db, "SELECT count(*) AS n FROM kexo_retries WHERE attempts = 1") === 1 || undefined, { timeoutMs: 20_000 });
  first.kill("SIGKILL");
  await first.exited();

  // Run 2, unclean: the lead message runs alone; the others arrive meanwhile and wait their turn.
  const second = start(60_000);
  await waitUntil("the lead message running alone", () => calls("lead").some((c) => c.pid === second.proc.pid) || undefined, { timeoutMs: 30_000 });
  expect(second.find((l) => l.msg.includes("did not stop cleanly"))).toBeDefined();
  await second.waitJoined(1 + ORDERS.length);
  for (const o of ORDERS) {
    await broker.produce(`dgw-${o}`, ids(o).map((id, i) => ({ key: id, value: JSON.stringify({ id }), partition: i % PARTITIONS })));
  }
  const statusUrl = `http://${await second.httpAddress()}/status`;
  await waitUntil("a message of every order waiting for the guard", async () => {
    const s = (await (await fetch(statusUrl)).json()) as Status;
    return ORDERS.every((o) => s.handlers.find((h) => h.handler === `w-${o}`)?.blocked?.includes("runs alone")) || undefined;
  }, { timeoutMs: 20_000 });
  expect(calls().filter((c) => c.id !== "lead")).toEqual([]);

  const t0 = performance.now();
  second.kill("SIGTERM");
  // The lone message's handler is in flight: the drain waits for it, ending it a second later.
  await sleep(1000);
  writeFileSync(release, "");
  const code = await second.exited();
  const seconds = (performance.now() - t0) / 1000;
  console.log(`SIGTERM to exit: ${seconds.toFixed(1)} s, exit ${code}`);
  expect({ code, aborted: second.lines.some((l) => l.msg.startsWith("shutdown timeout ran out")) }).toEqual({ code: 0, aborted: false });
  expect(seconds).toBeLessThan(10);
  // The lead message finished; none of the waiting ones started.
  expect(effects()).toEqual(["lead/lead"]);
  expect(calls().filter((c) => c.id !== "lead")).toEqual([]);

  // Run 3, clean (the drain ran to its end): every waiting message runs, once, as its attempt 1.
  const third = start(0);
  await third.waitJoined(1 + ORDERS.length);
  expect(third.find((l) => l.msg.includes("did not stop cleanly"))).toBeUndefined();
  const all = ORDERS.flatMap((o) => ids(o).map((id) => `${o}/${id}`));
  await waitUntil("every message's effect", () => effects().length >= 1 + all.length || undefined, { timeoutMs: 30_000 });
  await sleep(300);
  third.kill("SIGTERM");
  expect(await third.exited()).toBe(0);

  expect(effects().sort()).toEqual(["lead/lead", ...all].sort());
  expect(calls("lead").map((c) => c.attempt)).toEqual([1, 2]);
  const waiters = calls().filter((c) => c.id !== "lead");
  expect(waiters.map((c) => c.id).sort()).toEqual(ORDERS.flatMap(ids).sort());
  expect(waiters.every((c) => c.attempt === 1 && c.pid === third.proc.pid)).toBe(true);
  expect(countIn(db, "SELECT count(*) AS n FROM kexo_retries")).toBe(0);
  expect([...first.lines, ...second.lines, ...third.lines].filter((l) => l.msg === "message dead-lettered")).toEqual([]);
}, 120_000);
