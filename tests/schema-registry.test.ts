// Confluent wire-format values (Avro, Protobuf, JSON Schema) are decoded through the schema
// registry and then validated by the handler's schema; an unknown schema id or an undecodable body
// is dead-lettered as poison; an unreachable registry is waited for and the message processed
// once it is back; ctx.emit encodes with a registered schema (the outbox holds the wire-format bytes).
// The values are framed and encoded by hand here, so the test pins the wire format itself.
import { afterAll, beforeAll, expect, test } from "bun:test";
import Database from "libsql";
import { join } from "node:path";
import { startBroker, type TestBroker } from "./support/broker.ts";
import { startRegistry, type TestRegistry } from "./support/schema-registry.ts";
import { tempDir } from "./support/tmp.ts";
import { waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

let broker: TestBroker;
let registry: TestRegistry;
let worker: WorkerProcess | undefined;
let dir: string;

const ORDER_AVRO = { type: "record", name: "Order", namespace: "shop", fields: [{ name: "orderId", type: "string" }, { name: "amount", type: "double" }] };
const ORDER_PROTO = `syntax = "proto3";
package shop;
message Order { string orderId = 1; int64 quantity = 2; Status status = 3; }
enum Status { NEW = 0; PAID = 1; }
message Refund { string orderId = 1; double amount = 2; }`;
const ORDER_JSON = { type: "object", properties: { orderId: { type: "string" }, amount: { type: "number" } }, required: ["orderId", "amount"] };

const HEAD = `import { defineHandler, v } from "kexo";
const setup = async (db) => { await db.execute("CREATE TABLE IF NOT EXISTS seen (handler TEXT NOT NULL, payload TEXT NOT NULL)"); };
const record = (ctx, handler, payload) => ctx.tx((db) => db.execute({ sql: "INSERT INTO seen VALUES (?, ?)", args: [handler, JSON.stringify(payload)] }));
const retry = { attempts: 3, initialDelayMs: 100, maxDelayMs: 400 };
const Order = v.object({ orderId: v.string(), amount: v.pipe(v.number(), v.minValue(0, "amount must not be negative")) });`;

const HANDLERS: Record<string, string> = {
  "avro.ts": `${HEAD}
export default defineHandler({ topics: ["sr-avro"], format: "avro", schema: Order, setup, retry,
  async handle(o, ctx) {
    await record(ctx, "avro", o);
    // a-5 emits a value its schema refuses: a permanent failure, dead-lettered.
    const amount = o.orderId === "a-5" ? "many" : o.amount * 2;
    ctx.emit("sr-out", { key: o.orderId, value: { orderId: o.orderId + "-out", amount }, schema: { subject: "sr-out-value" } });
  } });`,
  "proto.ts": `${HEAD}
export default defineHandler({ topics: ["sr-proto"], format: "protobuf", setup, retry, handle: (p, ctx) => record(ctx, "proto", p) });`,
  "jsonschema.ts": `${HEAD}
export default defineHandler({ topics: ["sr-json"], format: "json-schema", schema: Order, setup, retry, handle: (o, ctx) => record(ctx, "json", o) });`,
};

// Hand-written encoders: Avro (zigzag varints, length-prefixed strings, little-endian doubles) and
// Protobuf (tag bytes, length-delimited strings, varints, fixed64 doubles).
const varint = (n: number) => {
  const out: number[] = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  out.push(n);
  return Buffer.from(out);
};
const double = (x: number) => {
  const b = Buffer.alloc(8);
  b.writeDoubleLE(x);
  return b;
};
const avroOrder = (orderId: string, amount: number) => Buffer.concat([varint(Buffer.byteLength(orderId) * 2), Buffer.from(orderId), double(amount)]);
const protoString = (field: number, s: string) => Buffer.concat([Buffer.from([(field << 3) | 2]), varint(Buffer.byteLength(s)), Buffer.from(s)]);
const frame = (id: number, ...body: Buffer[]) => {
  const head = Buffer.alloc(5);
  head.writeInt32BE(id, 1);
  return Buffer.concat([head, ...body]);
};

let ids: Record<"avro" | "proto" | "json" | "json2" | "out", number>;

beforeAll(async () => {
  registry = startRegistry();
  ids = {
    avro: registry.register("sr-avro-value", { schema: JSON.stringify(ORDER_AVRO) }),
    proto: registry.register("sr-proto-value", { schema: ORDER_PROTO, schemaType: "PROTOBUF" }),
    json: registry.register("sr-json-value", { schema: JSON.stringify(ORDER_JSON), schemaType: "JSON" }),
    // Fetched for the first time while the registry is down.
    json2: registry.register("sr-json-value", { schema: JSON.stringify({ ...ORDER_JSON, title: "v2" }), schemaType: "JSON" }),
    out: registry.register("sr-out-value", { schema: JSON.stringify({ ...ORDER_AVRO, name: "OrderOut" }) }),
  };
  broker = await startBroker({ "sr-avro": 1, "sr-proto": 1, "sr-json": 1 });
  dir = tempDir();
  for (const [name, text] of Object.entries(HANDLERS)) await Bun.write(join(dir, "handlers", name), text);
});

afterAll(async () => {
  worker?.kill("SIGKILL");
  await registry?.stop();
  await broker?.close();
});

function query<T>(sql: string, ...args: string[]): T[] {
  const conn = new Database(join(dir, "journal.db"), { readonly: true });
  try {
    return conn.prepare(sql).all(...args) as T[];
  } catch {
    return [];
  } finally {
    conn.close();
  }
}
const seen = (handler: string) => query<{ payload: string }>("SELECT payload FROM seen WHERE handler = ? ORDER BY rowid", handler).map((r) => JSON.parse(r.payload));

async function deadLetters(topic: string, count: number) {
  const records = await broker.readAll(topic, count);
  return records.map((r) => ({ reason: r.headers["kexo-dlq-reason"]?.toString(), error: r.headers["kexo-dlq-error"]?.toString() ?? "" }));
}

test("registry formats are decoded, validated, dead-lettered as poison when undecodable, and wait out a registry outage", async () => {
  worker = new WorkerProcess(
    runArgs(broker.brokers, join(dir, "handlers"), join(dir, "journal.db"), "--schema-registry", registry.url),
    { env: { KEXO_SCHEMA_REGISTRY_USERNAME: registry.username, KEXO_SCHEMA_REGISTRY_PASSWORD: registry.password } },
  );
  await worker.waitJoined(3);

  await broker.produce("sr-avro", [
    { key: "a1", value: frame(ids.avro, avroOrder("a-1", 12.5)) },
    { key: "a2", value: frame(999, avroOrder("a-2", 1)) }, // unknown schema id
    { key: "a3", value: frame(ids.avro, Buffer.from([0x40, 0x61])) }, // body cut short
    { key: "a4", value: frame(ids.avro, avroOrder("a-4", -3)) }, // decodes, fails the valibot schema
    { key: "a5", value: frame(ids.avro, avroOrder("a-5", 1)) },
  ]);
  await broker.produce("sr-proto", [
    // message indexes [0] (the single byte 0): Order
    { value: frame(ids.proto, Buffer.from([0]), protoString(1, "p-1"), Buffer.from([0x10, 3, 0x18, 1])) },
    // message indexes [1] (count 1, index 1, zigzag): Refund, the second message (the enum doesn't count)
    { value: frame(ids.proto, Buffer.from([2, 2]), protoString(1, "p-2"), Buffer.from([0x11]), double(2.5)) },
    { value: Buffer.from("not wire format") },
  ]);
  await broker.produce("sr-json", [
    { value: frame(ids.json, Buffer.from(JSON.stringify({ orderId: "j-1", amount: 4 }))) },
    { value: frame(ids.json, Buffer.from(JSON.stringify({ orderId: 7 }))) }, // fails the registered JSON Schema
  ]);

  await waitUntil("avro, protobuf and JSON Schema values handled", () => seen("avro").length >= 1 && seen("proto").length >= 2 && seen("json").length >= 1, { timeoutMs: 30_000 });
  expect(seen("avro")[0]).toEqual({ orderId: "a-1", amount: 12.5 });
  expect(seen("proto")).toEqual([{ orderId: "p-1", quantity: "3", status: "PAID" }, { orderId: "p-2", amount: 2.5 }]);
  expect(seen("json")).toEqual([{ orderId: "j-1", amount: 4 }]);

  const avroDlq = await deadLetters("sr-avro.dlq", 4);
  // The dead-letter topic has several partitions: compare without order.
  expect(avroDlq.map((d) => d.reason).sort()).toEqual(["permanent", "poison", "poison", "poison"]);
  const avroErrors = avroDlq.map((d) => d.error).join("\n");
  expect(avroErrors).toContain("schema id 999 is unknown to the schema registry");
  expect(avroErrors).toContain(`value does not decode with avro schema id ${ids.avro}`);
  expect(avroErrors).toContain("value does not match the schema: amount: amount must not be negative");
  expect(avroDlq.find((d) => d.reason === "permanent")?.error).toContain(`ctx.emit: value does not match avro schema id ${ids.out}`);
  const protoDlq = await deadLetters("sr-proto.dlq", 1);
  expect(protoDlq).toEqual([{ reason: "poison", error: expect.stringContaining("not in the Confluent wire format") }]);
  const jsonDlq = await deadLetters("sr-json.dlq", 1);
  expect(jsonDlq).toEqual([{ reason: "poison", error: expect.stringContaining(`value does not decode with json-schema schema id ${ids.json}: invalid payload`) }]);

  // ctx.emit encoded with the latest sr-out-value schema, byte for byte as Avro in the wire format:
  // in the outbox, or on the topic once an outbox relay published (and removed) the row.
  const outbox = query<{ value: Uint8Array }>("SELECT value FROM kexo_outbox WHERE topic = 'sr-out'").map((r) => Buffer.from(r.value));
  const emitted = outbox.length > 0 ? outbox : (await broker.readAll("sr-out", 1)).map((r) => r.value);
  expect(emitted).toEqual([frame(ids.out, avroOrder("a-1-out", 25))]);

  // Registry outage: a value with a schema id not yet cached waits, and is handled once it is back.
  await registry.stop();
  const waits = () => worker!.lines.filter((l) => l.msg === "schema registry unavailable; the message waits and retries").length;
  await broker.produce("sr-json", [{ value: frame(ids.json2, Buffer.from(JSON.stringify({ orderId: "j-2", amount: 5 }))) }]);
  // More waits than the handler's 3 attempts: an outage uses up none of them.
  await waitUntil("the message waiting for the registry", () => waits() >= 4, { timeoutMs: 30_000 });
  expect(seen("json")).toHaveLength(1);
  const readyzUrl = `http://${await worker.httpAddress()}/readyz`;
  const readyz = await fetch(readyzUrl);
  expect(readyz.status).toBe(503);
  expect(await readyz.text()).toContain(`schema registry ${registry.url}: cannot fetch schema id ${ids.json2}`);
  registry.start();
  await waitUntil("the waiting message handled", () => seen("json").length >= 2, { timeoutMs: 20_000 });
  expect(seen("json")).toEqual([{ orderId: "j-1", amount: 4 }, { orderId: "j-2", amount: 5 }]);
  expect((await fetch(readyzUrl)).status).toBe(200);
  expect(worker.lines.filter((l) => l.msg === "message dead-lettered" && l.handler === "jsonschema")).toHaveLength(1);
  // Every request carried the credentials (the registry answers 401 otherwise, which would block).
  expect(worker.lines.some((l) => String(l.error ?? "").includes("Unauthorized"))).toBe(false);

  worker.kill("SIGTERM");
  expect(await worker.exited()).toBe(0);
}, 120_000);
