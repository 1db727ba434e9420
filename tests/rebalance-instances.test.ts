// Guarantee 7: instances with the same handlers share partitions through the consumer group; on
// graceful rebalances (instances joining, and leaving with SIGTERM) no message is handled twice,
// even though every instance has its own journal.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { join } from "node:path";
import { columnIn } from "./support/db.ts";
import { effectsHandler } from "./support/handlers.ts";
import { startBroker, type TestBroker } from "./support/broker.ts";
import { tempDir } from "./support/tmp.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "rebalance-in";
const COUNT = 20_000;
let broker: TestBroker;
let dir: string;

beforeAll(async () => {
  broker = await startBroker({ [TOPIC]: 8 });
  dir = tempDir();
  await Bun.write(
    join(dir, "handlers", "shared.ts"),
    effectsHandler(TOPIC, { delayMs: "1" }),
  );
});

afterAll(async () => {
  await broker?.close();
});

const effects = (db: string) => columnIn<number>(db, "SELECT n FROM effects");

test("three instances joining and leaving during a 20k stream: every message handled exactly once overall", async () => {
  const dbs = ["a", "b", "c"].map((n) => join(dir, `${n}.db`));
  const start = (db: string) =>
    new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), db));
  const total = () => dbs.reduce((sum, db) => sum + effects(db).length, 0);

  const a = start(dbs[0]!);
  await a.waitJoined();
  let produced = 0;
  const producing = (async () => {
    while (produced < COUNT) {
      const batch = Array.from({ length: 500 }, (_, i) => ({ key: String((produced + i) % 64), value: JSON.stringify({ n: produced + i }) }));
      await broker.produce(TOPIC, batch);
      produced += batch.length;
      await sleep(150);
    }
  })();

  await sleep(1500);
  const b = start(dbs[1]!);
  await b.waitJoined();
  const c = start(dbs[2]!);
  await c.waitJoined();
  await waitUntil("A joined the rebalances", () => a.lines.filter((l) => l.msg === "joined group").length >= 2 || undefined);
  a.kill("SIGTERM");
  expect(await a.exited()).toBe(0);
  await waitUntil("B and C rebalanced after A left", () => b.lines.filter((l) => l.msg === "joined group").length >= 3 || undefined, { timeoutMs: 40_000 });
  b.kill("SIGTERM");
  expect(await b.exited()).toBe(0);
  await producing;
  await waitUntil(`${COUNT} effects`, () => total() >= COUNT || undefined, { timeoutMs: 90_000 });
  await sleep(1000);
  c.kill("SIGTERM");
  expect(await c.exited()).toBe(0);

  const seen = new Map<number, number>();
  for (const db of dbs) for (const n of effects(db)) seen.set(n, (seen.get(n) ?? 0) + 1);
  const perInstance = dbs.map((db) => effects(db).length);
  console.log(`effects per instance: ${perInstance.join(", ")}`);
  expect(perInstance.every((n) => n > 0)).toBe(true);
  const twice = [...seen.entries()].filter(([, c]) => c > 1);
  if (twice.length > 0) {
    // What a failure needs to be understood: where the doubles are and what each instance logged
    // around its joins, commits and leave.
    const dup = new Set(twice.map(([n]) => n));
    dbs.forEach((db, i) => console.log(`instance ${"abc"[i]} doubles: ${effects(db).filter((n) => dup.has(n)).sort((x, y) => x - y).join(",")}`));
    [a, b, c].forEach((w, i) => {
      for (const l of w.lines) if (l.level !== "debug") console.log(`${"abc"[i]} ${JSON.stringify(l)}`);
    });
  }
  expect(twice.length).toBe(0);
  expect(seen.size).toBe(COUNT);
}, 240_000);
