// Guarantee 7 with order: "key" when the key lanes are idle at the rebalance: what the old owner
// finished since its last accepted offset commit is shared before the partitions move, though no
// keyed message is still running (a trickle of fast messages leaves the lanes empty most of the time).
import { expect, test } from "bun:test";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { columnIn } from "./support/db.ts";
import { effectsHandler } from "./support/handlers.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "keys-idle-rebalance-in";
let broker: TestBroker;
let dir: string;

withBroker({ [TOPIC]: 2 }, { "keyed.ts": effectsHandler(TOPIC, { options: 'order: "key", concurrency: 4,' }) }, (f) => ({ broker, dir } = f));

const effects = (db: string) => columnIn<number>(db, "SELECT n FROM effects");

test("keyed messages finished just before a rebalance, with idle lanes, are handled once overall", async () => {
  const dbs = ["a", "b"].map((n) => join(dir, `${n}.db`));
  const start = (db: string) => new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), db));
  const a = start(dbs[0]!);
  await a.waitJoined();
  let produced = 0;
  let stop = false;
  // A few fast messages every 50 ms: handled at once, so at the rebalance the lanes are empty
  // while the last ones' offsets are not in Kafka yet.
  const producing = (async () => {
    while (!stop) {
      await broker.produce(TOPIC, Array.from({ length: 4 }, (_, i) => ({ key: `k${(produced + i) % 8}`, value: JSON.stringify({ n: produced + i }) })));
      produced += 4;
      await sleep(50);
    }
  })();
  await sleep(1000);
  const b = start(dbs[1]!);
  await b.waitJoined();
  await a.waitJoined(2);
  await sleep(1000);
  stop = true;
  await producing;
  const distinct = () => new Set(dbs.flatMap((db) => effects(db))).size;
  await waitUntil(`${produced} distinct effects`, () => distinct() >= produced || undefined, { timeoutMs: 20_000 });
  await sleep(500);
  a.kill("SIGTERM");
  b.kill("SIGTERM");
  expect([await a.exited(), await b.exited()]).toEqual([0, 0]);

  const all = dbs.flatMap((db) => effects(db));
  const twice = [...new Set(all.filter((n, i) => all.indexOf(n) !== i))].sort((x, y) => x - y);
  expect({ produced, twice }).toEqual({ produced: new Set(all).size, twice: [] });
}, 60_000);
