// Guarantee 7 when Kafka's committed offset lags this instance's journal (a SIGKILL between the
// journal COMMIT and the offset commit): an instance that restarts and is stopped gracefully
// before its first batch arrives must still hand that progress on. It used to take its journal's
// progress for Kafka's committed offset, commit nothing, publish nothing, and the next owner
// (with its own journal) handled those messages again.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { join } from "node:path";
import { columnIn } from "./support/db.ts";
import { effectsHandler } from "./support/handlers.ts";
import { startBroker, type TestBroker } from "./support/broker.ts";
import { tempDir } from "./support/tmp.ts";
import { sleep, waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "behind-in";
const COUNT = 300;
let broker: TestBroker;
let dir: string;

beforeAll(async () => {
  broker = await startBroker({ [TOPIC]: 1 });
  dir = tempDir();
  await Bun.write(join(dir, "handlers", "h.ts"), effectsHandler(TOPIC));
});

afterAll(async () => {
  await broker?.close();
});

const effects = (db: string) => columnIn<number>(db, "SELECT n FROM effects");

test("stopped before its first batch after a crash: the journal's progress still reaches the next owner", async () => {
  const a = join(dir, "a.db");
  const b = join(dir, "b.db");
  await broker.produce(TOPIC, Array.from({ length: COUNT }, (_, n) => ({ key: String(n), value: JSON.stringify({ n }) })));
  const workers: WorkerProcess[] = [];
  const start = (db: string, env: Record<string, string> = {}) => {
    const w = new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), db), { env });
    workers.push(w);
    return w;
  };
  try {
    // 1. A handles messages and dies at its first offset commit: the journal has them, Kafka not.
    const first = start(a, { KEXO_CRASH_AT: "offsets.commit" });
    expect(await first.exited()).toBe(137);
    const done = effects(a).length;
    expect(done).toBeGreaterThan(0);

    // 2. A restarts and is told to stop the moment it has joined, before a batch reaches it.
    const again = start(a);
    again.onLog((l) => l.msg === "joined group", () => again.kill("SIGTERM"));
    expect(await again.exited()).toBe(0);

    // 3. B, with its own journal, takes the partition and must not redo A's messages.
    const other = start(b);
    await other.waitJoined();
    await broker.produce(TOPIC, Array.from({ length: COUNT }, (_, i) => ({ key: String(i), value: JSON.stringify({ n: COUNT + i }) })));
    await waitUntil("the second batch handled", () => effects(b).some((n) => n === 2 * COUNT - 1) || undefined, { timeoutMs: 60_000 });
    await sleep(1000);
    other.kill("SIGTERM");
    expect(await other.exited()).toBe(0);
    const seen = new Map<number, number>();
    for (const db of [a, b]) for (const n of effects(db)) seen.set(n, (seen.get(n) ?? 0) + 1);
    const twice = [...seen].filter(([, c]) => c > 1).map(([n]) => n);
    expect({ done, twice: twice.length, first: twice.slice(0, 5) }).toEqual({ done, twice: 0, first: [] });
    expect(seen.size).toBe(2 * COUNT);
  } finally {
    for (const w of workers) w.kill("SIGKILL");
  }
}, 120_000);
