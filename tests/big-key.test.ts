// A poison message with a 1 MB key: dead-lettered with its key whole, and the worker stays in its
// group. kafkajs's partitioner hashed the key through its 64-bit Long emulation (≈ 45 µs per key
// byte), which held the event loop ≈ 45 s while the dead letter was sent: heartbeats stopped, the
// coordinator evicted the member, and every handler stood still (src/kafka/partitioner.ts).
import { expect, test } from "bun:test";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { callsLog } from "./support/tmp.ts";
import { waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "big-key";
let broker: TestBroker;
let dir: string;
const HANDLER = `
import { defineHandler, v } from "kexo";
import { appendFileSync } from "node:fs";
export default defineHandler({
  topics: ["${TOPIC}"],
  schema: v.object({ id: v.string() }),
  async handle(p) { appendFileSync(process.env.CALLS_LOG, JSON.stringify({ id: p.id }) + "\\n"); },
});
`;
withBroker({ [TOPIC]: 1, [`${TOPIC}.dlq`]: 4 }, { "bk.ts": HANDLER }, (f) => ({ broker, dir } = f));

test("a poison message with a 1 MB key is dead-lettered whole; the worker keeps its membership and goes on", async () => {
  const { env, calls } = callsLog<{ id: string }>(dir);
  const w = new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), join(dir, "j.db")), { env });
  try {
    await w.waitJoined();
    const key = Buffer.alloc(1024 * 1024, 0x61);
    await broker.produce(TOPIC, [{ key, value: "not json", partition: 0 }, { key: "k", value: JSON.stringify({ id: "after" }), partition: 0 }]);
    // Handled within 30 s: with kafkajs's hash the loop was held ≈ 45-55 s (a liveness bound, ten
    // times what it takes now, not a speed goal).
    await waitUntil("the next message handled", () => calls().some((c) => c.id === "after") || undefined, { timeoutMs: 30_000 });
    const [letter] = await broker.readAll(`${TOPIC}.dlq`, 1);
    expect(letter!.key!.equals(key)).toBe(true);
    expect(letter!.headers["kexo-dlq-reason"]?.toString()).toBe("poison");
    // One join, no rebalance on the way.
    expect(w.lines.filter((l) => l.msg === "joined group").length).toBe(1);
  } finally {
    w.kill("SIGKILL");
  }
}, 180_000);
