// A batch that let go of kafkajs's fetch round (a handler running long, see
// tests/hung-handler-partitions) meets a rebalance: a second instance, with a journal of its own,
// joins while it runs. The rejoin waits for it within the rebalance grace, as for any batch; when
// the grace runs out first, its ctx.signal aborts and its message, recorded nowhere, runs again at
// its next owner. Either way every message is handled exactly once across both journals, and no
// partition stays paused: messages produced after the rebalance are all handled.
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
withBroker({ "hr-in": 2, "hr-late": 2, "hr-slot": 4 }, {}, (f) => ({ broker, dir } = f));

const GRACE_RAN_OUT = "rebalance grace ran out with messages running; their ctx.signal is aborted, their partitions are revoked";


async function rebalanceCase(name: string, topic: string, release: "rejoin waiting" | "aborted") {
  const handlers = join(dir, `h-${name}`);
  await Bun.write(join(handlers, `${name}.ts`), hangingHandler(topic));
  mkdirSync(join(dir, `c-${name}`));
  const { env, calls } = callsLog<HangCall>(join(dir, `c-${name}`));
  const releaseFile = join(dir, `release-${name}`);
  const dbs = [join(dir, `${name}-a.db`), join(dir, `${name}-b.db`)];
  const effects = () => dbs.flatMap((db) => columnIn<string>(db, "SELECT v FROM effects"));
  const start = (db: string) => new WorkerProcess(runArgs(broker.brokers, handlers, db), { env: { ...env, RELEASE: releaseFile } });

  const a = start(dbs[0]!);
  await a.waitJoined();
  await broker.produce(topic, [{ value: "hang", partition: 0 }, { value: "a1", partition: 1 }]);
  await waitUntil("hang started, a1 handled", () => calls("hang").length > 0 && effects().includes("a1"));
  await sleep(1500);
  // Partition 1 goes on beside the batch that let go.
  await broker.produce(topic, [{ value: "a2", partition: 1 }]);
  await waitUntil("a2 handled while hang runs", () => effects().includes("a2"), { timeoutMs: 15_000 });

  const b = start(dbs[1]!);
  if (release === "rejoin waiting") {
    // A's rejoin has begun (not ready) and waits for the batch that let go: released now.
    const readyz = `http://${await a.httpAddress()}/readyz`;
    await waitUntil("A rebalancing", async () => (await fetch(readyz)).status === 503 || undefined, { timeoutMs: 30_000, intervalMs: 20 });
    await sleep(500);
  } else {
    await waitUntil("the hung run aborted at the grace's end", () => calls("hang").some((c) => c.what === "aborted") || undefined, { timeoutMs: 40_000 });
  }
  writeFileSync(releaseFile, "");
  await b.waitJoined(1, 60_000);
  await waitUntil("A joined again", () => a.lines.filter((l) => l.msg === "joined group").length >= 2 || undefined, { timeoutMs: 60_000 });

  const later = Array.from({ length: 20 }, (_, i) => ({ value: `m${i}`, partition: i % 2 }));
  await broker.produce(topic, later);
  const all = ["hang", "a1", "a2", ...later.map((m) => m.value)];
  await waitUntil("every message handled", () => all.every((v) => effects().includes(v)) || undefined, { timeoutMs: 30_000 });
  a.kill("SIGTERM");
  b.kill("SIGTERM");
  expect(await a.exited()).toBe(0);
  expect(await b.exited()).toBe(0);
  // Exactly once across both journals.
  expect(effects().sort()).toEqual([...all].sort());
  return calls;
}

test("released within the rebalance grace: the rejoin waits for the batch that let go; everything handled exactly once", async () => {
  const calls = await rebalanceCase("within", "hr-in", "rejoin waiting");
  // The hung message ran once: the rejoin waited for it.
  expect(calls("hang").filter((c) => c.what === "start")).toHaveLength(1);
  expect(calls("hang").filter((c) => c.what === "aborted")).toHaveLength(0);
}, 150_000);

test("not released within the grace: its signal aborts, its message runs again at its next owner, once in effects", async () => {
  const calls = await rebalanceCase("past", "hr-late", "aborted");
  const hang = calls("hang");
  expect(hang.filter((c) => c.what === "aborted").length).toBeGreaterThanOrEqual(1);
  expect(hang.filter((c) => c.what === "start").length).toBeGreaterThanOrEqual(2);
}, 150_000);

test("concurrency 1, a hung run ignoring its signal past the grace: it no longer holds the slot, the instance's new partitions run, and the next rebalance does not wait for it", async () => {
  const handlers = join(dir, "h-slot");
  await Bun.write(join(handlers, "slot.ts"), hangingHandler("hr-slot", "concurrency: 1,"));
  mkdirSync(join(dir, "c-slot"));
  const { env, calls } = callsLog<HangCall>(join(dir, "c-slot"));
  const releaseFile = join(dir, "release-slot");
  const dbs = [join(dir, "slot-a.db"), join(dir, "slot-b.db")];
  const effects = () => dbs.flatMap((db) => columnIn<string>(db, "SELECT v FROM effects"));
  // Only A hangs, and ignores ctx.signal: B runs the message again and finishes it.
  const a = new WorkerProcess(runArgs(broker.brokers, handlers, dbs[0]!), { env: { ...env, RELEASE: releaseFile, IGNORE_SIGNAL: "1" } });
  await a.waitJoined();
  await broker.produce("hr-slot", [{ value: "hang", partition: 0 }]);
  await waitUntil("hang started", () => calls("hang").length > 0);
  await sleep(1500);
  const b = new WorkerProcess(runArgs(broker.brokers, handlers, dbs[1]!), { env: { ...env, RELEASE: releaseFile, HANG: "0" } });
  await a.waitForLog("the grace ran out", (l) => l.msg === GRACE_RAN_OUT, 40_000);
  await b.waitJoined(1, 60_000);
  await waitUntil("A joined again", () => a.lines.filter((l) => l.msg === "joined group").length >= 2 || undefined, { timeoutMs: 60_000 });
  // A holds two of the four partitions, at least one of them not partition 0.
  const later = Array.from({ length: 12 }, (_, i) => ({ value: `s${i}`, partition: 1 + (i % 3) }));
  await broker.produce("hr-slot", later);
  await waitUntil("partitions 1-3 handled while A's old run still hangs", () => later.every((m) => effects().includes(m.value)) || undefined, { timeoutMs: 20_000 });
  expect(calls("hang").filter((c) => c.pid === a.proc.pid)).toHaveLength(1);
  // B leaves: A's next rejoin does not wait for the abandoned run (its ctx calls are refused, its
  // partition long revoked), so this grace never runs out.
  b.kill("SIGTERM");
  expect(await b.exited()).toBe(0);
  await waitUntil("A joined a third time", () => a.lines.filter((l) => l.msg === "joined group").length >= 3 || undefined, { timeoutMs: 60_000 });
  expect(a.lines.filter((l) => l.msg === GRACE_RAN_OUT)).toHaveLength(1);
  writeFileSync(releaseFile, "");
  await waitUntil("hang handled once", () => effects().includes("hang") || undefined);
  a.kill("SIGTERM");
  await a.exited();
  expect(effects().sort()).toEqual(["hang", ...later.map((m) => m.value)].sort());
}, 150_000);
