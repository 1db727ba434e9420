// A dead letter that can't be written holds up only its partition: the partition waits and
// retries the write, /readyz answers 503 saying why, the offset is not committed past the message
// until the write is acknowledged, and once the dead-letter topic is back nothing is lost or
// doubled. With `deadLetter: false` a failing message blocks its partition and is retried forever.
import { afterAll, beforeAll, expect, test } from "bun:test";
import Database from "libsql";
import { join } from "node:path";
import { PROGRESS_TOPIC } from "../src/kafka/progress-log.ts";
import { startBroker, type TestBroker } from "./support/broker.ts";
import { callsLog, tempDir } from "./support/tmp.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "dl-in";
const DLQ = "dl-in.dlq";
const GROUP = "kexo-dl-dl-in";
const STUCK = "df-in";
const DLQ_BROKER = 3;
let broker: TestBroker;
let dir: string;

const handler = (topic: string, extra: string) => `
import { defineHandler, v } from "kexo";
import { appendFileSync } from "node:fs";

export default defineHandler({
  topics: ["${topic}"],
  schema: v.object({ id: v.string() }),
  ${extra}
  async handle(p, ctx) {
    appendFileSync(process.env.CALLS_LOG!, JSON.stringify({ id: p.id, attempt: ctx.attempt }) + "\\n");
    if (p.id === "stuck") throw new Error("never works");
  },
});
`;

beforeAll(async () => {
  broker = await startBroker({ [TOPIC]: 2, [DLQ]: 1, [STUCK]: 2 }, { brokers: 3 });
  // Everything on broker 1 but the dead-letter topic, whose leader can then be taken down alone.
  for (const [t, n] of [[TOPIC, 2], [STUCK, 2], [PROGRESS_TOPIC, 1]] as const) {
    for (let p = 0; p < n; p++) broker.cluster.setPartitionLeader(t, p, 1);
  }
  broker.cluster.setPartitionLeader(DLQ, 0, DLQ_BROKER);
  broker.cluster.setGroupCoordinator(GROUP, 1);
  broker.cluster.setGroupCoordinator("kexo-stuck-df-in", 1);
  dir = tempDir();
  await Bun.write(join(dir, "handlers", "dl.ts"), handler(TOPIC, ""));
  await Bun.write(join(dir, "handlers", "stuck.ts"), handler(STUCK, "deadLetter: false, retry: { attempts: 2, initialDelayMs: 100, maxDelayMs: 300 },"));
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

test("an unwritable dead-letter topic holds up only its partition, says why, and loses nothing", async () => {
  const db = join(dir, "journal.db");
  const { env, calls } = callsLog(dir);
  const handled = (id: string) => calls().some((c) => c.id === id);
  const w = new WorkerProcess(
    runArgs(broker.brokers, join(dir, "handlers"), db),
    { env },
  );
  const address = await w.httpAddress();
  await w.waitJoined(2);
  const readyz = () => fetch(`http://${address}/readyz`).then(async (r) => ({ status: r.status, body: (await r.json()) as { reasons?: string[] } }));

  broker.cluster.setBrokerDown(DLQ_BROKER);
  await broker.produce(TOPIC, [
    { value: JSON.stringify({ id: "a" }), partition: 0 },
    { value: "not json", partition: 0 },
    { value: JSON.stringify({ id: "b" }), partition: 0 },
  ]);
  const blocked = await waitUntil("/readyz 503 naming the dead-letter write", async () => {
    const r = await readyz();
    return r.status === 503 && r.body.reasons?.some((x) => x.includes(`dead-letter write to ${DLQ} failed`)) ? r : undefined;
  });
  expect(blocked.body.reasons!.find((x) => x.includes(DLQ))).toContain(`${TOPIC}/0@1`);
  // The other partition flows meanwhile.
  await broker.produce(TOPIC, [{ value: JSON.stringify({ id: "other" }), partition: 1 }]);
  await waitUntil("partition 1 handled", () => handled("other") || undefined);
  await waitUntil("3 failed dead-letter writes", () => w.lines.filter((l) => l.msg === "dead-letter write failed; the partition waits and retries").length >= 3 || undefined);
  expect(handled("a")).toBe(true);
  expect(handled("b")).toBe(false);
  // Kafka's offset for partition 0 never passes the message whose dead letter is not written.
  expect(BigInt(await committed(0))).toBeLessThanOrEqual(1n);
  expect((await readyz()).status).toBe(503);

  broker.cluster.setBrokerUp(DLQ_BROKER);
  await waitUntil("b handled after the dead-letter topic came back", () => handled("b") || undefined, { timeoutMs: 60_000 });
  await waitUntil("committed past the dead letter", async () => (await committed(0)) === "3" || undefined, { timeoutMs: 30_000 });
  await waitUntil("/readyz 200 again", async () => (await readyz()).status === 200 || undefined);

  // deadLetter: false: the failing message is tried again and again; its partition waits.
  await broker.produce(STUCK, [
    { value: JSON.stringify({ id: "stuck" }), partition: 0 },
    { value: JSON.stringify({ id: "behind-stuck" }), partition: 0 },
    { value: JSON.stringify({ id: "free" }), partition: 1 },
  ]);
  await waitUntil("5 attempts of the stuck message", () => calls().filter((c) => c.id === "stuck").length >= 5 || undefined, { timeoutMs: 30_000 });
  await waitUntil("the free partition handled", () => handled("free") || undefined);
  const stuck = await readyz();
  expect(stuck.status).toBe(503);
  expect(stuck.body.reasons!.join("\n")).toContain(`${STUCK}/0@0: retrying forever (deadLetter: false)`);
  expect(handled("behind-stuck")).toBe(false);
  expect(calls().filter((c) => c.id === "stuck").map((c) => c.attempt).slice(0, 5)).toEqual([1, 2, 3, 4, 5]);

  await sleep(500);
  w.kill("SIGTERM");
  expect(await w.exited()).toBe(0);
  expect(calls().filter((c) => c.id === "a" || c.id === "b" || c.id === "other").length).toBe(3);
  const dead = await broker.readAll(DLQ, 2, 8000);
  expect(dead.map((d) => [d.value?.toString(), d.headers["kexo-dlq-offset"]?.toString(), d.headers["kexo-dlq-reason"]?.toString()])).toEqual([["not json", "1", "poison"]]);
  const conn = new Database(db, { readonly: true });
  const rows = conn.prepare(`SELECT handler, "offset", reason FROM kexo_dead_letters`).all() as { handler: string; offset: number; reason: string }[];
  conn.close();
  expect(rows.map((r) => [r.handler, r.offset, r.reason])).toEqual([["dl", 1, "poison"]]);
}, 120_000);
