// Guarantee 3: a message redelivered after completion (same group, offsets rewound) is not handled
// again and its recorded result is returned; a re-published copy of a completed event (same
// business key, another offset) is skipped too.
import { expect, test } from "bun:test";
import Database from "libsql";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "dedup-in";
const GROUP = `kexo-dedup-${TOPIC}`;
let broker: TestBroker;
let dir: string;

const HANDLER = `
import { defineHandler, v } from "kexo";
import { appendFileSync } from "node:fs";

export default defineHandler({
  topics: ["${TOPIC}"],
  schema: v.object({ eventId: v.string(), n: v.number() }),
  key: (e) => e.eventId,
  async setup(db) {
    await db.execute("CREATE TABLE IF NOT EXISTS effects (id TEXT NOT NULL)");
  },
  async handle(e, ctx) {
    appendFileSync(process.env.HANDLED_LOG!, e.eventId + "\\n");
    await ctx.tx((db) => db.execute({ sql: "INSERT INTO effects (id) VALUES (?)", args: [e.eventId] }));
    return { eventId: e.eventId, doubled: e.n * 2 };
  },
});
`;

withBroker({ [TOPIC]: 1 }, { "dedup.ts": HANDLER }, (f) => ({ broker, dir } = f));

/** Commits offset 0 for the group, as an operator rewinding a consumer group would. */
async function rewindGroup(): Promise<void> {
  const consumer = broker.kafka.consumer({ groupId: GROUP, sessionTimeout: 6000, heartbeatInterval: 500 });
  await consumer.connect();
  await consumer.subscribe({ topics: [TOPIC] });
  const joined = new Promise<void>((resolve) => consumer.on(consumer.events.GROUP_JOIN, () => resolve()));
  await consumer.run({ autoCommit: false, eachBatch: async () => {} });
  await joined;
  await consumer.commitOffsets([{ topic: TOPIC, partition: 0, offset: "0" }]);
  await consumer.disconnect();
}

test("redelivered and re-published completed messages are not handled again; their results are returned", async () => {
  const db = join(dir, "journal.db");
  const handledLog = join(dir, "handled.log");
  writeFileSync(handledLog, "");
  const args = runArgs(broker.brokers, join(dir, "handlers"), db, "--log-level", "debug");
  const env = { HANDLED_LOG: handledLog };
  const handled = () => readFileSync(handledLog, "utf8").split("\n").filter(Boolean);

  await broker.produce(TOPIC, Array.from({ length: 10 }, (_, n) => ({ key: `e-${n}`, value: JSON.stringify({ eventId: `e-${n}`, n }) })));
  const first = new WorkerProcess(args, { env });
  await first.waitJoined();
  await waitUntil("10 handled", () => handled().length >= 10 || undefined);
  first.kill("SIGTERM");
  expect(await first.exited()).toBe(0);

  await rewindGroup();
  // The same event again, at a new offset, with the same business key.
  await broker.produce(TOPIC, [{ key: "e-3", value: JSON.stringify({ eventId: "e-3", n: 3 }) }]);

  const second = new WorkerProcess(args, { env });
  await second.waitJoined();
  const dedups = () => second.lines.filter((l) => l.msg === "message deduplicated");
  await waitUntil("11 deduplicated", () => dedups().length >= 11 || undefined).catch((err) => {
    console.error(second.raw.filter((l) => !l.includes("kafkajs")).slice(-30).join("\n"));
    throw err;
  });
  second.kill("SIGTERM");
  expect(await second.exited()).toBe(0);

  expect(handled().sort()).toEqual(Array.from({ length: 10 }, (_, n) => `e-${n}`).sort());
  const results = dedups().map((l) => [l.id, l.result, l.offset]);
  for (let n = 0; n < 10; n++) expect(results).toContainEqual([`e-${n}`, { eventId: `e-${n}`, doubled: n * 2 }, String(n)]);
  expect(results).toContainEqual(["e-3", { eventId: "e-3", doubled: 6 }, "10"]);

  const conn = new Database(db, { readonly: true });
  const rows = conn.prepare("SELECT id, count(*) AS c FROM effects GROUP BY id").all() as { id: string; c: number }[];
  conn.close();
  expect(rows.length).toBe(10);
  expect(rows.every((r) => r.c === 1)).toBe(true);
}, 120_000);
