// A handle() that does not return holds up its own partition, not the others its broker leads.
// kafkajs fetches a broker's partitions together and fetches again only once every batch of the
// last fetch returned; a batch still running after a second lets go of that round (its partition
// paused, the batch going on alone), so the other partitions are fetched again. Checked on one
// broker (every partition on it): messages produced to partition 1 after partition 0's handler
// hung are handled; partition 0's later message waits for it, in order; a drain waits for the
// batch that let go; nothing is handled twice, across a restart too. With `concurrency: 1` a
// batch that let go still holds the one slot: nothing runs beside it; with `concurrency: 2` the
// other partitions share the second slot and go on. A SIGKILL while a batch is let go loses nothing.
import { expect, test } from "bun:test";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { columnIn } from "./support/db.ts";
import { hangingHandler, type HangCall } from "./support/handlers.ts";
import { callsLog } from "./support/tmp.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

let broker: TestBroker;
let dir: string;
withBroker({ "hh-in": 2, "hh-one": 2, "hh-two": 3, "hh-kill": 2 }, {}, (f) => ({ broker, dir } = f));

/** A worker on `topic` alone, with its own handlers directory, journal, calls log and release file. */
async function startCase(name: string, topic: string, extra: string) {
  const handlers = join(dir, `h${name}`);
  await Bun.write(join(handlers, `case${name}.ts`), hangingHandler(topic, extra));
  const db = join(dir, `case${name}.db`);
  const release = join(dir, `release-${name}`);
  mkdirSync(join(dir, `c${name}`));
  const { env, calls } = callsLog<HangCall>(join(dir, `c${name}`));
  const effects = () => columnIn<string>(db, "SELECT v FROM effects");
  const w = new WorkerProcess(runArgs(broker.brokers, handlers, db), { env: { ...env, RELEASE: release } });
  await w.waitJoined();
  return { w, calls, effects, release };
}


test("a hung handler holds up its partition only; its later message waits in order; the drain waits for it; nothing runs twice", async () => {
  const handlers = join(dir, "h1");
  await Bun.write(join(handlers, "hh.ts"), hangingHandler("hh-in"));
  const db = join(dir, "one.db");
  const release = join(dir, "release-1");
  const { env, calls } = callsLog<HangCall>(dir);
  const effects = () => columnIn<string>(db, "SELECT v FROM effects");
  const started = (id: string) => calls(id).some((c) => c.what === "start");

  let w = new WorkerProcess(runArgs(broker.brokers, handlers, db), { env: { ...env, RELEASE: release } });
  await w.waitJoined();
  await broker.produce("hh-in", [{ value: "hang", partition: 0 }, { value: "a1", partition: 1 }]);
  await waitUntil("hang started and a1 handled", () => started("hang") && effects().includes("a1"));
  // Fetched after the hang began: on the code before, partition 1 waited for partition 0's batch.
  await sleep(1500);
  await broker.produce("hh-in", [{ value: "b1", partition: 0 }]);
  await broker.produce("hh-in", [{ value: "a2", partition: 1 }]);
  await waitUntil("a2 handled while hang runs", () => effects().includes("a2"), { timeoutMs: 15_000 });
  await broker.produce("hh-in", [{ value: "a3", partition: 1 }]);
  await waitUntil("a3 handled while hang runs", () => effects().includes("a3"), { timeoutMs: 15_000 });
  expect(started("b1")).toBe(false);
  expect(calls("hang").filter((c) => c.what === "end")).toHaveLength(0);
  // Past the session timeout (6 s) since the hang began: kafkajs's loop kept the member alive, no
  // rejoin, and partition 1 still flows.
  const hangStart = calls("hang")[0]!.at;
  await sleep(Math.max(0, hangStart + 8000 - Date.now()));
  await broker.produce("hh-in", [{ value: "a3b", partition: 1 }]);
  await waitUntil("a3b handled while hang runs", () => effects().includes("a3b"), { timeoutMs: 15_000 });
  expect(w.lines.filter((l) => l.msg === "joined group")).toHaveLength(1);

  // A drain waits for the batch that let go: the hung message finishes, b1 (behind it) is left
  // for the next start, and the stop is clean.
  w.kill("SIGTERM");
  await sleep(500);
  writeFileSync(release, "");
  expect(await w.exited()).toBe(0);
  expect(effects().sort()).toEqual(["a1", "a2", "a3", "a3b", "hang"]);
  expect(started("b1")).toBe(false);

  w = new WorkerProcess(runArgs(broker.brokers, handlers, db), { env: { ...env, RELEASE: release } });
  await w.waitJoined();
  await waitUntil("b1 handled after the restart", () => effects().includes("b1"));
  await broker.produce("hh-in", [{ value: "b2", partition: 0 }, { value: "a4", partition: 1 }]);
  await waitUntil("b2 and a4 handled", () => effects().includes("b2") && effects().includes("a4"));
  w.kill("SIGTERM");
  expect(await w.exited()).toBe(0);

  const all = ["a1", "a2", "a3", "a3b", "a4", "b1", "b2", "hang"];
  expect(effects().sort()).toEqual(all);
  for (const id of all) expect(calls(id).filter((c) => c.what === "start")).toHaveLength(1);
  // Partition 0 in order: b1 started only after hang ended.
  const hangEnd = calls("hang").find((c) => c.what === "end")!.at;
  expect(calls("b1")[0]!.at).toBeGreaterThanOrEqual(hangEnd);
}, 120_000);

