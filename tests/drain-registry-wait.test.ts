// A SIGTERM while messages wait for a schema registry that is down does not wait for the ones
// waiting to decode their value, in every order (partition, key, topic): their handler has not
// run, so they stop waiting and end unfinished, with no attempt used up and no dead letter; nothing
// after them is committed past them. Before, each such wait held the drain until
// --shutdown-timeout and kexo exited 75 as if handlers had been cut. A message waiting to encode
// its emits has run its handler: it is in flight, and the drain waits for it (a next owner with
// its own journal would run the handler again) until the registry answers, then exits 0. After
// the restart with the registry back, every message's handler has run once and taken effect once.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { join } from "node:path";
import { startBroker, type TestBroker } from "./support/broker.ts";
import { queryRows } from "./support/db.ts";
import { startRegistry, type TestRegistry } from "./support/schema-registry.ts";
import { callsLog, tempDir } from "./support/tmp.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { runArgs, WorkerProcess } from "./support/worker.ts";

const ORDERS = ["partition", "key", "topic"] as const;
const OUT = "drw-out";
const SHUTDOWN_TIMEOUT_MS = 20_000;
const PARTITIONS = 2;
const PER_PARTITION = 2;
let broker: TestBroker;
let registry: TestRegistry;
let dir: string;
let inId: number;
let outId: number;

// dec-ORDER decodes JSON Schema wire-format values through the registry; enc-ORDER takes plain
// JSON and emits a value encoded with a registered Avro schema. Each journals one effect.
const handler = (kind: "dec" | "enc", order: string) => `
import { defineHandler, v } from "kexo";
import { appendFileSync } from "node:fs";

export default defineHandler({
  topics: ["drw-${kind}-${order}"],
  ${kind === "dec" ? 'format: "json-schema",' : ""}
  schema: v.object({ id: v.string() }),
  order: "${order}",
  retry: { attempts: 2, initialDelayMs: 2000, maxDelayMs: 2000 },
  async setup(db) { await db.execute("CREATE TABLE IF NOT EXISTS effects (handler TEXT, id TEXT)"); },
  async handle(p, ctx) {
    appendFileSync(process.env.CALLS_LOG!, JSON.stringify({ id: p.id, pid: process.pid }) + "\\n");
    await ctx.tx((db) => db.execute({ sql: "INSERT INTO effects VALUES (?, ?)", args: ["${kind}-${order}", p.id] }));
    ${kind === "enc" ? `ctx.emit("${OUT}", { key: p.id, value: { id: p.id }, schema: { subject: "${OUT}-value" } });` : ""}
  },
});
`;

const HANDLERS = ORDERS.flatMap((o) => (["dec", "enc"] as const).map((k) => `${k}-${o}`));

const frame = (id: number, body: Buffer) => {
  const head = Buffer.alloc(5);
  head.writeInt32BE(id, 1);
  return Buffer.concat([head, body]);
};
const avroString = (s: string) => Buffer.concat([Buffer.from([Buffer.byteLength(s) * 2]), Buffer.from(s)]);

beforeAll(async () => {
  registry = startRegistry();
  inId = registry.register("drw-in-value", {
    schema: JSON.stringify({ type: "object", properties: { id: { type: "string" } }, required: ["id"] }), schemaType: "JSON",
  });
  outId = registry.register(`${OUT}-value`, { schema: JSON.stringify({ type: "record", name: "Out", fields: [{ name: "id", type: "string" }] }) });
  broker = await startBroker({ [OUT]: 1, ...Object.fromEntries(HANDLERS.map((h) => [`drw-${h}`, PARTITIONS])) });
  dir = tempDir();
  for (const o of ORDERS) for (const k of ["dec", "enc"] as const) await Bun.write(join(dir, "handlers", `${k}-${o}.ts`), handler(k, o));
});

afterAll(async () => {
  await registry?.stop();
  await broker?.close();
});

