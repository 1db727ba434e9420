// order: "key" after SIGKILL: the partition's progress is its lowest unfinished offset, and work
// completed above it (other keys overtook a slow one) is never run again after the restart.
import { expect, test } from "bun:test";
import Database from "libsql";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "keys-crash-in";
const OTHERS = 200;
let broker: TestBroker;
let dir: string;

const HANDLER = `
import { defineHandler } from "kexo";
import { appendFileSync } from "node:fs";

export default defineHandler({
  topics: ["${TOPIC}"],
  order: "key",
  concurrency: 4,
  async handle(value, ctx) {
    const { k, seq } = JSON.parse(String(value));
    appendFileSync(process.env.LOG!, k + ":" + seq + "\\n");
    if (k === "slow") await new Promise((r) => setTimeout(r, Number(process.env.SLOW_MS)));
  },
});
`;

withBroker({ [TOPIC]: 1 }, { "keyed.ts": HANDLER }, (f) => ({ broker, dir } = f));

function journalRows(db: string): { completed: number; next: number | undefined } {
  if (!existsSync(db)) return { completed: 0, next: undefined };
  const conn = new Database(db, { readonly: true });
  try {
    const completed = (conn.prepare("SELECT count(*) AS n FROM kexo_messages WHERE status = 'completed'").get() as { n: number }).n;
    const row = conn.prepare("SELECT next_offset FROM kexo_progress WHERE topic = ?").get(TOPIC) as { next_offset: number } | undefined;
    return { completed, next: row?.next_offset };
  } catch {
    return { completed: 0, next: undefined };
  } finally {
    conn.close();
  }
}

test("completed work above the lowest unfinished offset is not redone after SIGKILL", async () => {
  const messages = [{ key: "slow", value: JSON.stringify({ k: "slow", seq: 0 }) }];
  for (let i = 0; i < OTHERS; i++) messages.push({ key: `k${i % 5}`, value: JSON.stringify({ k: `k${i % 5}`, seq: i }) });
  await broker.produce(TOPIC, messages);

  const db = join(dir, "journal.db");
  const log = join(dir, "handled.log");
  writeFileSync(log, "");
  const args = runArgs(broker.brokers, join(dir, "handlers"), db);
  const runs = () => {
    const m = new Map<string, number>();
    for (const l of readFileSync(log, "utf8").split("\n").filter(Boolean)) m.set(l, (m.get(l) ?? 0) + 1);
    return m;
  };

  const first = new WorkerProcess(args, { env: { LOG: log, SLOW_MS: "600000" } });
  await first.waitJoined();
  await waitUntil(`${OTHERS} completions journaled`, () => journalRows(db).completed >= OTHERS || undefined, { timeoutMs: 60_000 });
  await sleep(500);
  first.kill("SIGKILL");
  await first.exited();
  const before = journalRows(db);
  expect(before.completed).toBe(OTHERS);
  // The slow message at offset 0 never finished: progress may not pass it.
  expect(before.next ?? 0).toBeLessThanOrEqual(0);
  expect(runs().get("slow:0")).toBe(1);

  const second = new WorkerProcess(args, { env: { LOG: log, SLOW_MS: "10" } });
  await second.waitJoined();
  await waitUntil("the slow message completed", () => journalRows(db).completed >= OTHERS + 1 || undefined, { timeoutMs: 60_000 });
  await sleep(300);
  second.kill("SIGTERM");
  expect(await second.exited()).toBe(0);

  const counts = runs();
  expect(counts.get("slow:0")).toBe(2);
  const again = [...counts].filter(([id, n]) => id !== "slow:0" && n !== 1);
  expect(again).toEqual([]);
  expect(counts.size).toBe(OTHERS + 1);
  expect(journalRows(db).next).toBe(OTHERS + 1);
}, 120_000);
