// Once a handler gave up on a message (a PermanentError, or its attempts used up), a SIGKILL never
// makes it run again: not while the dead-letter write keeps failing, and not between the write's
// acknowledgement and the journal's record of it. The restart only writes the dead letter (a
// second copy at most, when the first was acknowledged), and nothing after it is lost.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { columnIn, countIn } from "./support/db.ts";
import { callsLog } from "./support/tmp.ts";
import { waitUntil } from "./support/wait.ts";
import { kexoAsync, WorkerProcess, runArgs } from "./support/worker.ts";

const UNKNOWN_TOPIC_OR_PARTITION = 3;
let broker: TestBroker;
let dir: string;

const handler = (topic: string) => `
import { defineHandler, v, PermanentError } from "kexo";
import { appendFileSync } from "node:fs";

export default defineHandler({
  topics: ["${topic}"],
  schema: v.object({ id: v.string() }),
  retry: { attempts: 2, initialDelayMs: 100, maxDelayMs: 200 },
  async handle(p, ctx) {
    appendFileSync(process.env.CALLS_LOG!, JSON.stringify({ id: p.id, attempt: ctx.attempt }) + "\\n");
    if (p.id === "permanent") throw new PermanentError("refused");
    if (p.id === "exhausted") throw new Error("downstream down");
  },
});
`;

withBroker({ "gu-blocked": 2, "gu-acked": 1, "gu-acked.dlq": 1 }, {}, (f) => ({ broker, dir } = f));

/** A worker with only the handler of `topic` (in DIR/NAME), its own journal and calls log. */
async function setUp(name: string, topic: string) {
  const home = join(dir, name);
  await Bun.write(join(home, "handlers", `${name}.ts`), handler(topic));
  const { env, calls } = callsLog(home);
  const db = join(home, "journal.db");
  const start = (extra: Record<string, string> = {}) => new WorkerProcess(runArgs(broker.brokers, join(home, "handlers"), db), { env: { ...env, ...extra } });
  return { db, calls, start };
}

test("killed while the dead-letter write fails: the restart writes it, without running the handler again", async () => {
  const { db, calls, start } = await setUp("blocked", "gu-blocked");
  broker.cluster.setTopicError("gu-blocked.dlq", UNKNOWN_TOPIC_OR_PARTITION);
  const first = start();
  await first.waitJoined();
  await broker.produce("gu-blocked", [
    { value: JSON.stringify({ id: "exhausted" }), partition: 0 },
    { value: JSON.stringify({ id: "after-exhausted" }), partition: 0 },
    { value: JSON.stringify({ id: "permanent" }), partition: 1 },
    { value: JSON.stringify({ id: "after-permanent" }), partition: 1 },
  ]);
  const failedWrites = (w: WorkerProcess, p: number) => w.lines.filter((l) => l.msg.startsWith("dead-letter write failed") && l.partition === p).length;
  await waitUntil("both dead-letter writes failing", () => (failedWrites(first, 0) >= 2 && failedWrites(first, 1) >= 2) || undefined);
  first.kill("SIGKILL");
  await first.exited();
  expect(calls().map((c) => `${c.id}:${c.attempt}`).sort()).toEqual(["exhausted:1", "exhausted:2", "permanent:1"]);

  const second = start();
  await second.waitJoined();
  await waitUntil("the writes failing again", () => (failedWrites(second, 0) >= 1 && failedWrites(second, 1) >= 1) || undefined);
  broker.cluster.setTopicError("gu-blocked.dlq", 0);
  await waitUntil("the messages behind them handled", () => (calls("after-exhausted").length > 0 && calls("after-permanent").length > 0) || undefined);
  second.kill("SIGTERM");
  expect(await second.exited()).toBe(0);

  // Before the fix: the restart ran permanent:1 and exhausted:2 again.
  expect(calls().map((c) => `${c.id}:${c.attempt}`).sort()).toEqual(["after-exhausted:1", "after-permanent:1", "exhausted:1", "exhausted:2", "permanent:1"]);
  const dead = await broker.readAll("gu-blocked.dlq", 3, 5000);
  expect(dead.map((d) => [d.value?.toString(), d.headers["kexo-dlq-reason"]?.toString(), d.headers["kexo-dlq-attempts"]?.toString()]).sort()).toEqual([
    ['{"id":"exhausted"}', "exhausted", "2"],
    ['{"id":"permanent"}', "permanent", "1"],
  ]);
  expect(columnIn<string>(db, "SELECT reason FROM kexo_dead_letters ORDER BY reason")).toEqual(["exhausted", "permanent"]);
  expect(countIn(db, "SELECT count(*) AS n FROM kexo_retries")).toBe(0);
  const list = await kexoAsync(["dlq", "list", "--json", "--db", `file:${db}`]);
  expect((JSON.parse(list.stdout) as { reason: string }[]).map((r) => r.reason).sort()).toEqual(["exhausted", "permanent"]);
}, 60_000);

test("killed after the dead-letter write was acknowledged, before the journal recorded it: a second copy at most", async () => {
  const { db, calls, start } = await setUp("acked", "gu-acked");
  const first = start({ KEXO_CRASH_AT: "dlq.published" });
  await first.waitJoined();
  await broker.produce("gu-acked", [{ value: JSON.stringify({ id: "permanent" }) }, { value: JSON.stringify({ id: "after" }) }]);
  expect(await first.exited()).toBe(137);

  const second = start();
  await second.waitJoined();
  await waitUntil("the message behind it handled", () => calls("after").length > 0 || undefined);
  second.kill("SIGTERM");
  expect(await second.exited()).toBe(0);

  // Before the fix: permanent:1 ran twice.
  expect(calls().map((c) => `${c.id}:${c.attempt}`)).toEqual(["permanent:1", "after:1"]);
  const dead = await broker.readAll("gu-acked.dlq", 2, 5000);
  expect(dead.map((d) => d.value?.toString())).toEqual(['{"id":"permanent"}', '{"id":"permanent"}']);
  expect(columnIn<string>(db, "SELECT reason FROM kexo_dead_letters")).toEqual(["permanent"]);
}, 60_000);
