// An unwritable dead-letter topic with order: "key": a poison message whose dead letter can't be
// written holds up its key (the messages after it on that key wait, as behind a retry), not the
// other keys, not the other partition, and not a running slot (two such keys and concurrency 2).
// /readyz answers 503 saying why, the committed offset stays at or below the lowest message whose
// dead letter is not written, and once the topic is back each dead letter is written once and
// the waiting keys go on in order, each message handled exactly once. A rebalance while such a
// key waits for the write does not leave /readyz at 503 once the next epoch wrote the dead letter.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { join } from "node:path";
import { ApiKey, KafkaErr } from "../src/dev/mock-cluster.ts";
import { PROGRESS_TOPIC } from "../src/kafka/progress-log.ts";
import { startBroker, type TestBroker } from "./support/broker.ts";
import { columnIn } from "./support/db.ts";
import { callsLog, tempDir } from "./support/tmp.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "dlk-in";
const DLQ = "dlk-in.dlq";
const GROUP = "kexo-dlk-dlk-in";
const DLQ_BROKER = 3;
const RB = "dlk-rb";
const RB_GROUP = "kexo-dlr-dlk-rb";
let broker: TestBroker;
let dir: string;

const handler = (topic: string) => `
import { defineHandler, v } from "kexo";
import { appendFileSync } from "node:fs";

export default defineHandler({
  topics: ["${topic}"],
  order: "key",
  concurrency: 2,
  schema: v.object({ id: v.string() }),
  async setup(db) {
    await db.execute("CREATE TABLE IF NOT EXISTS seen (id TEXT NOT NULL)");
  },
  async handle(p, ctx) {
    appendFileSync(process.env.CALLS_LOG!, JSON.stringify({ id: p.id, k: ctx.message.key?.toString() ?? null, t: Date.now() }) + "\\n");
    await ctx.tx((db) => db.execute({ sql: "INSERT INTO seen (id) VALUES (?)", args: [p.id] }));
  },
});
`;

beforeAll(async () => {
  broker = await startBroker({ [TOPIC]: 2, [DLQ]: 1, [RB]: 1, [`${RB}.dlq`]: 1 }, { brokers: 3 });
  // Everything on broker 1 but the dead-letter topics, whose leader can then be taken down alone.
  for (const [t, n] of [[TOPIC, 2], [RB, 1], [PROGRESS_TOPIC, 1]] as const) {
    for (let p = 0; p < n; p++) broker.cluster.setPartitionLeader(t, p, 1);
  }
  broker.cluster.setPartitionLeader(DLQ, 0, DLQ_BROKER);
  broker.cluster.setPartitionLeader(`${RB}.dlq`, 0, DLQ_BROKER);
  broker.cluster.setGroupCoordinator(GROUP, 1);
  broker.cluster.setGroupCoordinator(RB_GROUP, 1);
  dir = tempDir();
  await Bun.write(join(dir, "handlers", "dlk.ts"), handler(TOPIC));
  await Bun.write(join(dir, "rb-handlers", "dlr.ts"), handler(RB));
});

afterAll(async () => {
  await broker?.close();
});

async function committed(partition: number): Promise<string> {
  const admin = broker.kafka.admin();
  await admin.connect();
  try {
    const [t] = await admin.fetchOffsets({ groupId: GROUP, topics: [TOPIC] });
    return t!.partitions.find((p) => p.partition === partition)!.offset;
  } finally {
    await admin.disconnect();
  }
}

/** `p`, or a failure saying what did not happen, with the worker's last lines. */
async function within<T>(p: Promise<T>, ms: number, what: string, w: WorkerProcess): Promise<T> {
  const late = Symbol();
  const r = await Promise.race([p, sleep(ms).then(() => late)]);
  if (r === late) throw new Error(`timed out waiting for ${what}: ${w.raw.filter((l) => !l.includes('"debug"')).slice(-10).map((l) => l.slice(0, 300)).join("\n")}`);
  return r as T;
}

