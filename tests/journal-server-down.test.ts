// A journal on a libSQL server that dies mid-stream (SIGKILL, its open transactions gone) and
// comes back: the worker stops with exit 75 (temporary failure, nothing of the lost group
// acknowledged), a start while it is down retries for a while, then says so with exit 69; a start
// that is retrying when the server comes back goes on and finishes the stream with every ctx.tx
// effect exactly once.
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { effectsHandler } from "./support/handlers.ts";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { countOn, sqldSupported, type TestSqld, withSqld } from "./support/sqld.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { WorkerProcess } from "./support/worker.ts";

const TOPIC = "server-down-in";
const COUNT = 3000;
let broker: TestBroker;
let sqld: TestSqld;
let dir: string;

describe.skipIf(!sqldSupported)("journal server down and back", () => {
  withBroker({ [TOPIC]: 4 }, { "effects.ts": effectsHandler(TOPIC, { delayMs: "1" }) }, (f) => ({ broker, dir } = f));
  withSqld((s) => (sqld = s));

  test("SIGKILLed server: exit 75, exit 69 while down, then exactly once after it is back", async () => {
    const start = () =>
      new WorkerProcess(["run", "--brokers", broker.brokers, "--handlers", join(dir, "handlers"), "--db", sqld.url, "--http", "127.0.0.1:0", "--client-id", "solo"]);
    const count = async () => countOn(sqld.client(), "SELECT count(*) AS n FROM effects");
    let w = start();
    await w.waitJoined();
    const producing = (async () => {
      for (let sent = 0; sent < COUNT; sent += 300) {
        await broker.produce(TOPIC, Array.from({ length: 300 }, (_, i) => ({ key: String(i % 16), value: JSON.stringify({ n: sent + i }) })));
        await sleep(150);
      }
    })();
    await waitUntil("500 effects", async () => (await count()) >= 500 || undefined, { timeoutMs: 60_000, intervalMs: 10 });
    await sqld.kill();
    expect(await w.exited()).toBe(75);
    const said = w.find((l) => l.msg === "stopping after a fatal error");
    expect(JSON.stringify(said)).toMatch(/the libSQL server http:\/\/127\.0\.0\.1:\d+ did not answer as expected \((ECONNRESET|ECONNREFUSED|Unable to connect)[^()]*\): check that it runs/);

    // Down: the start asks again for a while (bounded retries), then a supervisor's restart is
    // told what is wrong, with the exit code for "unavailable".
    const startedAt = Date.now();
    const early = start();
    expect(await early.exited()).toBe(69);
    expect(Date.now() - startedAt).toBeGreaterThan(10_000);
    expect(early.lines.filter((l) => l.msg === "journal server unreachable at start; retrying").length).toBeGreaterThanOrEqual(5);
    expect(early.raw.join("\n")).toMatch(/libSQL server.*127\.0\.0\.1/s);

    // A start while it is down goes on once it is back (a sidecar started beside its server).
    w = start();
    await w.waitForLog("a retry", (l) => l.msg === "journal server unreachable at start; retrying");
    await sqld.restart();
    const before = await count();
    expect(before).toBeGreaterThanOrEqual(500);
    await w.waitJoined();
    await producing;
    await waitUntil(`${COUNT} effects`, async () => (await count()) >= COUNT || undefined, { timeoutMs: 120_000 });
    await sleep(1000);
    w.kill("SIGTERM");
    expect(await w.exited()).toBe(0);

    const db = sqld.client();
    const twice = (await db.execute("SELECT n, count(*) AS c FROM effects GROUP BY n HAVING c > 1")).rows;
    if (twice.length > 0) console.log(`handled twice: ${twice.slice(0, 20).map((r) => `${r.n}×${r.c}`).join(", ")}`);
    expect(twice.length).toBe(0);
    expect(await countOn(db, "SELECT count(DISTINCT n) AS n FROM effects")).toBe(COUNT);
  }, 300_000);
});
