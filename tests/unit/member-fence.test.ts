// The membership fence (src/kafka/membership.ts MemberFence) of a real kafkajs consumer on the
// development broker: it follows the coordinator's answers to the member's heartbeats. An answer
// that the member is out of its generation (UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION) marks it out at
// once, until kafkajs rejoined: a member dropped from a rebalance (a long batch held its rejoin
// past the rebalance timeout) fetches on until kafkajs notices, and must not start or record
// anything of partitions another member owns now. The executor's side: tests/unit/executor-fence.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { Kafka, logLevel } from "kafkajs";
import { ApiKey, createMockCluster, KafkaErr, type MockCluster } from "../../src/dev/mock-cluster.ts";
import { memberFence } from "../../src/kafka/membership.ts";
import { waitUntil } from "../support/wait.ts";

const GROUP = "member-fence-unit";
let cluster: MockCluster;
let kafka: Kafka;

beforeAll(() => {
  cluster = createMockCluster();
  cluster.createTopic("fenced", 1);
  kafka = new Kafka({ clientId: "member-fence-unit", brokers: cluster.bootstrap.split(","), logLevel: logLevel.NOTHING });
});
afterAll(() => cluster.close());

test("a heartbeat answered 'out of the generation' marks the member out until its rejoin is accepted; confirm() asks the coordinator", async () => {
  const fence = memberFence(GROUP, 6000);
  const consumer = kafka.consumer({ groupId: GROUP, sessionTimeout: 6000, heartbeatInterval: 200, maxWaitTimeInMs: 100 });
  let joins = 0;
  consumer.on(consumer.events.GROUP_JOIN, () => void joins++);
  await consumer.connect();
  await consumer.subscribe({ topics: ["fenced"], fromBeginning: true });
  await consumer.run({ eachBatch: async () => {} });
  try {
    await waitUntil("joined", () => joins >= 1 || undefined, { timeoutMs: 30_000 });
    // Accepted heartbeats keep `at` fresh.
    const joinedAt = Date.now();
    await waitUntil("a heartbeat accepted after the join", () => fence.at >= joinedAt || undefined, { timeoutMs: 5000 });
    expect(fence.out).toBe(false);

    // Stale (as after a stall): confirm() sends a heartbeat of its own and says yes once accepted.
    fence.at = Date.now() - 10_000;
    const asked = Date.now();
    expect(await fence.confirm()).toBe(true);
    expect(fence.at).toBeGreaterThanOrEqual(asked);

    // The coordinator answers the next heartbeat that the member's generation is gone.
    cluster.pushRequestErrors(ApiKey.Heartbeat, [KafkaErr.ILLEGAL_GENERATION]);
    await waitUntil("the fence marked out by the answer", () => fence.out || undefined, { timeoutMs: 5000 });
    // Out: confirm() says no without asking.
    expect(await fence.confirm()).toBe(false);
    // kafkajs rejoins; the SyncGroup (and heartbeats) accepted then end it.
    await waitUntil("rejoined and no longer out", () => (joins >= 2 && !fence.out) || undefined, { timeoutMs: 30_000 });
    expect(await fence.confirm()).toBe(true);

    // An out answer to a request sent before one the coordinator accepted is about a generation left.
    fence.refused(fence.at - 1);
    expect(fence.out).toBe(false);
    fence.refused(Date.now());
    expect(fence.out).toBe(true);
    fence.accepted(Date.now() - 60_000); // an answer to an older request does not end it
    expect(fence.out).toBe(true);
    fence.accepted(Date.now());
    expect(fence.out).toBe(false);
  } finally {
    cluster.clearRequestErrors(ApiKey.Heartbeat);
    await consumer.disconnect();
  }
}, 90_000);
