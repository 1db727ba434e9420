// Fast restart after a crash: rejoin the consumer group with the member id the crashed process
// had (kept in the journal). The coordinator then sees a known member rejoining and rebalances at
// once, instead of waiting for the dead member's session to expire (session timeout − 1 s on the
// development broker; the full session timeout on Kafka). An id the coordinator no longer knows
// gets UNKNOWN_MEMBER_ID, on which kafkajs clears it and joins afresh, so a stale hint costs one
// round trip. kafkajs has no option for this (no static membership), hence the narrow patch.
// The same patch lets a consumer share its journaled progress before a rejoin or a leave
// (beforeJoin, beforeLeave): partitions move only after every member rejoined or left.
// @ts-expect-error: kafkajs's internal consumer group has no type declarations.
import ConsumerGroup from "kafkajs/src/consumer/consumerGroup.js";

const hints = new Map<string, string>();
/** The consumer group object kafkajs last joined with, per group id (see commitThrough). */
const groups = new Map<string, Group>();
const gates = new Map<string, Set<(lost: boolean) => Promise<void>>>();
const leaveGates = new Map<string, Set<(commit: CommitVia) => Promise<void>>>();
let patched = false;

/** Commits offsets through the group itself (kafkajs's consumer no-ops once its runner stopped). */
export type CommitVia = (offsets: { topic: string; partition: number; offset: string }[]) => Promise<void>;

type Group = {
  groupId: string;
  memberId: string | null;
  generationId: number | null;
  commitOffsets(offsets: { topics: { topic: string; partitions: { partition: number; offset: string }[] }[] }): Promise<void>;
};

/** kafkajs's consumer.commitOffsets list, in the shape its consumer group takes. */
function byTopic(offsets: { topic: string; partition: number; offset: string }[]) {
  const topics = new Map<string, { partition: number; offset: string }[]>();
  for (const { topic, partition, offset } of offsets) {
    let list = topics.get(topic);
    if (!list) topics.set(topic, (list = []));
    list.push({ partition, offset });
  }
  return { topics: [...topics].map(([topic, partitions]) => ({ topic, partitions })) };
}

async function all<A extends unknown[]>(set: Set<(...a: A) => Promise<void>> | undefined, ...args: A): Promise<void> {
  if (set) await Promise.all([...set].map((g) => g(...args)));
}

function patch(): void {
  if (patched) return;
  patched = true;
  const proto = (ConsumerGroup as { prototype: { joinAndSync(this: Group): Promise<unknown>; leave(this: Group): Promise<void> } }).prototype;
  const original = proto.joinAndSync;
  const leave = proto.leave;
  proto.leave = function (this: Group) {
    // Still a member here: its generation's commits are accepted unless a rebalance began.
    return all(leaveGates.get(this.groupId), (offsets) => this.commitOffsets(byTopic(offsets)))
      .then(() => leave.call(this))
      .finally(() => {
        if (groups.get(this.groupId) === this) groups.delete(this.groupId);
      });
  };
  proto.joinAndSync = function (this: Group) {
    // Joined before, and kafkajs cleared the member id: the coordinator answered UNKNOWN_MEMBER_ID
    // (this member's session expired, a stalled process say), so its partitions went to others.
    const lost = this.generationId !== null && this.generationId !== undefined && !this.memberId;
    groups.set(this.groupId, this);
    const hint = hints.get(this.groupId);
    if (hint !== undefined) {
      hints.delete(this.groupId);
      if (!this.memberId) this.memberId = hint;
    }
    const gate = gates.get(this.groupId);
    return gate ? all(gate, lost).then(() => original.call(this)) : original.call(this);
  };
}

/**
 * Commits through the consumer group object of `groupId`'s latest join, undefined before any.
 * Not consumer.commitOffsets: kafkajs's runner resolves that without committing anything while it
 * is not running (stopping, or a restart after a crash still joining), and a caller that took
 * the resolution for a commit would neither commit nor share that progress again.
 */
export function commitThrough(groupId: string): CommitVia | undefined {
  const group = groups.get(groupId);
  return group && ((offsets) => group.commitOffsets(byTopic(offsets)));
}

/** The next join of `groupId` in this process reuses `memberId` (once). */
export function rejoinAs(groupId: string, memberId: string): void {
  patch();
  hints.set(groupId, memberId);
}

/**
 * Every (re)join of `groupId` in this process first awaits `gate` (it must not reject): work that
 * kafkajs does not see (messages still running after their batch returned) finishes and is shared
 * before the partitions can move. The gate must end well within the group's rebalance timeout.
 * `lost`: the coordinator no longer knew this member (its session expired): its partitions have
 * moved already, and another member may be running their messages.
 */
export function beforeJoin(groupId: string, gate: (lost: boolean) => Promise<void>): () => void {
  return add(gates, groupId, gate);
}

/**
 * Every leave of `groupId` in this process (a stop, or kafkajs's own disconnect after a crash)
 * first awaits `gate` (it must not reject), with a commit that still works there.
 */
export function beforeLeave(groupId: string, gate: (commit: CommitVia) => Promise<void>): () => void {
  return add(leaveGates, groupId, gate);
}

function add<G>(map: Map<string, Set<G>>, groupId: string, gate: G): () => void {
  patch();
  let set = map.get(groupId);
  if (!set) map.set(groupId, (set = new Set()));
  set.add(gate);
  return () => set.delete(gate);
}