test("concurrency 1: a batch that let go keeps the handler's one slot; the other partition waits for it", async () => {
  const { w, calls, effects, release } = await startCase("2", "hh-one", "concurrency: 1,");
  await broker.produce("hh-one", [{ value: "hang-one", partition: 0 }]);
  await waitUntil("hang-one started", () => calls("hang-one").length > 0);
  await sleep(1500);
  await broker.produce("hh-one", [{ value: "x1", partition: 1 }]);
  // Past the let-go (1 s) and a fetch or two: x1 must not run beside the hung message.
  await sleep(3000);
  expect(calls("x1")).toHaveLength(0);
  writeFileSync(release, "");
  await waitUntil("x1 handled", () => effects().includes("x1"));
  const hangEnd = calls("hang-one").find((c) => c.what === "end")!.at;
  expect(calls("x1")[0]!.at).toBeGreaterThanOrEqual(hangEnd);
  w.kill("SIGTERM");
  expect(await w.exited()).toBe(0);
}, 60_000);

test("concurrency 2: with one batch hung, the other partitions share the second slot and go on", async () => {
  const { w, calls, effects, release } = await startCase("3", "hh-two", "concurrency: 2,");
  await broker.produce("hh-two", [{ value: "hang-two", partition: 0 }]);
  await waitUntil("hang-two started", () => calls("hang-two").length > 0);
  await sleep(1500);
  for (let round = 1; round <= 3; round++) {
    await broker.produce("hh-two", [{ value: `p1-${round}`, partition: 1 }, { value: `p2-${round}`, partition: 2 }]);
    await waitUntil(`round ${round} handled while hang-two runs`, () => effects().includes(`p1-${round}`) && effects().includes(`p2-${round}`), { timeoutMs: 15_000 });
  }
  expect(calls("hang-two").filter((c) => c.what === "end")).toHaveLength(0);
  // Never more than two at once: the hung one and one other.
  const events = calls().map((c) => ({ at: c.at, d: c.what === "start" ? 1 : -1 })).sort((a, b) => a.at - b.at || a.d - b.d);
  let running = 0;
  let most = 0;
  for (const e of events) most = Math.max(most, (running += e.d));
  expect(most).toBeLessThanOrEqual(2);
  writeFileSync(release, "");
  await waitUntil("hang-two handled", () => effects().includes("hang-two"));
  w.kill("SIGTERM");
  expect(await w.exited()).toBe(0);
}, 90_000);

test("SIGKILL while a batch is let go: after the restart the hung message and the one behind it run, nothing is lost or run twice", async () => {
  const handlers = join(dir, "h4");
  await Bun.write(join(handlers, "kill.ts"), hangingHandler("hh-kill"));
  const db = join(dir, "kill.db");
  const release = join(dir, "release-4");
  mkdirSync(join(dir, "c4"));
  const { env, calls } = callsLog<HangCall>(join(dir, "c4"));
  const effects = () => columnIn<string>(db, "SELECT v FROM effects");
  const start = () => new WorkerProcess(runArgs(broker.brokers, handlers, db), { env: { ...env, RELEASE: release } });

  let w = start();
  await w.waitJoined();
  await broker.produce("hh-kill", [{ value: "hang", partition: 0 }, { value: "a1", partition: 1 }]);
  await waitUntil("hang started, a1 handled", () => calls("hang").length > 0 && effects().includes("a1"));
  await sleep(1500);
  await broker.produce("hh-kill", [{ value: "b1", partition: 0 }]);
  await broker.produce("hh-kill", [{ value: "a2", partition: 1 }]);
  // Committed to the journal (read from its file) while partition 0's batch is let go.
  await waitUntil("a2 handled while hang runs", () => effects().includes("a2"), { timeoutMs: 15_000 });
  w.kill("SIGKILL");
  await w.exited();

  writeFileSync(release, "");
  w = start();
  await w.waitJoined();
  await waitUntil("hang and b1 handled after the restart", () => effects().includes("hang") && effects().includes("b1"));
  await broker.produce("hh-kill", [{ value: "a3", partition: 1 }]);
  await waitUntil("a3 handled", () => effects().includes("a3"));
  w.kill("SIGTERM");
  expect(await w.exited()).toBe(0);
  expect(effects().sort()).toEqual(["a1", "a2", "a3", "b1", "hang"]);
  // Partition 0 in order after the restart too.
  const hangEnd = calls("hang").find((c) => c.what === "end")!.at;
  expect(calls("b1").find((c) => c.what === "start")!.at).toBeGreaterThanOrEqual(hangEnd);
}, 120_000);
