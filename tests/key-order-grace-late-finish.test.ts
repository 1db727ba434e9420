// Guarantee 7 with order: "key" past the rebalance grace: a keyed message still running when the
// grace runs out is aborted through ctx.signal. A handler whose ctx.tx body was under way then and
// still finishes (its tx commits) within the moment kexo waits after the abort is published as
// done before the partitions move, so the new owner, with its own journal, does not run it again.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { columnIn } from "./support/db.ts";
import { callsLog } from "./support/tmp.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "keys-grace-late-in";
let broker: TestBroker;
let dir: string;

// "slow" messages' tx bodies run until their signal aborts, then take 200 ms more and commit their
// effect (well inside the second kexo waits for them, also on a loaded machine). The second one's
// ctx.tx waits for the first's body to let go of the journal, then takes its own 200 ms.
const HANDLER = `
import { defineHandler, v } from "kexo";
import { appendFileSync } from "node:fs";
export default defineHandler({
  topics: ["${TOPIC}"],
  schema: v.object({ n: v.number(), slow: v.boolean() }),
  order: "key",
  concurrency: 4,
  async setup(db) { await db.execute("CREATE TABLE IF NOT EXISTS effects (n INTEGER NOT NULL)"); },
  async handle(p, ctx) {
    appendFileSync(process.env.CALLS_LOG!, JSON.stringify({ id: String(p.n), instance: process.env.INSTANCE }) + "\\n");
    // The tx body is under way when the abort comes (a ctx.tx called after it is refused).
    await ctx.tx(async (db) => {
      if (p.slow) {
        await new Promise<void>((resolve) => {
          if (ctx.signal.aborted) return void setTimeout(resolve, 200);
          const t = setTimeout(resolve, 30_000);
          ctx.signal.addEventListener("abort", () => { clearTimeout(t); setTimeout(resolve, 200); }, { once: true });
        });
      }
      await db.execute({ sql: "INSERT INTO effects (n) VALUES (?)", args: [p.n] });
    });
  },
});
`;

withBroker({ [TOPIC]: 2 }, { "keyed.ts": HANDLER }, (f) => ({ broker, dir } = f));

test("a keyed message that finishes just after the grace's abort is not run again by the new owner", async () => {
  const dbs = ["a", "b"].map((n) => join(dir, `${n}.db`));
  const { env, calls } = callsLog(dir);
  const start = (name: string, db: string) => new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), db), { env: { ...env, INSTANCE: name } });
  const a = start("a", dbs[0]!);
  await a.waitJoined();
  // One slow message per partition, so whichever partition moves to B has one in flight.
  await broker.produce(TOPIC, [0, 1].map((p) => ({ key: `slow${p}`, value: JSON.stringify({ n: p, slow: true }), partition: p })));
  await waitUntil("both slow messages running in A", () => calls().length === 2 || undefined, { timeoutMs: 20_000 });
  const b = start("b", dbs[1]!);
  await b.waitJoined();
  await a.waitJoined(2);
  // Past A's grace (7 s), the abort, the 200 ms wrap-up and the rejoin: B owns one partition now.
  const effects = () => dbs.flatMap((db) => columnIn<number>(db, "SELECT n FROM effects"));
  await waitUntil("both effects committed", () => effects().length >= 2 || undefined, { timeoutMs: 30_000 });
  await sleep(3000);
  a.kill("SIGTERM");
  b.kill("SIGTERM");
  expect([await a.exited(), await b.exited()]).toEqual([0, 0]);
  expect(calls().map((c) => c.id).sort()).toEqual(["0", "1"]);
  expect(effects().sort()).toEqual([0, 1]);
}, 90_000);
