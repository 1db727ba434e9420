// Broker faults are survived by the same process with nothing lost or duplicated: a broker down
// for 10 s mid-stream, 500 ms round trips, injected errors on Fetch, OffsetCommit, JoinGroup and
// Heartbeat, and a kafkajs crash it won't restart from (kexo rebuilds the consumer). At the end
// every message's effect is in the database exactly once, for a handler in partition order and
// one in key order (which finishes out of offset order) running side by side.
import { expect, test } from "bun:test";
import Database from "libsql";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { ApiKey, KafkaErr } from "../src/dev/mock-cluster.ts";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "faults-in";
/** The handlers' groups: either one taking the injected errors will do. */
const GROUPS = ["kexo-faults-faults-in", "kexo-keyed-faults-keyed-in"];
const BROKER = 1;
/** kafkajs treats INVALID_REQUEST on a group call as fatal: CRASH with restart: false. */
const INVALID_REQUEST = 42;
let broker: TestBroker;
let dir: string;

const KEYED = "faults-keyed-in";

const handler = (topic: string, table: string, options = "") => `
import { defineHandler, v } from "kexo";

export default defineHandler({
  topics: ["${topic}"],
  schema: v.object({ id: v.string() }),
  ${options}
  async setup(db) {
    // No primary key: a second run of a message would show up as a second row.
    await db.execute("CREATE TABLE IF NOT EXISTS ${table} (id TEXT NOT NULL)");
  },
  async handle(p, ctx) {
    await new Promise((r) => setTimeout(r, 2));
    await ctx.tx((db) => db.execute({ sql: "INSERT INTO ${table} (id) VALUES (?)", args: [p.id] }));
  },
});
`;

withBroker(
  { [TOPIC]: 4, [KEYED]: 4 },
  { "faults.ts": handler(TOPIC, "effects"), "keyed.ts": handler(KEYED, "keyed_effects", 'order: "key", concurrency: 8,') },
  (f) => ({ broker, dir } = f),
);

function effects(db: string, table = "effects"): { rows: number; ids: number } {
  if (!existsSync(db)) return { rows: 0, ids: 0 };
  const conn = new Database(db, { readonly: true });
  try {
    return conn.prepare(`SELECT count(*) AS rows, count(DISTINCT id) AS ids FROM ${table}`).get() as { rows: number; ids: number };
  } catch {
    return { rows: 0, ids: 0 };
  } finally {
    conn.close();
  }
}