type Call = { id: string; k: string | null; t: number };
const good = (key: string | null, id: string, partition = 0) => ({ key, value: JSON.stringify({ id }), partition });

test("key order: an unwritable dead-letter topic holds up only the poison message's key, says why, and loses nothing", async () => {
  const db = join(dir, "journal.db");
  const { env, calls } = callsLog<Call>(dir);
  const handled = (id: string) => calls(id).length > 0;
  const w = new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), db), { env });
  const address = await w.httpAddress();
  await w.waitJoined();
  const readyz = () => fetch(`http://${address}/readyz`).then(async (r) => ({ status: r.status, body: (await r.json()) as { reasons?: string[] } }));

  broker.cluster.setBrokerDown(DLQ_BROKER);
  // Offsets: 0 a0, 1 poison(A), 2 b0, 3 poison(null key), 4 a1, 5 b1, 6 n1 (null key), 7 b2, 8 a2.
  await broker.produce(TOPIC, [
    good("A", "a0"), { key: "A", value: "not json", partition: 0 }, good("B", "b0"), { key: null, value: null, partition: 0 },
    good("A", "a1"), good("B", "b1"), good(null, "n1"), good("B", "b2"), good("A", "a2"),
  ]);
  await broker.produce(TOPIC, [good("D", "d0", 1)]);
  const blocked = await waitUntil("/readyz 503 naming the dead-letter write", async () => {
    const r = await readyz();
    return r.status === 503 && r.body.reasons?.some((x) => x.includes(`dead-letter write to ${DLQ} failed`)) ? r : undefined;
  });
  expect(blocked.body.reasons!.join("\n")).toMatch(new RegExp(`${TOPIC}/0@[13]`));
  // Both poison keys wait off their slots: the other keys of the partition and the other partition flow.
  await waitUntil("key B and partition 1 handled", () => ["b0", "b1", "b2", "d0"].every(handled) || undefined);
  await waitUntil("3 failed dead-letter writes", () => w.lines.filter((l) => l.msg === "dead-letter write failed; the partition waits and retries").length >= 3 || undefined);
  const more = [...Array(20).keys()].map((i) => good("E", `e${i}`));
  await broker.produce(TOPIC, more);
  await waitUntil("key E handled while both waits go on", () => handled("e19") || undefined);
  expect(["a0", "b0", "b1", "b2", "d0"].every(handled)).toBe(true);
  // The keys of the poison messages wait.
  expect(["a1", "a2", "n1"].filter(handled)).toEqual([]);
  expect(BigInt(await committed(0))).toBeLessThanOrEqual(1n);
  expect((await readyz()).status).toBe(503);

  broker.cluster.setBrokerUp(DLQ_BROKER);
  await waitUntil("keys A and null handled after the dead-letter topic came back", () => ["a1", "a2", "n1"].every(handled) || undefined, { timeoutMs: 30_000 });
  await waitUntil("committed past everything", async () => (await committed(0)) === String(9 + more.length) || undefined, { timeoutMs: 30_000 });
  await waitUntil("/readyz 200 again", async () => (await readyz()).status === 200 || undefined);

  await sleep(500);
  w.kill("SIGTERM");
  expect(await w.exited()).toBe(0);
  const ids = ["a0", "a1", "a2", "b0", "b1", "b2", "n1", "d0", ...more.map((m) => JSON.parse(m.value).id as string)];
  expect(calls().map((c) => c.id).sort()).toEqual([...ids].sort());
  expect(columnIn<string>(db, "SELECT id FROM seen ORDER BY id")).toEqual([...ids].sort());
  const order = (k: string | null) => calls().filter((c) => c.k === k).map((c) => c.id);
  expect(order("A")).toEqual(["a0", "a1", "a2"]);
  expect(order("B")).toEqual(["b0", "b1", "b2"]);
  const dead = await broker.readAll(DLQ, 3, 4000);
  expect(dead.map((d) => [d.key?.toString() ?? null, d.headers["kexo-dlq-offset"]?.toString(), d.headers["kexo-dlq-reason"]?.toString()]).sort((x, y) => Number(x[1]) - Number(y[1])))
    .toEqual([["A", "1", "poison"], [null, "3", "poison"]]);
  expect(columnIn<string>(db, `SELECT "offset" || ':' || reason FROM kexo_dead_letters ORDER BY "offset"`)).toEqual(["1:poison", "3:poison"]);
}, 90_000);

