// SPEC: "kexo creates missing dead-letter and outbox topics when the broker allows it; otherwise
// it says which topic is missing". On a cluster that creates no topic on its own
// (auto.create.topics.enable=false, the default of Amazon MSK and Confluent Cloud) kexo asks for
// the topics it writes to with CreateTopics: __kexo_progress (compacted) and the dead-letter
// topics at the start, an outbox topic when its first send finds it missing. The development broker stands in
// for such a cluster: the topics answer UNKNOWN_TOPIC_OR_PARTITION to Metadata until created, and a
// proxy in front of it (support/admin-proxy.ts) lets kafkajs's admin create topics there.
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { PROGRESS_TOPIC } from "../src/kafka/progress-log.ts";
import { type AdminProxy, startAdminProxy } from "./support/admin-proxy.ts";
import { startBroker, type TestBroker } from "./support/broker.ts";
import { tempDir } from "./support/tmp.ts";
import { waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "tc-in";
const DLQ = `${TOPIC}.dlq`;
const OUT = "tc-out";
const UNKNOWN_TOPIC_OR_PARTITION = 3;
const TOPIC_AUTHORIZATION_FAILED = 29;

const HANDLER = `
import { defineHandler, v, PermanentError } from "kexo";
export default defineHandler({
  topics: ["${TOPIC}"],
  schema: v.object({ id: v.string() }),
  async handle(p, ctx) {
    if (p.id === "bad") throw new PermanentError("refused");
    ctx.emit("${OUT}", { key: p.id, value: { id: p.id } });
  },
});
`;

// A RegExp subscription: its dead-letter topic is known only at its first dead letter.
const RE_TOPIC = "tc-re-a";
const RE_DLQ = `${RE_TOPIC}.dlq`;
const RE_HANDLER = `
import { defineHandler, PermanentError } from "kexo";
export default defineHandler({
  topics: [/^tc-re-.*/],
  async handle() {
    throw new PermanentError("refused");
  },
});
`;

let broker: TestBroker;
let proxy: AdminProxy;
let dir: string;

describe("a cluster that creates no topics by itself", () => {
  beforeAll(async () => {
    broker = await startBroker({ [TOPIC]: 2, [RE_TOPIC]: 1 });
  });
  afterAll(async () => {
    await broker.close();
  });
  beforeEach(async () => {
    // Missing until created: the progress topic (made by startBroker), the dead-letter and outbox topics.
    for (const t of [PROGRESS_TOPIC, DLQ, OUT, RE_DLQ]) broker.cluster.setTopicError(t, UNKNOWN_TOPIC_OR_PARTITION);
    proxy = await startAdminProxy(broker.cluster);
    dir = tempDir();
    await Bun.write(join(dir, "handlers", "tc.ts"), HANDLER);
    await Bun.write(join(dir, "handlers", "re.ts"), RE_HANDLER);
  });
  afterEach(async () => {
    await proxy.close();
  });

  test("CreateTopics allowed: kexo creates __kexo_progress (compacted) and the dead-letter topic at the start, the outbox topic when its first send finds it missing, a RegExp subscription's dead-letter topic at its first dead letter", async () => {
    const w = new WorkerProcess(runArgs(proxy.brokers, join(dir, "handlers"), join(dir, "journal.db")));
    await w.waitJoined(2);
    const atStart = proxy.requests.map((r) => ({ topic: r.topic, errorCode: r.errorCode, configs: r.configs, numPartitions: r.numPartitions, replicationFactor: r.replicationFactor }));
    // The broker's defaults (-1), as its auto-creation would use.
    expect(atStart.sort((a, b) => a.topic.localeCompare(b.topic))).toEqual([
      { topic: PROGRESS_TOPIC, errorCode: 0, configs: { "cleanup.policy": "compact" }, numPartitions: -1, replicationFactor: -1 },
      { topic: DLQ, errorCode: 0, configs: {}, numPartitions: -1, replicationFactor: -1 },
    ]);
    expect(w.find((l) => l.msg === "created missing topics")?.topics).toEqual(expect.arrayContaining([PROGRESS_TOPIC, DLQ]));

    await broker.produce(TOPIC, [{ value: JSON.stringify({ id: "a" }), partition: 0 }, { value: JSON.stringify({ id: "bad" }), partition: 1 }]);
    await broker.produce(RE_TOPIC, [{ value: "x" }]);
    await waitUntil("the RegExp subscription's dead-letter topic created", () => proxy.requests.some((r) => r.topic === RE_DLQ) || undefined);
    expect((await broker.readAll(RE_DLQ, 1, 20_000)).map((m) => m.value?.toString())).toEqual(["x"]);
    await waitUntil("the outbox topic created", () => proxy.requests.some((r) => r.topic === OUT) || undefined);
    const out = await broker.readAll(OUT, 1, 20_000);
    const dead = await broker.readAll(DLQ, 1, 20_000);
    expect(out.map((m) => m.key?.toString())).toEqual(["a"]);
    expect(dead.map((m) => [m.value?.toString(), m.headers["kexo-dlq-reason"]?.toString()])).toEqual([['{"id":"bad"}', "permanent"]]);
    expect(proxy.requests.filter((r) => r.topic === OUT).map((r) => r.errorCode)).toEqual([0]);
    // No topic was named as one kexo could not create.
    expect(w.find((l) => l.component === "topics" && l.level === "warn")).toBeUndefined();

    w.kill("SIGTERM");
    expect(await w.exited()).toBe(0);
    // Asked once each: a second start finds them all.
    const again = new WorkerProcess(runArgs(proxy.brokers, join(dir, "handlers"), join(dir, "journal.db")));
    await again.waitJoined(2);
    expect(proxy.requests.map((r) => r.topic).sort()).toEqual([PROGRESS_TOPIC, OUT, DLQ, RE_DLQ].sort());
    // An operator deletes the dead-letter topic (to purge it): the next dead letter finds it
    // missing, and kexo asks for it again rather than trusting what it listed at the start.
    broker.cluster.setTopicError(DLQ, UNKNOWN_TOPIC_OR_PARTITION);
    proxy.forget(DLQ);
    await broker.produce(TOPIC, [{ value: JSON.stringify({ id: "bad" }), partition: 0 }]);
    await waitUntil("the dead-letter topic asked for again", () => proxy.requests.filter((r) => r.topic === DLQ).length === 2 || undefined);
    expect((await broker.readAll(DLQ, 2, 20_000)).length).toBe(2);
    again.kill("SIGTERM");
    expect(await again.exited()).toBe(0);
  }, 120_000);

  test("CreateTopics refused: __kexo_progress missing stops the start with exit 69, naming the topic, the refusal and what to do", async () => {
    proxy.refuse(TOPIC_AUTHORIZATION_FAILED);
    const w = new WorkerProcess(runArgs(proxy.brokers, join(dir, "handlers"), join(dir, "journal.db")));
    expect(await w.exited()).toBe(69);
    const said = w.raw.join("\n");
    expect(said).toContain(`topic ${PROGRESS_TOPIC} does not exist and kexo could not create it (TOPIC_AUTHORIZATION_FAILED`);
    expect(said).toContain("create it (1 partition is enough; cleanup.policy=compact), or allow kexo's principal to create topics (CreateTopics)");
    expect(said).not.toContain("check --brokers and that the broker is up");
    // The dead-letter topic was asked for too, and its refusal logged with the topic's name.
    const refused = w.find((l) => l.component === "topics" && l.level === "warn" && l.topic === DLQ);
    expect(String(refused?.error)).toStartWith("TOPIC_AUTHORIZATION_FAILED");
  }, 60_000);
});
