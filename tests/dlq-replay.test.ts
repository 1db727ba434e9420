// Dead letters replayed through the CLI are handled again, exactly once, and marked replayed:
// a dead letter was never completed, so dedup does not swallow its replay, whether its id is the
// handler's business key or an upstream kexo-id header. list/show/inspect report what happened.
import { expect, test } from "bun:test";
import Database from "libsql";
import { existsSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { waitUntil } from "./support/wait.ts";
import { kexoAsync, WorkerProcess } from "./support/worker.ts";

const TOPIC = "rp-in";
const DLQ = "rp-in.dlq";
let broker: TestBroker;
let dir: string;

// Fails permanently while FAIL_FILE exists; the replay happens after it is removed.
const HANDLER = `
import { defineHandler, v, PermanentError } from "kexo";
import { existsSync } from "node:fs";

export default defineHandler({
  topics: ["${TOPIC}"],
  schema: v.object({ eventId: v.string(), amount: v.number() }),
  key: (e) => e.eventId,
  async setup(db) {
    await db.execute("CREATE TABLE IF NOT EXISTS effects (id TEXT NOT NULL)");
  },
  async handle(e, ctx) {
    if (existsSync(process.env.FAIL_FILE!)) throw new PermanentError("ledger closed for " + e.eventId);
    await ctx.step("charge", () => ({ charged: e.amount }));
    await ctx.tx((db) => db.execute({ sql: "INSERT INTO effects (id) VALUES (?)", args: [ctx.id] }));
    return { ok: e.eventId };
  },
});
`;

withBroker({ [TOPIC]: 1, [DLQ]: 1, "rp-other": 1 }, { "rp.ts": HANDLER }, (f) => ({ broker, dir } = f));

const kexo = (...args: string[]) => kexoAsync(args, { cwd: dir });

test("a CLI replay round trip: dead letters handled again exactly once, marked replayed", async () => {
  const db = join(dir, "journal.db");
  const failFile = join(dir, "fail");
  writeFileSync(failFile, "");
  const dbFlag = ["--db", `file:${db}`];
  const w = new WorkerProcess(["run", "--brokers", broker.brokers, "--handlers", join(dir, "handlers"), ...dbFlag, "--http", "127.0.0.1:0"], { env: { FAIL_FILE: failFile } });
  await w.waitJoined();
  await broker.produce(TOPIC, [
    { key: "e1", value: JSON.stringify({ eventId: "e1", amount: 10 }) },
    { key: "e2", value: JSON.stringify({ eventId: "e2", amount: 20 }), headers: { "kexo-id": "upstream-7" } },
    { key: "e3", value: JSON.stringify({ eventId: "e3", amount: 30 }) },
  ]);
  const deadLettered = () => w.lines.filter((l) => l.msg === "message dead-lettered").length;
  await waitUntil("3 dead letters", () => deadLettered() >= 3 || undefined);

  const list = await kexo("dlq", "list", ...dbFlag, "--json");
  expect(list.code).toBe(0);
  const rows = JSON.parse(list.stdout) as { id: number; handler: string; messageId: string; source: string; reason: string; error: string; replayedAt?: string }[];
  expect(rows.map((r) => [r.id, r.handler, r.messageId, r.source, r.reason, r.error, r.replayedAt])).toEqual([
    [1, "rp", "e1", `${TOPIC}/0@0`, "permanent", "ledger closed for e1", undefined],
    [2, "rp", "upstream-7", `${TOPIC}/0@1`, "permanent", "ledger closed for e2", undefined],
    [3, "rp", "e3", `${TOPIC}/0@2`, "permanent", "ledger closed for e3", undefined],
  ]);
  // A handler the journal never saw is a slip, named with the ones it knows.
  const nope = await kexo("dlq", "list", ...dbFlag, "--json", "--handler", "nope");
  expect(nope.code).toBe(64);
  expect(JSON.parse(nope.stdout)).toMatchObject({ handler: "nope", found: false, error: { message: expect.stringContaining("no handler nope in journal") } });
  expect(nope.stderr).toContain("its handlers: rp");
  expect(JSON.parse((await kexo("dlq", "list", ...dbFlag, "--json", "--since", "1h")).stdout).length).toBe(3);
  expect(JSON.parse((await kexo("dlq", "list", ...dbFlag, "--json", "--since", new Date(Date.now() + 60_000).toISOString())).stdout)).toEqual([]);
  const table = await kexo("dlq", "list", ...dbFlag);
  expect(table.stdout.split("\n")[0]).toMatch(/^ID\s+HANDLER\s+MESSAGE ID\s+SOURCE\s+REASON/);
  expect(table.stdout).toContain("upstream-7");
  const show = JSON.parse((await kexo("dlq", "show", "2", ...dbFlag, "--json")).stdout) as { value: string; headers: Record<string, string> };
  expect(show.value).toBe(JSON.stringify({ eventId: "e2", amount: 20 }));
  expect(show.headers).toEqual({ "kexo-id": "upstream-7" });
  const inspectDead = JSON.parse((await kexo("inspect", "e1", ...dbFlag, "--json")).stdout) as { status: string; error: string };
  expect([inspectDead.status, inspectDead.error]).toEqual(["dead_lettered", "permanent: ledger closed for e1"]);

  rmSync(failFile);
  const dry = await kexo("dlq", "replay", "--all", "--dry-run", ...dbFlag);
  expect(dry.code).toBe(0);
  expect(dry.stdout).toContain("3 dead letters would be replayed");
  const unknown = await kexo("dlq", "replay", "9", "--brokers", broker.brokers, ...dbFlag);
  expect(unknown.code).toBe(64);
  expect(unknown.stderr).toContain("no dead letter with id 9");

  const some = await kexo("dlq", "replay", "1", "2", "--brokers", broker.brokers, ...dbFlag);
  expect({ code: some.code, stdout: some.stdout }).toEqual({ code: 0, stdout: "replayed 2 dead letters\n" });
  expect(some.stderr).toContain("replayed 2/2");
  const rest = await kexo("dlq", "replay", "--all", "--brokers", broker.brokers, ...dbFlag);
  expect({ code: rest.code, stdout: rest.stdout }).toEqual({ code: 0, stdout: "replayed 1 dead letter\n" });

  const effects = () => {
    if (!existsSync(db)) return [];
    const conn = new Database(db, { readonly: true });
    try {
      return (conn.prepare("SELECT id FROM effects ORDER BY id").all() as { id: string }[]).map((r) => r.id);
    } finally {
      conn.close();
    }
  };
  await waitUntil("3 replayed messages handled", () => effects().length >= 3 || undefined);
  expect(effects()).toEqual(["e1", "e3", "upstream-7"]);
  const after = JSON.parse((await kexo("dlq", "list", ...dbFlag, "--json")).stdout) as { replayedAt?: string; replayedTo?: string }[];
  expect(after.map((r) => [typeof r.replayedAt, r.replayedTo])).toEqual([["string", TOPIC], ["string", TOPIC], ["string", TOPIC]]);
  const inspected = JSON.parse((await kexo("inspect", "upstream-7", ...dbFlag, "--json")).stdout) as { status: string; attempts: number; steps: { name: string; result: unknown }[]; result: unknown };
  expect([inspected.status, inspected.attempts, inspected.steps.map((s) => s.name), inspected.steps[0]?.result, inspected.result]).toEqual([
    // The tx record is superseded by the completion committed with it; recorded steps stay.
    "completed", 1, ["step:charge"], { charged: 20 }, { ok: "e2" },
  ]);

  // --to: a copy goes to another topic, original bytes and headers.
  const to = await kexo("dlq", "replay", "2", "--to", "rp-other", "--brokers", broker.brokers, ...dbFlag);
  expect(to.code).toBe(0);
  const copied = await broker.readAll("rp-other", 1);
  expect(copied.map((m) => [m.key?.toString(), m.value?.toString(), m.headers["kexo-id"]?.toString()])).toEqual([["e2", JSON.stringify({ eventId: "e2", amount: 20 }), "upstream-7"]]);

  w.kill("SIGTERM");
  expect(await w.exited()).toBe(0);
}, 120_000);
