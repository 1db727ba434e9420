// order: "topic" across instances: every partition of a topic goes to one member of the group, so
// "one message at a time per topic" holds for the group, not only within each instance (kafkajs's
// RoundRobinAssigner spreads a topic's partitions over the members, which then ran its messages
// side by side). Topics are spread over the members instead, and stay with their owner while the
// split stays even (each member says in its JoinGroup metadata which topics it holds), so a member
// joining does not take a topic from under a message waiting for its next try there.
//
// Every member of such a group offers only this assigner (no round-robin fallback, which a group
// with an older kexo in it would settle on, breaking the order unnoticed): Kafka refuses a member
// offering only another one (INCONSISTENT_GROUP_PROTOCOL); librdkafka's mock broker aborts on an
// assertion instead (rd_kafka_mock_cgrp_elect_leader wants every member's first protocol alike).
import { AssignerProtocol, type PartitionAssigner } from "kafkajs";

export const TOPIC_ASSIGNER = "KexoTopicAssigner";

export interface TopicMember {
  memberId: string;
  /** Topics the member subscribes to. */
  topics: string[];
  /** Topics the member held in the previous generation. */
  held: string[];
}

/**
 * Whole topics per member: a topic stays with the member that held it while that member has
 * fewer than ceil(topics / members) topics; the others go, in name order, to the subscribed member
 * with the fewest topics (ties: the lowest member id).
 */
export function assignTopics(members: TopicMember[], topics: string[]): Map<string, string[]> {
  const sorted = [...members].sort((a, b) => (a.memberId < b.memberId ? -1 : a.memberId > b.memberId ? 1 : 0));
  const out = new Map<string, string[]>(sorted.map((m) => [m.memberId, []]));
  if (sorted.length === 0) return out;
  const names = [...new Set(topics)].sort();
  const quota = Math.ceil(names.length / sorted.length);
  const left: string[] = [];
  for (const t of names) {
    const holder = sorted.find((m) => m.held.includes(t) && m.topics.includes(t));
    const mine = holder && out.get(holder.memberId)!;
    if (mine && mine.length < quota) mine.push(t);
    else left.push(t);
  }
  for (const t of left) {
    let best: string[] | undefined;
    for (const m of sorted) {
      const mine = out.get(m.memberId)!;
      if (m.topics.includes(t) && (!best || mine.length < best.length)) best = mine;
    }
    best?.push(t);
  }
  return out;
}

/** The assigner; `held` says which topics this member holds now (its last assignment's). */
export function topicAssigner(held: () => string[]): PartitionAssigner {
  return ({ cluster }) => ({
    name: TOPIC_ASSIGNER,
    version: 0,
    protocol({ topics }) {
      return {
        name: TOPIC_ASSIGNER,
        metadata: AssignerProtocol.MemberMetadata.encode({ version: 0, topics, userData: Buffer.from(JSON.stringify(held())) }),
      };
    },
    async assign({ members, topics }) {
      const decoded = members.map(({ memberId, memberMetadata }) => {
        const meta = AssignerProtocol.MemberMetadata.decode(memberMetadata);
        let claimed: unknown;
        try {
          claimed = JSON.parse(meta?.userData?.toString() || "[]");
        } catch {
          claimed = [];
        }
        const list = Array.isArray(claimed) ? claimed.filter((t): t is string => typeof t === "string") : [];
        return { memberId, topics: meta?.topics ?? topics, held: list };
      });
      // A topic without partitions yet (metadata not known) is left out, as RoundRobinAssigner does.
      const known = topics.filter((t) => cluster.findTopicPartitionMetadata(t).length > 0);
      return [...assignTopics(decoded, known)].map(([memberId, mine]) => ({
        memberId,
        memberAssignment: AssignerProtocol.MemberAssignment.encode({
          version: 0,
          assignment: Object.fromEntries(mine.map((t) => [t, cluster.findTopicPartitionMetadata(t).map((p) => p.partitionId).sort((a, b) => a - b)])),
          userData: Buffer.alloc(0),
        }),
      }));
    },
  });
}
