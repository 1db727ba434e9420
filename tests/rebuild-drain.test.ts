// A SIGTERM while kexo rebuilds a consumer that kafkajs gave up on (a fatal SyncGroup error: the
// group's authorization withdrawn, say) drains and exits 0. The rebuilt consumer is slow to
// connect here (1 s round trips make its connect and subscribe take seconds, a moment that is a
// few milliseconds long on a quiet broker): until it runs it has no consumer group, and kafkajs's
// pause() throws then. The drain's first step paused every consumer, so the stop rejected at once
// and kexo exited 75, logging that the shutdown timeout had run out, with nothing in flight and
// no timeout passed.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { ApiKey, KafkaErr } from "../src/dev/mock-cluster.ts";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { countIn } from "./support/db.ts";
import { effectsHandler } from "./support/handlers.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "rebuild-drain-in";
/** kafkajs treats GROUP_AUTHORIZATION_FAILED on a group call as fatal: CRASH with restart: false. */
const GROUP_AUTHORIZATION_FAILED = 30;
const REBUILDING = "consumer crashed and kafkajs will not restart it; rebuilding the consumer";
let broker: TestBroker;
let dir: string;

withBroker({ [TOPIC]: 4 }, { "keyed.ts": effectsHandler(TOPIC, { options: 'order: "key", concurrency: 4,' }) }, (f) => ({ broker, dir } = f));

test("SIGTERM while a crashed consumer is rebuilt: drained, exit 0", async () => {
  const db = join(dir, "kexo.db");
  // Debug: the line saying the SIGTERM found the consumer not running shows the window was hit.
  const w = new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), db, "--shutdown-timeout", "5000"), { env: { KEXO_LOG_LEVEL: "debug" } });
  await w.waitJoined();
  await broker.produce(TOPIC, Array.from({ length: 100 }, (_, n) => ({ key: `k${n % 8}`, value: JSON.stringify({ n }) })));
  await waitUntil("100 effects", () => countIn(db, "SELECT count(*) AS n FROM effects") >= 100 || undefined, { timeoutMs: 20_000 });

  // A rejoin (heartbeat refused) whose SyncGroup fails: kafkajs crashes without restarting, and
  // kexo rebuilds the consumer 200 ms later. The pushed errors may go to the progress log's
  // consumer instead (its own group on the same broker), so they are pushed until the handler's
  // consumer crashed; from then on, round trips take 1 s, until the SIGTERM is being handled.
  let rebuildingAt = 0;
  w.onLog((l) => l.msg === REBUILDING, () => {
    rebuildingAt = Date.now();
    broker.cluster.clearRequestErrors(ApiKey.SyncGroup);
    broker.cluster.clearRequestErrors(ApiKey.Heartbeat);
    broker.cluster.setRtt(1, 1000);
  });
  try {
    await waitUntil("the handler's consumer crashed", async () => {
      if (rebuildingAt) return true;
      broker.cluster.pushRequestErrors(ApiKey.SyncGroup, [GROUP_AUTHORIZATION_FAILED]);
      broker.cluster.pushRequestErrors(ApiKey.Heartbeat, [KafkaErr.REBALANCE_IN_PROGRESS]);
      for (let i = 0; i < 25 && !rebuildingAt; i++) await sleep(100);
      return rebuildingAt || undefined;
    }, { timeoutMs: 30_000 });
    // The rebuild waited its 200 ms and is connecting: SIGTERM.
    await sleep(rebuildingAt + 700 - Date.now());
    w.onLog((l) => l.msg === "signal received; draining", () => broker.cluster.setRtt(1, 0));
    const from = w.lines.length;
    const signalled = Date.now();
    w.kill("SIGTERM");
    const code = await w.exited();
    const stopMs = Date.now() - signalled;
    const after = w.lines.slice(from).map((l) => l.msg);
    expect(w.lines.filter((l) => l.msg === REBUILDING).length).toBe(1);
    expect({ code, after: after.filter((m) => /timeout ran out|stopping failed/.test(m)) }).toEqual({ code: 0, after: [] });
    expect(after).toContain("drained; exiting");
    expect(after).toContain("consumer not running; nothing to pause");
    expect(stopMs).toBeLessThan(5000);
  } finally {
    broker.cluster.setRtt(1, 0);
    broker.cluster.clearRequestErrors(ApiKey.SyncGroup);
    broker.cluster.clearRequestErrors(ApiKey.Heartbeat);
    if (w.proc.exitCode === null) w.kill("SIGKILL");
  }
}, 60_000);