test("broker faults: same process, every message's effect exactly once", async () => {
  const db = join(dir, "journal.db");
  const w = new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), db));
  await w.waitJoined();
  let sent = 0;
  const produce = async (phase: string, n: number) => {
    for (const topic of [TOPIC, KEYED]) {
      await broker.produce(topic, Array.from({ length: n }, (_, i) => ({ key: `k${i % 13}`, value: JSON.stringify({ id: `${phase}-${i}` }) })));
    }
    sent += n;
  };
  const allDone = (phase: string, timeoutMs = 60_000) =>
    waitUntil(`${phase}: ${sent} effects`, () => {
      if (w.proc.exitCode !== null) throw new Error(`worker exited with ${w.proc.exitCode}: ${w.raw.slice(-5).join("\n")}`);
      return (effects(db).ids >= sent && effects(db, "keyed_effects").ids >= sent) || undefined;
    }, { timeoutMs });
  const phases: Record<string, number> = {};
  const timed = async (phase: string, fn: () => Promise<void>) => {
    const t = Date.now();
    await fn();
    phases[phase] = Date.now() - t;
  };

  await timed("baseline", async () => {
    await produce("baseline", 200);
    await allDone("baseline");
  });

  await timed("broker down 10 s", async () => {
    await produce("down", 3000);
    await waitUntil("mid-stream", () => effects(db).ids >= sent - 2500 || undefined);
    broker.cluster.setBrokerDown(BROKER);
    await sleep(10_000);
    expect(effects(db).ids).toBeLessThan(sent);
    broker.cluster.setBrokerUp(BROKER);
    await allDone("broker down", 90_000);
  });

  await timed("slow broker", async () => {
    broker.cluster.setRtt(BROKER, 500);
    await produce("slow", 300);
    await allDone("slow broker");
    broker.cluster.setRtt(BROKER, 0);
  });

  await timed("fetch errors", async () => {
    broker.cluster.pushRequestErrors(ApiKey.Fetch, Array(6).fill(KafkaErr.NOT_LEADER_FOR_PARTITION));
    await produce("fetch", 300);
    await allDone("fetch errors");
  });

  await timed("offset-commit errors", async () => {
    broker.cluster.pushRequestErrors(ApiKey.OffsetCommit, Array(6).fill(KafkaErr.REQUEST_TIMED_OUT));
    await produce("commit", 300);
    await allDone("offset-commit errors");
  });

  // Injected errors are cluster-wide: kexo's progress-log consumer may take some of them too, so
  // they are pushed again until a handler's consumer shows it got one.
  const inject = async (what: string, seen: () => boolean, push: () => void) => {
    await waitUntil(what, async () => {
      if (seen()) return true;
      push();
      await sleep(2500);
      return seen() || undefined;
    }, { timeoutMs: 60_000 });
    broker.cluster.clearRequestErrors(ApiKey.Heartbeat);
    broker.cluster.clearRequestErrors(ApiKey.JoinGroup);
  };

  await timed("heartbeat and join errors", async () => {
    const rejoins = () => w.lines.filter((l) => l.msg === "The group is rebalancing, re-joining" && GROUPS.includes(l.groupId as string)).length;
    const before = rejoins();
    await inject("a heartbeat error for the handler's group", () => rejoins() > before, () => {
      broker.cluster.pushRequestErrors(ApiKey.JoinGroup, [KafkaErr.COORDINATOR_NOT_AVAILABLE, KafkaErr.COORDINATOR_NOT_AVAILABLE]);
      broker.cluster.pushRequestErrors(ApiKey.Heartbeat, [KafkaErr.REBALANCE_IN_PROGRESS, KafkaErr.REBALANCE_IN_PROGRESS]);
    });
    await produce("rejoin", 300);
    await allDone("heartbeat and join errors");
  });

  await timed("kafkajs crash without restart", async () => {
    const rebuilt = () => w.lines.some((l) => l.msg === "consumer crashed and kafkajs will not restart it; rebuilding the consumer");
    const joins = w.lines.filter((l) => l.msg === "joined group").length;
    await inject("a fatal JoinGroup error for the handler's group", rebuilt, () => {
      broker.cluster.pushRequestErrors(ApiKey.JoinGroup, [INVALID_REQUEST, INVALID_REQUEST]);
      broker.cluster.pushRequestErrors(ApiKey.Heartbeat, [KafkaErr.REBALANCE_IN_PROGRESS, KafkaErr.REBALANCE_IN_PROGRESS]);
    });
    await w.waitJoined(joins + 1, 60_000);
    await produce("crash", 300);
    await allDone("crash");
  });

  await sleep(500);
  const final = effects(db);
  const keyed = effects(db, "keyed_effects");
  console.log(JSON.stringify({ phasesMs: phases, sent, rows: final.rows, ids: final.ids, keyed: [keyed.rows, keyed.ids] }));
  expect(w.proc.exitCode).toBeNull();
  expect(w.lines.filter((l) => l.msg === "starting").length).toBe(1);
  expect({ rows: final.rows, ids: final.ids }).toEqual({ rows: sent, ids: sent });
  expect({ rows: keyed.rows, ids: keyed.ids }).toEqual({ rows: sent, ids: sent });
  w.kill("SIGTERM");
  expect(await w.exited()).toBe(0);
}, 240_000);
