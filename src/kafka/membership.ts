// Fast restart after a crash: rejoin the consumer group with the member id the crashed process
// had (kept in the journal). The coordinator then sees a known member rejoining and rebalances at
// once, instead of waiting for the dead member's session to expire (session timeout − 1 s on the
// development broker; the full session timeout on Kafka). An id the coordinator no longer knows
// gets UNKNOWN_MEMBER_ID, on which kafkajs clears it and joins afresh, so a stale hint costs one
// round trip. kafkajs has no option for this (no static membership), hence the narrow patch.
// The same patch lets a consumer share its journaled progress before a rejoin or a leave
// (beforeJoin, beforeLeave): partitions move only after every member rejoined or left.
// It also keeps each group's MemberFence: when the coordinator last accepted a request of this
// process's member (a heartbeat or a SyncGroup, by the time it was sent).
// @ts-expect-error: kafkajs's internal consumer group has no type declarations.
import ConsumerGroup from "kafkajs/src/consumer/consumerGroup.js";
// @ts-expect-error: kafkajs's broker connection has no type declarations.
import Broker from "kafkajs/src/broker/index.js";
import type { Fence } from "../processing/executor.ts";

const hints = new Map<string, string>();
/** The consumer group object kafkajs last joined with, per group id (see commitThrough). */
const groups = new Map<string, Group>();
const gates = new Map<string, Set<(lost: boolean) => Promise<void>>>();
const leaveGates = new Map<string, Set<(commit: CommitVia) => Promise<void>>>();
const fences = new Map<string, MemberFence>();
let patched = false;

/** Commits offsets through the group itself (kafkajs's consumer no-ops once its runner stopped). */
export type CommitVia = (offsets: { topic: string; partition: number; offset: string }[]) => Promise<void>;

type Group = {
  groupId: string;
  memberId: string | null;
  generationId: number | null;
  heartbeat(opts: { interval: number }): Promise<void>;
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
  // Every heartbeat and SyncGroup kafkajs sends (its own, a batch's, MemberFence.confirm's): one
  // the coordinator accepted tells the group's fence when it was sent. A late SyncGroup: lateSync.
  const broker = (Broker as { prototype: Record<"heartbeat" | "syncGroup", (this: unknown, r: { groupId: string }) => Promise<unknown>> }).prototype;
  for (const name of ["heartbeat", "syncGroup"] as const) {
    const send = broker[name];
    broker[name] = function (this: unknown, request: { groupId: string }) {
      // No fence: the progress log's own consumer group (a late SyncGroup still applies).
      const fence = fences.get(request.groupId);
      const sent = Date.now();
      return send.call(this, request).then(
        (answer) => {
          fence?.accepted(sent);
          return answer;
        },
        (err: unknown) => {
          const type = (err as { type?: unknown })?.type;
          // A heartbeat refused because the group rebalances: the coordinator still knows the
          // member (Kafka renews its session then); the rebalance grace deals with the rest.
          if (name === "heartbeat" && type === "REBALANCE_IN_PROGRESS") fence?.accepted(sent);
          // The member is out: dropped from a rebalance it did not rejoin within the rebalance
          // timeout (a batch held it), or its session expired. Until kafkajs rejoins, a batch it
          // fetched meanwhile would run messages of partitions another member owns now.
          else if (OUT.has(type)) fence?.refused(sent);
          if (name === "syncGroup" && type === "INVALID_REQUEST") throw lateSync(err);
          throw err;
        },
      );
    };
  }
}

/**
 * A SyncGroup answered INVALID_REQUEST. librdkafka's mock cluster (the development broker) answers
 * so a follower whose SyncGroup comes after the leader's: it hands the assignments out at the
 * leader's and moves the group on (Kafka keeps them and answers the follower). kafkajs takes the
 * error for a crash: kexo rebuilt the consumer and the group went through two more rebalances, 10
 * to 20 s without the member's partitions running. Said as "rebalancing" instead, kafkajs joins
 * again at once (JoinGroup and SyncGroup, with its retry budget; past it, the crash as before).
 */
function lateSync(err: unknown): Error {
  const said = err instanceof Error ? err.message : String(err);
  return Object.assign(new Error(`SyncGroup refused as an invalid request (a late follower on the development broker?); joining again: ${said}`), {
    name: "KafkaJSProtocolError", type: "REBALANCE_IN_PROGRESS", retriable: true, cause: err,
  });
}

