// Guarantee 7 when a member is dropped from a rebalance: a message that ignores ctx.signal holds
// kafkajs's rejoin (it waits for every running batch) past the rebalance timeout, and the
// coordinator completes the rebalance without the member, handing its partitions out from
// Kafka's committed offsets. On a cluster of several brokers the member's other partitions are
// fetched beside the held batch. What it finished of them in the rebalance, and in the moment
// before (offsets are committed on a timer; the development broker refuses commits while the
// group rebalances), was shared only at the rejoin, too late: their next owner, with a journal of
// its own, ran them again. Now no batch starts a message once the member knows of the rebalance,
// and the progress is shared when the grace runs out. Each message takes effect once overall.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { columnIn, countIn } from "./support/db.ts";
import { callsLog } from "./support/tmp.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "drop-progress";
let broker: TestBroker;
let dir: string;

// `slow` waits for its signal, then carries on 6 s (past the 10 s rebalance timeout) and returns
// without a ctx.tx; every other message takes effect at once.
const HANDLER = `
import { defineHandler, v } from "kexo";
export default defineHandler({
  topics: ["${TOPIC}"],
  schema: v.object({ k: v.string(), n: v.number() }),
  async setup(db) { await db.execute("CREATE TABLE IF NOT EXISTS effects (k TEXT, n INTEGER)"); },
  async handle(p, ctx) {
    if (p.k === "slow") {
      if (ctx.signal.aborted) return;
      await new Promise((r) => ctx.signal.addEventListener("abort", r, { once: true }));
      await new Promise((r) => setTimeout(r, 6000));
      return;
    }
    await ctx.tx((db) => db.execute({ sql: "INSERT INTO effects (k, n) VALUES (?, ?)", args: [p.k, p.n] }));
  },
});
`;

withBroker({ [TOPIC]: 2, [`${TOPIC}.dlq`]: 1 }, { "slow.ts": HANDLER }, (f) => ({ broker, dir } = f), { brokers: 2 });

test("a member dropped from a rebalance (a batch held its rejoin): what it finished is not run again by the next owner", async () => {
  // Each partition on its own broker: partition 1 is fetched beside slow's batch.
  broker.cluster.setPartitionLeader(TOPIC, 0, 1);
  broker.cluster.setPartitionLeader(TOPIC, 1, 2);
  const dbs = ["a.db", "b.db"].map((d) => join(dir, d));
  const start = (db: string) => new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), db), { env: callsLog(dir).env });
  const effects = () => dbs.flatMap((db) => columnIn<number>(db, "SELECT n FROM effects WHERE k = 'x'"));
  const a = start(dbs[0]!);
  let b: WorkerProcess | undefined;
  let n = 0;
  let producing = true;
  try {
    await a.waitJoined();
    await broker.produce(TOPIC, [{ key: "slow", value: JSON.stringify({ k: "slow", n: 0 }), partition: 0 }]);
    // Partition 1 gets a message every 50 ms from now until after the rebalance.
    const producer = (async () => {
      while (producing) {
        n++;
        await broker.produce(TOPIC, [{ key: `x${n}`, value: JSON.stringify({ k: "x", n }), partition: 1 }]);
        await sleep(50);
      }
    })();
    await waitUntil("A handles partition 1", () => effects().length >= 20 || undefined, { timeoutMs: 20_000 });
    b = start(dbs[1]!);
    await b.waitJoined();
    await sleep(3000);
    producing = false;
    await producer;
    await waitUntil("every message's effect", () => new Set(effects()).size >= n || undefined, { timeoutMs: 60_000 });
    await sleep(2000);
    a.kill("SIGTERM");
    b.kill("SIGTERM");
    await Promise.all([a.exited(), b.exited()]);
    const all = effects();
    const twice = [...new Set(all.filter((x, i) => all.indexOf(x) !== i))].sort((p, q) => p - q);
    console.log(`${n} messages; effects in A ${countIn(dbs[0]!, "SELECT count(*) AS n FROM effects")}, in B ${countIn(dbs[1]!, "SELECT count(*) AS n FROM effects")}; twice: ${twice.join(",") || "none"}`);
    expect(twice).toEqual([]);
    expect(new Set(all).size).toBe(n);
  } finally {
    producing = false;
    a.kill("SIGKILL");
    b?.kill("SIGKILL");
  }
}, 120_000);