test("key order: a rebalance while a key waits for its dead-letter write leaves no stale /readyz reason behind", async () => {
  const { env, calls } = callsLog<Call>(dir);
  const w = new WorkerProcess(runArgs(broker.brokers, join(dir, "rb-handlers"), join(dir, "rb.db")), { env });
  const address = await w.httpAddress();
  await w.waitJoined();
  const readyz = () => fetch(`http://${address}/readyz`).then(async (r) => ({ status: r.status, body: (await r.json()) as { reasons?: string[] } }));

  broker.cluster.setBrokerDown(DLQ_BROKER);
  await broker.produce(RB, [{ key: "A", value: "not json", partition: 0 }, good("A", "ra1", 0), good("C", "rc0", 0)]);
  await waitUntil("the other key handled", () => calls("rc0").length > 0 || undefined);
  // After 6 failed writes the next one is 3.2-6.4 s away: a rejoin asked for right after the 6th
  // finds the key waiting for it, not writing. The dead-letter topic comes back as soon as the
  // rejoin begins, so that the next epoch writes the dead letter at its first try.
  const failed = () => w.lines.filter((l) => l.msg === "dead-letter write failed; the partition waits and retries").length;
  await waitUntil("5 failed dead-letter writes", () => failed() >= 5 || undefined, { timeoutMs: 40_000 });
  expect((await readyz()).body.reasons?.join("\n")).toContain(`dead-letter write to ${RB}.dlq failed`);
  const sixth = new Promise<void>((resolve) => w.onLog((l) => l.msg === "dead-letter write failed; the partition waits and retries" && l.tries === 6, () => resolve()));
  await within(sixth, 20_000, "the 6th failed write", w);
  const joined = async () => ((await fetch(`http://${address}/status`).then((r) => r.json())) as { handlers: { joined: boolean }[] }).handlers[0]!.joined;
  // Pushed until the handler's consumer got one (the progress log's consumer may take it); kafkajs's
  // "re-joining" line may be throttled as similar to the progress consumer's, so /status says.
  let rejoinBegan = false;
  for (let i = 0; i < 20 && !rejoinBegan; i++) {
    broker.cluster.pushRequestErrors(ApiKey.Heartbeat, [KafkaErr.REBALANCE_IN_PROGRESS]);
    for (let j = 0; j < 15 && !rejoinBegan; j++) {
      rejoinBegan = !(await joined());
      if (!rejoinBegan) await sleep(10);
    }
  }
  broker.cluster.setBrokerUp(DLQ_BROKER);
  broker.cluster.clearRequestErrors(ApiKey.Heartbeat);
  expect(rejoinBegan).toBe(true);
  await w.waitJoined(2);
  await waitUntil("the key behind the poison handled", () => calls("ra1").length > 0 || undefined, { timeoutMs: 30_000 });
  expect(failed()).toBe(6);
  const dead = await broker.readAll(`${RB}.dlq`, 2, 4000);
  expect(dead.map((d) => d.key?.toString())).toEqual(["A"]);
  await waitUntil("/readyz 200", async () => (await readyz()).status === 200 || undefined, { timeoutMs: 10_000 }).catch(async (err) => {
    throw new Error(`${(err as Error).message}: ${JSON.stringify((await readyz()).body)}`);
  });
  w.kill("SIGTERM");
  expect(await w.exited()).toBe(0);
}, 90_000);