test("SIGTERM while messages wait for the schema registry: decode waits end at once, encode waits finish in the drain, exit 0; each handler runs once", async () => {
  const db = join(dir, "journal.db");
  const { env, calls } = callsLog<{ id: string; pid: number }>(dir);
  const start = () => new WorkerProcess(
    runArgs(broker.brokers, join(dir, "handlers"), db, "--schema-registry", registry.url, "--shutdown-timeout", String(SHUTDOWN_TIMEOUT_MS)),
    { env: { ...env, KEXO_SCHEMA_REGISTRY_USERNAME: registry.username, KEXO_SCHEMA_REGISTRY_PASSWORD: registry.password } },
  );
  const effects = () => queryRows<{ handler: string; id: string }>(db, "SELECT handler, id FROM effects").map((e) => `${e.handler}/${e.id}`);
  const ids = (h: string) => Array.from({ length: PARTITIONS * PER_PARTITION }, (_, i) => `${h}-${i}`);

  // Down before the first start: no schema is cached, every message needs the registry.
  await registry.stop();
  const first = start();
  await first.waitJoined(HANDLERS.length);
  for (const h of HANDLERS) {
    const [kind] = h.split("-");
    await broker.produce(`drw-${h}`, ids(h).map((id, i) => ({
      key: id, partition: i % PARTITIONS,
      value: kind === "dec" ? frame(inId, Buffer.from(JSON.stringify({ id }))) : JSON.stringify({ id }),
    })));
  }
  // Every handler has a message waiting for the registry (the enc ones after their handler ran).
  const waiting = () => new Set(first.lines.filter((l) => l.msg === "schema registry unavailable; the message waits and retries").map((l) => String(l.handler)));
  await waitUntil("a message of every handler waiting for the registry", () => waiting().size === HANDLERS.length || undefined, { timeoutMs: 20_000 });
  const ranBefore = calls().length;
  expect(ranBefore).toBeGreaterThan(0);
  expect(calls().every((c) => c.id.startsWith("enc-"))).toBe(true);

  const t0 = performance.now();
  first.kill("SIGTERM");
  // The encode waits hold the drain (their handlers ran); the decode waits do not.
  await sleep(1500);
  expect(first.proc.exitCode).toBeNull();
  // No handler of a message waiting to decode started during the drain.
  expect(calls().every((c) => c.id.startsWith("enc-"))).toBe(true);
  registry.start();
  const code = await first.exited();
  const seconds = (performance.now() - t0) / 1000;
  console.log(`SIGTERM to exit: ${seconds.toFixed(1)} s, exit ${code}`);
  expect({ code, aborted: first.lines.some((l) => l.msg.startsWith("shutdown timeout ran out")) }).toEqual({ code: 0, aborted: false });
  expect(seconds).toBeLessThan(SHUTDOWN_TIMEOUT_MS / 1000);
  expect(first.lines.filter((l) => l.msg === "message dead-lettered")).toEqual([]);

  const second = start();
  await second.waitJoined(HANDLERS.length);
  const total = HANDLERS.length * PARTITIONS * PER_PARTITION;
  await waitUntil("every message's effect", () => effects().length >= total || undefined, { timeoutMs: 30_000 });
  const out = await broker.readAll(OUT, ORDERS.length * PARTITIONS * PER_PARTITION, 20_000);
  second.kill("SIGTERM");
  expect(await second.exited()).toBe(0);

  // Every message took effect exactly once; nothing was dead-lettered.
  const all = effects();
  expect(all.sort()).toEqual(HANDLERS.flatMap((h) => ids(h).map((id) => `${h}/${id}`)).sort());
  expect(second.lines.filter((l) => l.msg === "message dead-lettered")).toEqual([]);
  expect(queryRows(db, "SELECT * FROM kexo_retries")).toEqual([]);
  // Every message's handler ran once over both runs: the decode waits had not run theirs, and the
  // encode waits finished in the drain, not run again after the restart.
  expect(calls().map((c) => c.id).sort()).toEqual(HANDLERS.flatMap(ids).sort());
  // One emit per enc message, encoded with the registered schema.
  const emitted = out.map((r) => r.value!).sort(Buffer.compare);
  const encIds = ORDERS.flatMap((o) => ids(`enc-${o}`));
  expect(emitted).toEqual(encIds.map((id) => frame(outId, avroString(id))).sort(Buffer.compare));
}, 90_000);
