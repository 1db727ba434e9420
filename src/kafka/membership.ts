// Fast restart after a crash: rejoin the consumer group with the member id the crashed process
// had (kept in the journal). The coordinator then sees a known member rejoining and rebalances at
// once, instead of waiting for the dead member's session to expire (session timeout − 1 s on the
// development broker; the full session timeout on Kafka). An id the coordinator no longer knows
// gets UNKNOWN_MEMBER_ID, on which kafkajs clears it and joins afresh, so a stale hint costs one
// round trip. kafkajs has no option for this (no static membership), hence the narrow patch.
// The same patch lets order: "key" finish and share its running work before a rejoin (beforeJoin).
// @ts-expect-error: kafkajs's internal consumer group has no type declarations.
import ConsumerGroup from "kafkajs/src/consumer/consumerGroup.js";

const hints = new Map<string, string>();
const gates = new Map<string, () => Promise<void>>();
let patched = false;

type Group = { groupId: string; memberId: string | null };

function patch(): void {
  if (patched) return;
  patched = true;
  const proto = (ConsumerGroup as { prototype: { joinAndSync(this: Group): Promise<unknown> } }).prototype;
  const original = proto.joinAndSync;
  proto.joinAndSync = function (this: Group) {
    const hint = hints.get(this.groupId);
    if (hint !== undefined) {
      hints.delete(this.groupId);
      if (!this.memberId) this.memberId = hint;
    }
    const gate = gates.get(this.groupId);
    return gate ? gate().then(() => original.call(this)) : original.call(this);
  };
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
 */
export function beforeJoin(groupId: string, gate: () => Promise<void>): void {
  patch();
  gates.set(groupId, gate);
}
