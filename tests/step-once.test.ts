// Guarantee 2: a recorded ctx.step is never run again; a step cut by a crash before its result is
// recorded runs again. Each step's result carries the attempt and the process that ran it, so a
// rerun shows: across retries of the handler, and across a SIGKILL after the step's result was
// COMMITted (the handler waiting past it), the step runs once and every later attempt gets the
// first result; a step killed while it runs runs again after the restart.
import { expect, test } from "bun:test";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { queryRows } from "./support/db.ts";
import { readJsonLines } from "./support/tmp.ts";
import { waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "so-in";
let broker: TestBroker;
let dir: string;

const HANDLER = `
import { defineHandler, v } from "kexo";
import { appendFileSync, existsSync } from "node:fs";

const log = (entry) => appendFileSync(process.env.CALLS_LOG, JSON.stringify({ ...entry, pid: process.pid }) + "\\n");
const released = () => existsSync(process.env.RELEASE);
const forever = () => new Promise((r) => setTimeout(r, 600_000));

export default defineHandler({
  topics: ["${TOPIC}"],
  schema: v.object({ id: v.string() }),
  key: (p) => p.id,
  retry: { attempts: 5, initialDelayMs: 20, maxDelayMs: 50 },
  async handle(p, ctx) {
    const r = await ctx.step("charge", async () => {
      log({ id: p.id, what: "step", attempt: ctx.attempt });
      if (p.id === "cut" && !released()) await forever();
      return { receipt: "r-" + p.id + "-" + ctx.attempt + "-" + process.pid };
    });
    log({ id: p.id, what: "after", attempt: ctx.attempt, receipt: r.receipt });
    if (p.id === "retry" && ctx.attempt < 3) throw new Error("transient");
    if (p.id === "kill" && !released()) await forever();
    return r;
  },
});
`;

interface Call {
  id: string;
  what: "step" | "after";
  attempt: number;
  pid: number;
  receipt?: string;
}

withBroker({ [TOPIC]: 2 }, { "so.ts": HANDLER }, (f) => ({ broker, dir } = f));

test("a recorded step is not run again: across retries, and across a SIGKILL after its result was committed; a step killed while it ran runs again", async () => {
  const db = join(dir, "journal.db");
  const log = join(dir, "calls.jsonl");
  const release = join(dir, "release");
  const env = { CALLS_LOG: log, RELEASE: release };
  const calls = (id: string) => (existsSync(log) ? readJsonLines<Call>(log) : []).filter((c) => c.id === id);
  const result = (id: string) => queryRows<{ status: string; result: string }>(db, "SELECT status, result FROM kexo_messages WHERE id = ?", id)[0];
  const stepRecorded = (id: string) => queryRows(db, "SELECT result FROM kexo_steps WHERE result LIKE ?", `%"r-${id}-%`).length > 0;

  let w = new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), db), { env });
  await w.waitJoined();
  // "retry" first, alone: its retries are fetched again, and the handlers below that wait would
  // hold those fetches up for 1 s each time (until their batches let go of kafkajs's round).
  await broker.produce(TOPIC, [{ value: JSON.stringify({ id: "retry" }), partition: 0 }]);
  await waitUntil("retry completed", () => result("retry")?.status === "completed" || undefined);
  const retry = calls("retry");
  expect(retry.filter((c) => c.what === "step").map((c) => c.attempt)).toEqual([1]);
  const first = retry.find((c) => c.what === "after")!.receipt!;
  expect(retry.filter((c) => c.what === "after").map((c) => [c.attempt, c.receipt])).toEqual([[1, first], [2, first], [3, first]]);

  // Partition 0: "kill" waits past its step; partition 1: "cut" waits inside its step.
  await broker.produce(TOPIC, [
    { value: JSON.stringify({ id: "kill" }), partition: 0 },
    { value: JSON.stringify({ id: "cut" }), partition: 1 },
  ]);
  // "kill" ran its step and waits after it: once its result is in the journal file, SIGKILL.
  await waitUntil("kill's step committed", () => stepRecorded("kill") || undefined);
  await waitUntil("cut's step running", () => calls("cut").length > 0 || undefined);
  expect(stepRecorded("cut")).toBe(false);
  w.kill("SIGKILL");
  await w.exited();
  writeFileSync(release, "");

  w = new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), db), { env });
  await w.waitJoined();
  await waitUntil("kill and cut completed", () => (result("kill")?.status === "completed" && result("cut")?.status === "completed") || undefined, { timeoutMs: 60_000 });
  w.kill("SIGTERM");
  expect(await w.exited()).toBe(0);

  const kill = calls("kill");
  expect(kill.filter((c) => c.what === "step").length).toBe(1);
  const killed = kill.find((c) => c.what === "step")!;
  const receipt = `r-kill-1-${killed.pid}`;
  // The attempt after the restart, in another process, got the first process's result.
  expect(kill.filter((c) => c.what === "after").map((c) => [c.pid === killed.pid, c.receipt])).toEqual([[true, receipt], [false, receipt]]);
  expect(JSON.parse(result("kill")!.result)).toEqual({ receipt });

  // "cut" never got its step's result recorded (the process died inside it): it ran again, once.
  const cut = calls("cut").filter((c) => c.what === "step");
  expect(cut.length).toBe(2);
  expect(cut[0]!.pid).toBe(killed.pid);
  expect(cut[1]!.pid).not.toBe(killed.pid);
  expect(JSON.parse(result("cut")!.result).receipt).toBe(`r-cut-${cut[1]!.attempt}-${cut[1]!.pid}`);
  expect(JSON.parse(result("retry")!.result)).toEqual({ receipt: first });
}, 120_000);