/** Coordinator answers that this member is out of its generation: its partitions are someone else's. */
const OUT: ReadonlySet<unknown> = new Set(["UNKNOWN_MEMBER_ID", "ILLEGAL_GENERATION", "FENCED_INSTANCE_ID"]);

/**
 * Fences a member that may have been expelled: a process stalled (SIGSTOP, a frozen VM, a long
 * pause) past its session timeout resumes with its handlers' timers and IO long due, and they run
 * before any heartbeat answer tells kafkajs that the coordinator dropped the member and gave its
 * partitions to others, which run those messages again. `at` is when the last request the
 * coordinator accepted for the member was sent: the coordinator expels the member no earlier than
 * `at` + the session timeout. A journal write (ctx.tx, ctx.step) or a handler run more than
 * `staleMs` (the session timeout less a second, for the write to commit) after it first asks the
 * coordinator (confirm): a heartbeat accepted, or refused because the group rebalances (the member
 * is still in it; the rebalance grace decides then), lets it go on; an answer that the member is
 * unknown or of a past generation, or none within the session, refuses it. Any request of the
 * member answered so (`out`, see refused) refuses them at once, until kafkajs has rejoined: a
 * member dropped from a rebalance (a batch held its rejoin past the rebalance timeout) fetches on
 * until kafkajs notices. Reading `at` and `out` is the whole cost of the check in the steady state
 * (heartbeats every 500 ms).
 */
export class MemberFence implements Fence {
  at = 0;
  /**
   * The coordinator said the member is out (an answer to one of its requests, or confirm()); until
   * a request sent later is accepted (a rejoin's SyncGroup). Nothing starts or records meanwhile.
   */
  out = false;
  /** When the request that found the member out was sent. */
  #outAt = 0;
  readonly staleMs: number;
  #asking: Promise<boolean> | undefined;

  constructor(readonly groupId: string, readonly sessionTimeoutMs: number) {
    this.staleMs = Math.max(sessionTimeoutMs / 2, sessionTimeoutMs - 1000);
  }

  /** The coordinator accepted a request of the member sent at `sent`. */
  accepted(sent: number): void {
    if (sent > this.at) this.at = sent;
    if (sent >= this.#outAt) this.out = false;
  }

  /**
   * The coordinator answered a request of the member sent at `sent` that it is unknown or of a past
   * generation. An answer to a request sent before one it accepted (a heartbeat of the last
   * generation answered after the rejoin's SyncGroup) is about a generation already left.
   */
  refused(sent: number): void {
    if (sent < this.at) return;
    this.out = true;
    this.#outAt = sent;
  }

  /** True when the coordinator accepted a heartbeat of this member sent after the call (shared by concurrent callers). */
  confirm(): Promise<boolean> {
    if (this.out) return Promise.resolve(false);
    return (this.#asking ??= this.#ask().finally(() => (this.#asking = undefined)));
  }

  async #ask(): Promise<boolean> {
    const asked = Date.now();
    for (;;) {
      const group = groups.get(this.groupId);
      // No member id: kafkajs cleared it on UNKNOWN_MEMBER_ID (see the joinAndSync patch).
      if (!group?.memberId) return this.#gone();
      let unanswered = false;
      try {
        await group.heartbeat({ interval: 0 });
      } catch (err) {
        if (OUT.has((err as { type?: unknown })?.type)) return this.#gone();
        unanswered = (err as { type?: unknown })?.type !== "REBALANCE_IN_PROGRESS";
      }
      // An answer to a heartbeat sent before the call (shared with one in flight) says nothing.
      if (this.at >= asked) return true;
      if (Date.now() - this.at > this.sessionTimeoutMs) return this.#gone();
      if (unanswered) await new Promise((r) => setTimeout(r, 200));
    }
  }

  #gone(): boolean {
    this.out = true;
    this.#outAt = Date.now();
    return false;
  }
}

/** The fence of `groupId`'s member in this process (one per group: two handlers never share one). */
export function memberFence(groupId: string, sessionTimeoutMs: number): MemberFence {
  patch();
  let fence = fences.get(groupId);
  if (!fence || fence.sessionTimeoutMs !== sessionTimeoutMs) fences.set(groupId, (fence = new MemberFence(groupId, sessionTimeoutMs)));
  return fence;
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
