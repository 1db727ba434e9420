// RegExp topics, end to end: the handler consumes every topic its pattern matches, but never its
// own dead-letter topics (/^orders\./ matches `orders.eu.dlq` too: dead letters would come back
// to the handler, and theirs would go to `orders.eu.dlq.dlq`, and so on).
import { expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { withBroker, type TestBroker } from "./support/broker.ts";
import { readJsonLines } from "./support/tmp.ts";
import { waitUntil } from "./support/wait.ts";
import { runArgs, WorkerProcess } from "./support/worker.ts";
import { TopicPattern } from "../src/kafka/consumer.ts";

const HANDLER = `
import { defineHandler, v } from "kexo";
import { appendFileSync } from "node:fs";
export default defineHandler({
  topics: [/^orders\\./],
  schema: v.object({ n: v.number() }),
  async handle(value, ctx) {
    appendFileSync(process.env.LOG!, JSON.stringify({ topic: ctx.message.topic, n: value.n }) + "\\n");
  },
});
`;

let broker: TestBroker;
let dir: string;
withBroker({ "orders.eu": 2, "orders.us": 1, "orders.eu.dlq": 1, "other": 1 }, { "orders.ts": HANDLER }, (f) => ({ broker, dir } = f));

test("a RegExp topic consumes the topics it matches, never its own dead-letter topics", async () => {
  const json = (n: number) => ({ value: JSON.stringify({ n }) });
  await broker.produce("orders.eu", [json(1), json(2), { value: "not json" }]);
  await broker.produce("orders.us", [json(3)]);
  // Letters already dead there, and a topic the pattern does not match.
  await broker.produce("orders.eu.dlq", [json(100), json(101)]);
  await broker.produce("other", [json(200)]);
  const log = join(dir, "handled.log");
  writeFileSync(log, "");
  const w = new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), join(dir, "j.db")), { env: { LOG: log } });
  try {
    await w.waitJoined();
    // The poison message's dead letter lands beside the two that were there.
    const dlq = await broker.readAll("orders.eu.dlq", 3);
    expect(dlq.map((r) => r.value?.toString()).sort()).toEqual(["not json", JSON.stringify({ n: 100 }), JSON.stringify({ n: 101 })]);
    await waitUntil("3 handled", () => readJsonLines(log).length >= 3 || undefined);
    await Bun.sleep(1000);
    const handled = readJsonLines<{ topic: string; n: number }>(log).sort((a, b) => a.n - b.n);
    expect(handled).toEqual([{ topic: "orders.eu", n: 1 }, { topic: "orders.eu", n: 2 }, { topic: "orders.us", n: 3 }]);
  } finally {
    w.kill();
  }
});

test("the pattern as kafkajs sees it: a RegExp without g/y, no internal topics unless named, no own dead-letter topics", () => {
  const dlq = (t: string) => `${t}.dlq`;
  const p = new TopicPattern(/orders/gi, dlq);
  expect(p).toBeInstanceOf(RegExp);
  expect(p.flags).toBe("i");
  expect(["ORDERS", "orders.eu", "orders.eu.dlq", "orders.dlq", "__orders", "x.dlq"].filter((t) => p.test(t))).toEqual(["ORDERS", "orders.eu"]);
  // A handler for dead letters: `a.dlq` is a source, its own letters go to `a.dlq.dlq`.
  const letters = new TopicPattern(/\.dlq$/, dlq);
  expect(["a.dlq", "a.dlq.dlq", "a"].filter((t) => letters.test(t))).toEqual(["a.dlq"]);
  // deadLetter: false keeps every match; a pattern naming internal topics may have them.
  expect(new TopicPattern(/orders/, () => false).test("orders.dlq")).toBe(true);
  expect(new TopicPattern(/^__kexo/, dlq).test("__kexo_progress")).toBe(true);
});
