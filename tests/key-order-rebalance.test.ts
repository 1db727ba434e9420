// Guarantee 7 with order: "key": on graceful rebalances (an instance joining, another leaving with
// SIGTERM), keyed messages still running when the rebalance begins finish and their progress is
// shared before the partitions move, so no message is handled twice across instances with
// separate journals, even though keyed work runs past the batches kafkajs knows about.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { join } from "node:path";
import { columnIn } from "./support/db.ts";
import { effectsHandler } from "./support/handlers.ts";
import { startBroker, type TestBroker } from "./support/broker.ts";
import { tempDir } from "./support/tmp.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "keys-rebalance-in";
const COUNT = 6000;
let broker: TestBroker;
let dir: string;

beforeAll(async () => {
  broker = await startBroker({ [TOPIC]: 4 });
  dir = tempDir();
  await Bun.write(
    join(dir, "handlers", "keyed.ts"),
    // Key 0 is slow: its messages are still running when others of the partition are done.
    effectsHandler(TOPIC, { options: 'order: "key", concurrency: 8,', delayMs: "p.n % 32 === 0 ? 20 : 1" }),
  );
});

afterAll(async () => {
  await broker?.close();
});

const effects = (db: string) => columnIn<number>(db, "SELECT n FROM effects");

test("keyed work in flight at a rebalance is handled once overall", async () => {
  const dbs = ["a", "b"].map((n) => join(dir, `${n}.db`));
  const start = (db: string) =>
    new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), db));
  const distinct = () => new Set(dbs.flatMap((db) => effects(db))).size;

  const a = start(dbs[0]!);
  await a.waitJoined();
  let produced = 0;
  const producing = (async () => {
    while (produced < COUNT) {
      const batch = Array.from({ length: 200 }, (_, i) => ({ key: `k${(produced + i) % 32}`, value: JSON.stringify({ n: produced + i }) }));
      await broker.produce(TOPIC, batch);
      produced += batch.length;
      await sleep(100);
    }
  })();

  await sleep(1500);
  const b = start(dbs[1]!);
  await b.waitJoined();
  await waitUntil("A rejoined with B", () => a.lines.filter((l) => l.msg === "joined group").length >= 2 || undefined);
  await sleep(1000);
  a.kill("SIGTERM");
  expect(await a.exited()).toBe(0);
  await producing;
  await waitUntil(`${COUNT} distinct effects`, () => distinct() >= COUNT || undefined, { timeoutMs: 90_000 });
  await sleep(1000);
  b.kill("SIGTERM");
  expect(await b.exited()).toBe(0);

  const seen = new Map<number, number>();
  for (const db of dbs) for (const n of effects(db)) seen.set(n, (seen.get(n) ?? 0) + 1);
  const perInstance = dbs.map((db) => effects(db).length);
  expect(perInstance.every((n) => n > 0)).toBe(true);
  expect([...seen.entries()].filter(([, c]) => c > 1)).toEqual([]);
  expect(seen.size).toBe(COUNT);
}, 180_000);
