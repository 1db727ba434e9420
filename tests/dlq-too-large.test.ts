// A dead letter the broker refuses as too large (max.message.bytes: a message near the source
// topic's limit grows past it with kexo's headers, or the dead-letter topic has a lower limit)
// must not hold its partition forever: kexo writes it again at once with short error texts, then
// without its value (and a large key), naming what it left out; the journal keeps the whole
// message for `dlq show` and `dlq replay`. The development broker refuses through fault injection.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { ApiKey } from "../src/dev/mock-cluster.ts";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { callsLog } from "./support/tmp.ts";
import { waitUntil } from "./support/wait.ts";
import { kexoAsync, runArgs, WorkerProcess } from "./support/worker.ts";

const MESSAGE_TOO_LARGE = 10;
let broker: TestBroker;
let dir: string;

const HANDLER = `
import { defineHandler, v } from "kexo";
import { appendFileSync } from "node:fs";

export default defineHandler({
  topics: ["tl-in"],
  schema: v.object({ n: v.number() }),
  async handle(p, ctx) {
    appendFileSync(process.env.CALLS_LOG!, JSON.stringify({ id: ctx.id, n: p.n }) + "\\n");
  },
});
`;

withBroker({ "tl-in": 1, "tl-in.dlq": 1 }, { "tl.ts": HANDLER }, (f) => ({ broker, dir } = f));

test("a dead letter refused as too large is written smaller at once, naming what it left out; the partition goes on", async () => {
  const log = callsLog<{ id: string; n: number }>(dir);
  const key = Buffer.alloc(2000, "k");
  const value = Buffer.from("not json ".repeat(400));
  await broker.produce("tl-in", [
    { key, value, headers: { trace: "t-1" } },
    { key: "good", value: JSON.stringify({ n: 1 }) },
  ]);
  // The next two produce requests (kexo's dead-letter writes) are refused as too large.
  broker.cluster.pushRequestErrors(ApiKey.Produce, [MESSAGE_TOO_LARGE, MESSAGE_TOO_LARGE]);
  const db = join(dir, "journal.db");
  const w = new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), db), { env: log.env });
  await waitUntil("the good message handled", () => log.calls().length >= 1 || undefined, { timeoutMs: 40_000 });

  const [dead] = await broker.readAll("tl-in.dlq", 1);
  expect([dead?.key, dead?.value]).toEqual([null, null]);
  expect(dead?.headers["kexo-dlq-omitted"]?.toString()).toStartWith(`value (${value.length} bytes), key (2000 bytes): the broker refused the dead letter as too large`);
  expect(dead?.headers.trace?.toString()).toBe("t-1");
  expect(dead?.headers["kexo-dlq-reason"]?.toString()).toBe("poison");
  expect(dead?.headers["kexo-dlq-error"]?.length).toBeLessThanOrEqual(1024);
  const refused = w.lines.filter((l) => String(l.msg).startsWith("the broker refused the dead letter as too large"));
  expect(refused.map((l) => String(l.msg).split("; ")[1])).toEqual([
    "writing it again with short error texts",
    "writing it again with its value (and a large key or headers) left out, kept in the journal",
  ]);
  expect(w.lines.filter((l) => l.msg === "dead-letter write failed; the partition waits and retries")).toEqual([]);

  // The journal has the whole message.
  await waitUntil("the dead letter journaled", async () => (await kexoAsync(["dlq", "list", "--db", `file:${db}`, "--json"], { cwd: dir })).stdout.includes('"id":1') || undefined);
  const shown = JSON.parse((await kexoAsync(["dlq", "show", "1", "--db", `file:${db}`, "--json"], { cwd: dir })).stdout) as { keyBase64: string; valueBase64: string };
  expect([shown.keyBase64, shown.valueBase64]).toEqual([key.toString("base64"), value.toString("base64")]);
  w.kill("SIGTERM");
  expect(await w.exited()).toBe(0);
}, 90_000);
