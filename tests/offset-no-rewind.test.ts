// Guarantee 7: an instance whose own journal is behind the group's committed offset (another
// instance handled the partition since) never moves Kafka's committed offset back, so a later
// start does not handle again what the other instance handled.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { join } from "node:path";
import { columnIn } from "./support/db.ts";
import { effectsHandler } from "./support/handlers.ts";
import { startBroker, type TestBroker } from "./support/broker.ts";
import { tempDir } from "./support/tmp.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "no-rewind-in";
let broker: TestBroker;
let dir: string;

beforeAll(async () => {
  broker = await startBroker({ [TOPIC]: 1 });
  dir = tempDir();
  await Bun.write(
    join(dir, "handlers", "effects.ts"),
    effectsHandler(TOPIC),
  );
});

afterAll(async () => {
  await broker?.close();
});

const effects = (db: string) => columnIn<number>(db, "SELECT n FROM effects ORDER BY n");
const produce = (from: number) => broker.produce(TOPIC, Array.from({ length: 10 }, (_, i) => ({ value: JSON.stringify({ n: from + i }) })));

test("instances taking turns on a partition, each with its own journal: every message handled once overall", async () => {
  const [a, b] = ["a", "b"].map((n) => join(dir, `${n}.db`)) as [string, string];
  const run = async (db: string, until: () => boolean, settleMs = 0) => {
    const w = new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), db));
    await w.waitJoined();
    await waitUntil("effects", () => until() || undefined, { timeoutMs: 30_000 });
    await sleep(settleMs);
    w.kill("SIGTERM");
    expect(await w.exited()).toBe(0);
  };

  await produce(0);
  await run(a, () => effects(a).length >= 10); // A: 0..9, commits 10
  await produce(10);
  await run(b, () => effects(b).length >= 10); // B: 10..19, commits 20; A's journal still says 10
  await run(a, () => true, 2000); // A again: nothing new to do
  await run(a, () => true, 3000); // and once more: it must start from 20, not from its own 10

  expect(effects(a)).toEqual(Array.from({ length: 10 }, (_, i) => i));
  expect(effects(b)).toEqual(Array.from({ length: 10 }, (_, i) => 10 + i));
}, 120_000);
