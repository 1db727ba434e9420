// The membership fence (src/kafka/membership.ts MemberFence) of a real kafkajs consumer on the
// development broker: it follows the coordinator's answers to the member's heartbeats. An answer
// that the member is out of its generation (UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION) marks it out at
// once, until kafkajs rejoined: a member dropped from a rebalance (a long batch held its rejoin
// past the rebalance timeout) fetches on until kafkajs notices, and must not start or record
// anything of partitions another member owns now. The executor's side: tests/unit/executor-fence.
import { expect, test } from "bun:test";
import type { Kafka } from "kafkajs";
// @ts-expect-error: kafkajs's broker connection has no type declarations.
import Broker from "kafkajs/src/broker/index.js";
import { ApiKey, KafkaErr, type MockCluster } from "../../src/dev/mock-cluster.ts";
import { memberFence } from "../../src/kafka/membership.ts";
import { withBroker } from "../support/broker.ts";
import { waitUntil } from "../support/wait.ts";

const GROUP = "member-fence-unit";
let cluster: MockCluster;
let kafka: Kafka;

withBroker({ fenced: 1, "late-sync": 2 }, {}, ({ broker }) => ({ cluster, kafka } = broker));

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

// The development broker answers a follower's SyncGroup that comes after the leader's with
// INVALID_REQUEST (it handed the assignments out at the leader's); kafkajs crashed the consumer on
// it, and the group took two more rebalances (10-20 s) to get the member's partitions running.
test("a follower's SyncGroup refused as late joins again at once instead of crashing its consumer", async () => {
  const group = "late-sync-unit";
  memberFence(group, 6000);
  type SyncRequest = { groupId: string; groupAssignment: unknown[] };
  const proto = (Broker as { prototype: { syncGroup(this: unknown, r: SyncRequest): Promise<unknown> } }).prototype;
  const sync = proto.syncGroup;
  let held = 0;
  // The first follower SyncGroup (no assignments in it) is sent a second late.
  proto.syncGroup = async function (this: unknown, r: SyncRequest) {
    if (r.groupId === group && r.groupAssignment.length === 0 && held++ === 0) await new Promise((done) => setTimeout(done, 1000));
    return sync.call(this, r);
  };
  const consumers = [0, 1].map(() => kafka.consumer({ groupId: group, sessionTimeout: 6000, heartbeatInterval: 200, maxWaitTimeInMs: 100 }));
  const crashes: unknown[] = [];
  const assigned = consumers.map(() => [] as number[]);
  try {
    for (const [i, c] of consumers.entries()) {
      c.on(c.events.CRASH, (e) => void crashes.push(e.payload.error));
      c.on(c.events.GROUP_JOIN, (e) => void (assigned[i] = e.payload.memberAssignment["late-sync"] ?? []));
      await c.connect();
      await c.subscribe({ topics: ["late-sync"], fromBeginning: true });
      await c.run({ eachBatch: async () => {} });
      // The second one joins once the first holds both partitions (its SyncGroup is the late one).
      if (i === 0) await waitUntil("the first consumer joined", () => assigned[0]!.length === 2 || undefined, { timeoutMs: 30_000 });
    }
    await waitUntil("both consumers hold a partition", () => (assigned.every((a) => a.length === 1) ? true : undefined), { timeoutMs: 30_000 });
    expect(held).toBeGreaterThan(0);
    expect(crashes).toEqual([]);
  } finally {
    proto.syncGroup = sync;
    await Promise.all(consumers.map((c) => c.disconnect()));
  }
}, 90_000);
