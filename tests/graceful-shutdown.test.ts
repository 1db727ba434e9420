// SIGTERM mid-stream drains: kexo exits 0 within --shutdown-timeout, leaves the group so the other
// instance takes every partition within 10 s, and after a restart every message's effect exists
// exactly once across both instances' journals.
import { afterAll, beforeAll, expect, test } from "bun:test";
import Database from "libsql";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { effectsHandler } from "./support/handlers.ts";
import { startBroker, type TestBroker } from "./support/broker.ts";
import { tempDir } from "./support/tmp.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { type LogLine, WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "drain-in";
const PARTITIONS = 4;
const COUNT = 6000;
const SHUTDOWN_TIMEOUT_MS = 10_000;
let broker: TestBroker;
let dir: string;

beforeAll(async () => {
  broker = await startBroker({ [TOPIC]: PARTITIONS });
  dir = tempDir();
  await Bun.write(
    join(dir, "handlers", "drain.ts"),
    effectsHandler(TOPIC, { delayMs: "2" }),
  );
});

afterAll(async () => {
  await broker?.close();
});

function effects(db: string): number[] {
  if (!existsSync(db)) return [];
  const c = new Database(db, { readonly: true });
  try {
    return (c.prepare("SELECT n FROM effects").all() as { n: number }[]).map((r) => r.n);
  } catch {
    return [];
  } finally {
    c.close();
  }
}

const joins = (w: WorkerProcess) => w.lines.filter((l) => l.msg === "joined group");
const owned = (l: LogLine) => Object.values(l.assignment as Record<string, number[]>).reduce((n, ps) => n + ps.length, 0);

test("SIGTERM mid-stream: exit 0 within the timeout, a peer takes the partitions within 10 s, effects exact after a restart", async () => {
  const [dbA, dbB] = [join(dir, "a.db"), join(dir, "b.db")];
  const start = (db: string) =>
    new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), db, "--shutdown-timeout", String(SHUTDOWN_TIMEOUT_MS)));
  const a = start(dbA);
  await a.waitJoined();
  const b = start(dbB);
  await b.waitJoined();
  await waitUntil("A rejoined with B", () => joins(a).length >= 2 || undefined, { timeoutMs: 30_000 });

  let produced = 0;
  const producing = (async () => {
    while (produced < COUNT) {
      await broker.produce(TOPIC, Array.from({ length: 300 }, (_, i) => ({ key: String((produced + i) % 32), value: JSON.stringify({ n: produced + i }) })));
      produced += 300;
      await sleep(100);
    }
  })();
  await waitUntil("A is mid-stream", () => effects(dbA).length >= 300 || undefined, { timeoutMs: 30_000 });

  const bJoinsBefore = joins(b).length;
  const termAt = Date.now();
  a.kill("SIGTERM");
  expect(await a.exited()).toBe(0);
  const drainMs = Date.now() - termAt;
  expect(a.find((l) => l.msg === "drained; exiting")).toBeDefined();
  const takeover = await waitUntil("B owns every partition", () => joins(b).slice(bJoinsBefore).find((l) => owned(l) === PARTITIONS), { timeoutMs: 30_000 });
  const takeoverMs = Date.parse(String(takeover.time)) - termAt;
  console.log(`A drained in ${drainMs} ms; B owned all ${PARTITIONS} partitions ${takeoverMs} ms after SIGTERM`);
  expect(drainMs).toBeLessThan(SHUTDOWN_TIMEOUT_MS);
  expect(takeoverMs).toBeLessThan(10_000);

  // A comes back on its journal; the group splits again and the stream finishes.
  const a2 = start(dbA);
  await a2.waitJoined();
  await producing;
  const total = () => effects(dbA).length + effects(dbB).length;
  await waitUntil(`${COUNT} effects`, () => total() >= COUNT || undefined, { timeoutMs: 60_000 });
  await sleep(500);
  a2.kill("SIGTERM");
  b.kill("SIGTERM");
  expect(await a2.exited()).toBe(0);
  expect(await b.exited()).toBe(0);

  const seen = new Map<number, number>();
  for (const n of [...effects(dbA), ...effects(dbB)]) seen.set(n, (seen.get(n) ?? 0) + 1);
  expect([...seen.values()].filter((c) => c > 1).length).toBe(0);
  expect(seen.size).toBe(COUNT);
}, 150_000);

test("SIGTERM before the group was joined exits 0, also when the broker never answers", async () => {
  // 127.0.0.1:1 refuses connections: the start is still retrying when the signal comes, then fails.
  const w = new WorkerProcess(runArgs("127.0.0.1:1", join(dir, "handlers"), join(dir, "never.db")));
  await w.httpAddress();
  w.kill("SIGTERM");
  expect(await w.exited()).toBe(0);
  expect(w.find((l) => l.msg.startsWith("signal received while starting"))).toBeDefined();
}, 90_000);
