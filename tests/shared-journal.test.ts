// Guarantee 7 with `--db` on a libSQL server shared by the instances (a real sqld): two instances
// consume one stream; one is SIGKILLed in the middle (its group transaction open on the server,
// holding the write lock) and restarted, the other leaves with SIGTERM and comes back. Every
// message's ctx.tx effect is in the shared database exactly once. A third instance given a running
// one's client id is refused (exit 78).
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { effectsHandler } from "./support/handlers.ts";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { countOn, sqldSupported, type TestSqld, withSqld } from "./support/sqld.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { WorkerProcess } from "./support/worker.ts";

const TOPIC = "shared-in";
const COUNT = 3000;
let broker: TestBroker;
let sqld: TestSqld;
let dir: string;

describe.skipIf(!sqldSupported)("shared journal on a libSQL server", () => {
  withBroker({ [TOPIC]: 6 }, { "shared.ts": effectsHandler(TOPIC, { delayMs: "1" }) }, (f) => ({ broker, dir } = f));
  withSqld((s) => (sqld = s));

  test("two instances, one SIGKILLed and restarted, one leaving and rejoining: every effect exactly once", async () => {
    const db = sqld.client();
    const count = () => countOn(db, "SELECT count(*) AS n FROM effects");
    const start = (name: string) =>
      new WorkerProcess(["run", "--brokers", broker.brokers, "--handlers", join(dir, "handlers"), "--db", sqld.url, "--http", "127.0.0.1:0", "--client-id", name]);

    let a = start("a");
    let b = start("b");
    await Promise.all([a.waitJoined(), b.waitJoined()]);
    // A third instance given A's client id is refused while A runs.
    const dup = start("a");
    expect(await dup.exited()).toBe(78);
    expect(dup.raw.join("\n")).toMatch(/another kexo instance \(host .*, pid \d+\) runs with --client-id a on the shared journal/);
    const producing = (async () => {
      for (let sent = 0; sent < COUNT; sent += 300) {
        await broker.produce(TOPIC, Array.from({ length: 300 }, (_, i) => ({ key: String((sent + i) % 40), value: JSON.stringify({ n: sent + i }) })));
        await sleep(200);
      }
    })();

    await waitUntil("600 effects", async () => (await count()) >= 600 || undefined, { timeoutMs: 60_000, intervalMs: 10 });
    a.kill("SIGKILL");
    await a.exited();
    await waitUntil("B goes on alone", async () => (await count()) >= 1200 || undefined, { timeoutMs: 90_000 });
    a = start("a");
    await a.waitJoined();
    expect(a.find((l) => l.msg.includes("did not stop cleanly"))).toBeDefined();
    await waitUntil("1800 effects", async () => (await count()) >= 1800 || undefined, { timeoutMs: 90_000 });
    b.kill("SIGTERM");
    expect(await b.exited()).toBe(0);
    b = start("b");
    await b.waitJoined();
    await producing;
    await waitUntil(`${COUNT} effects`, async () => (await count()) >= COUNT || undefined, { timeoutMs: 120_000 });
    await sleep(1000);
    a.kill("SIGTERM");
    b.kill("SIGTERM");
    expect(await a.exited()).toBe(0);
    expect(await b.exited()).toBe(0);

    const twice = (await db.execute("SELECT n, count(*) AS c FROM effects GROUP BY n HAVING c > 1")).rows;
    const distinct = await countOn(db, "SELECT count(DISTINCT n) AS n FROM effects");
    if (twice.length > 0) console.log(`handled twice: ${twice.map((r) => `${r.n}×${r.c}`).join(", ")}`);
    expect(twice.length).toBe(0);
    expect(distinct).toBe(COUNT);
    // Both instances worked from the shared journal; the CLI reads it there too.
    const inspect = Bun.spawnSync([process.execPath, join(import.meta.dir, "..", "main.ts"), "dlq", "list", "--db", sqld.url, "--json"]);
    expect(inspect.exitCode).toBe(0);
  }, 300_000);
});
