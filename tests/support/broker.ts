// The development broker for tests (librdkafka's mock cluster in this process, real TCP to it),
// plus a kafkajs client for producing test data and reading dead letters.
import { brokerThreadParked } from "./abort-guard.ts";
import { afterAll, beforeAll } from "bun:test";
import { Kafka, logLevel } from "kafkajs";
import { join } from "node:path";
import { createMockCluster, type MockCluster } from "../../src/dev/mock-cluster.ts";
import { silenceTimeoutNegativeWarning } from "../../src/kafka/client.ts";
import { PROGRESS_TOPIC } from "../../src/kafka/progress-log.ts";
import { tempDir } from "./tmp.ts";
import { killLeftovers, warnKilled } from "./worker.ts";

export interface TestBroker {
  cluster: MockCluster;
  brokers: string;
  kafka: Kafka;
  produce(topic: string, messages: { key?: string | Buffer | null; value: string | Buffer | null; headers?: Record<string, string | Buffer | (string | Buffer)[]>; partition?: number }[]): Promise<void>;
  /**
   * Reads a whole topic from the beginning (with a fresh group), until `count` records or the
   * timeout. `headers` holds the last value of a repeated name, `allHeaders` every value.
   */
  readAll(topic: string, count: number, timeoutMs?: number): Promise<{ key: Buffer | null; value: Buffer | null; headers: Record<string, Buffer>; allHeaders: Record<string, Buffer[]>; partition: number; offset: string }[]>;
  close(): Promise<void>;
}

export async function startBroker(topics: Record<string, number> = {}, opts: { brokers?: number } = {}): Promise<TestBroker> {
  silenceTimeoutNegativeWarning();
  const cluster = createMockCluster({ brokers: opts.brokers });
  cluster.createTopic(PROGRESS_TOPIC, 1);
  for (const [t, n] of Object.entries(topics)) cluster.createTopic(t, n);
  const kafka = new Kafka({ clientId: "kexo-test", brokers: cluster.bootstrap.split(","), logLevel: logLevel.NOTHING });
  const producer = kafka.producer();
  let connected = false;
  return {
    cluster,
    brokers: cluster.bootstrap,
    kafka,
    async produce(topic, messages) {
      if (!connected) {
        await producer.connect();
        connected = true;
      }
      for (let i = 0; i < messages.length; i += 1000) {
        await producer.send({ topic, acks: -1, messages: messages.slice(i, i + 1000) });
      }
    },
    readAll(topic, count, timeoutMs = 20_000) {
      return readTopic(kafka, topic, count, timeoutMs);
    },
    async close() {
      // A parked mock thread (abort-guard.ts) never answers again: its cluster is left as it is.
      if (brokerThreadParked()) return;
      if (connected) await producer.disconnect();
      cluster.close();
    },
  };
}

type ReadRecord = Awaited<ReturnType<TestBroker["readAll"]>>[number];
let readers = 0;

/**
 * Reads a whole topic from the beginning with a fresh group (isolation read_committed, kafkajs's
 * default), until `count` records or the timeout.
 */
export async function readTopic(kafka: Kafka, topic: string, count: number, timeoutMs = 20_000): Promise<ReadRecord[]> {
  const consumer = kafka.consumer({ groupId: `kexo-test-reader-${process.pid}-${++readers}`, sessionTimeout: 6000, heartbeatInterval: 500 });
  const out: ReadRecord[] = [];
  await consumer.connect();
  await consumer.subscribe({ topics: [topic], fromBeginning: true });
  let done!: () => void;
  const finished = new Promise<void>((r) => (done = r));
  await consumer.run({
    eachMessage: async ({ partition, message }) => {
      const headers: Record<string, Buffer> = {};
      const allHeaders: Record<string, Buffer[]> = {};
      for (const [k, v] of Object.entries(message.headers ?? {})) {
        if (v === undefined) continue;
        allHeaders[k] = (Array.isArray(v) ? v : [v]).map((x) => (Buffer.isBuffer(x) ? x : Buffer.from(String(x))));
        headers[k] = allHeaders[k].at(-1)!;
      }
      out.push({ key: message.key, value: message.value, headers, allHeaders, partition, offset: message.offset });
      if (out.length >= count) done();
    },
  });
  await Promise.race([finished, new Promise((r) => setTimeout(r, timeoutMs))]);
  await consumer.disconnect();
  return out;
}

/** What a test file's fixture holds once its beforeAll ran (withBroker). */
export interface BrokerFixture {
  broker: TestBroker;
  /** A temporary directory; the handler files are in its `handlers` directory. */
  dir: string;
}

/**
 * The integration tests' common fixture: before the file's tests, a development broker with
 * `topics` and a temporary directory with `handlers` (file name → source) in `DIR/handlers`;
 * after them, the broker closed. `ready` receives them (assign them to the file's variables) and
 * may do more (produce, write files).
 */
export function withBroker(
  topics: Record<string, number>,
  handlers: Record<string, string>,
  ready: (f: BrokerFixture) => unknown,
  opts: { brokers?: number } = {},
): void {
  let broker: TestBroker | undefined;
  beforeAll(async () => {
    broker = await startBroker(topics, opts);
    const dir = tempDir();
    for (const [file, source] of Object.entries(handlers)) await Bun.write(join(dir, "handlers", file), source);
    await ready({ broker, dir });
  });
  afterAll(async () => {
    // Before the broker goes, so that no worker sees it vanish (tests/support/preload.ts kills the rest).
    warnKilled(killLeftovers());
    await broker?.close();
  });
}
