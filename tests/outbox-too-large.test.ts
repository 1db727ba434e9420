// The relay against a broker that refuses requests as too large (Kafka's max.message.bytes is
// measured against a partition's whole record batch, and kafkajs puts a request's records for one
// partition into one batch). Fewer records per request pass; a record refused alone is named with
// what to do, and waits (never dropped, emit order kept). Real broker (the development broker,
// which refuses through fault injection), real journal file.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { ApiKey } from "../src/dev/mock-cluster.ts";
import { EventBus } from "../src/events.ts";
import { Journal } from "../src/journal/journal.ts";
import { createLogger } from "../src/log.ts";
import { OutboxRelay, takeWithin, type OutboxRow } from "../src/outbox/relay.ts";
import { startBroker } from "./support/broker.ts";
import { tempDir } from "./support/tmp.ts";
import { waitUntil } from "./support/wait.ts";

const MESSAGE_TOO_LARGE = 10;

test("takeWithin keeps the longest prefix within the bytes, and at least one row", () => {
  const row = (seq: number, bytes: number): OutboxRow => ({ seq, handler: "h", topic: "t", key: null, value: new ArrayBuffer(bytes), headers: "{}", partition: null });
  const rows = [row(1, 400), row(2, 400), row(3, 400)];
  expect(takeWithin(rows, 10_000).map((r) => r.seq)).toEqual([1, 2, 3]);
  expect(takeWithin(rows, 1000).map((r) => r.seq)).toEqual([1, 2]);
  expect(takeWithin(rows, 10).map((r) => r.seq)).toEqual([1]);
  expect(takeWithin([], 10)).toEqual([]);
});

async function withRelay(rows: number, refusals: number, body: (r: { lines: Record<string, unknown>[]; read: () => Promise<string[]>; pending: () => number }) => Promise<void>) {
  const broker = await startBroker({ big: 1 });
  const journal = Journal.open({ url: `file:${join(tempDir(), "j.db")}`, commitIntervalMs: 5 });
  const bus = new EventBus();
  const lines: Record<string, unknown>[] = [];
  const relay = new OutboxRelay({ kafka: broker.kafka, journal, bus, log: createLogger({ write: (l) => lines.push(JSON.parse(l)) }) });
  try {
    for (let i = 0; i < rows; i++) {
      journal.write(
        "INSERT INTO kexo_outbox (handler, message_id, topic, key, value, headers, partition, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        "h", `m${i}`, "big", null, Buffer.from(`r${i}`), "{}", null, Date.now(),
      );
    }
    await journal.flush();
    // Every Produce from here on is refused as too large, `refusals` times.
    broker.cluster.pushRequestErrors(ApiKey.Produce, Array(refusals).fill(MESSAGE_TOO_LARGE));
    relay.start();
    const pending = () => journal.query<{ n: number }>("SELECT count(*) AS n FROM kexo_outbox")[0]!.n;
    await body({ lines, pending, read: async () => (await broker.readAll("big", rows)).map((r) => String(r.value)) });
  } finally {
    await relay.stop(2000);
    await journal.close();
    await broker.close();
  }
}

test("requests refused as too large are split until they pass: every record once, in emit order", async () => {
  await withRelay(12, 2, async ({ lines, pending, read }) => {
    await waitUntil("the outbox drained", () => pending() === 0 || undefined, { timeoutMs: 30_000 });
    expect(await read()).toEqual(Array.from({ length: 12 }, (_, i) => `r${i}`));
    expect(lines.filter((l) => String(l.msg).startsWith("the broker refused an outbox request as too large")).map((l) => l.rows)).toEqual([12, 6]);
    expect(lines.filter((l) => l.level === "error")).toEqual([]);
  });
}, 60_000);

test("a record refused alone is named with what to do, and waits; the records after it follow once it passes", async () => {
  await withRelay(2, 4, async ({ lines, pending, read }) => {
    const named = () => lines.find((l) => String((l.error as { message?: string } | undefined)?.message ?? "").includes("outbox record 1 of handler h ("));
    await waitUntil("the record named", () => named() || undefined, { timeoutMs: 30_000 });
    expect((named()!.error as { message: string }).message).toMatch(/is larger than big takes .*raise the topic's max\.message\.bytes .*or delete the row from kexo_outbox/);
    expect(pending()).toBe(2);
    // The broker takes it once the refusals run out (a raised limit): nothing lost, order kept.
    await waitUntil("the outbox drained", () => pending() === 0 || undefined, { timeoutMs: 30_000 });
    expect(await read()).toEqual(["r0", "r1"]);
  });
}, 60_000);
