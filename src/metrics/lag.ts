// Per-partition consumer lag from what the consumers report on the event bus: the high watermark
// of the latest fetch minus the partition's position, the furthest of the committed offset, the
// last handled offset + 1 (not in key order) and the fetch position (in key order only while
// nothing of the partition is unfinished: see the consumer's #fetchPosition). No admin API
// involved (the development broker has none), and on Kafka the fetch response's high watermark is
// the same log end an admin client would read, so the figure means the same on both.
import type { EventBus } from "../events.ts";
import { PerPartition } from "../kafka/per-partition.ts";

export interface PartitionLag {
  group: string;
  topic: string;
  partition: number;
  highWatermark: bigint;
  position: bigint;
  lag: bigint;
}

interface Entry {
  highWatermark?: bigint;
  position?: bigint;
  /**
   * The last handled offset + 1, as a number: message.handled fires for every message, and a
   * BigInt per message showed in profiles. Folded into `position` when read (offsets stay far
   * below 2^53 in practice; the figure is a metric).
   */
  handledNext?: number;
}

const key = (topic: string, partition: number) => `${topic}\0${partition}`;

export class LagTracker {
  /** group → "topic\0partition" → entry; only the partitions the group's last join assigned. */
  #groups = new Map<string, Map<string, Entry>>();
  /** handler → its group; null for a handler that finishes out of offset order (key order). */
  #groupOf = new Map<string, string | null>();
  #off: (() => void)[];
  /** Each handled message's entry (null: not assigned), found without a key per message. */
  #handled = new PerPartition<Entry | null>();

  constructor(bus: EventBus) {
    this.#off = [
      bus.on("consumer.joined", (e) => {
        this.#handled.clear();
        // Key order finishes a later key's message while an earlier one is queued or retried: the
        // last handled offset would count those as consumed. Its position is what was committed
        // (the lowest unfinished offset), at most one commit interval behind.
        this.#groupOf.set(e.handler, e.outOfOrder ? null : e.group);
        // A partition kept across the rebalance keeps its figures; a revoked one disappears.
        const before = this.#groups.get(e.group);
        const now = new Map<string, Entry>();
        for (const [topic, partitions] of Object.entries(e.assignment)) {
          for (const p of partitions) now.set(key(topic, p), before?.get(key(topic, p)) ?? {});
        }
        this.#groups.set(e.group, now);
      }),
      bus.on("consumer.stopped", (e) => {
        this.#handled.clear();
        this.#groups.delete(e.group);
      }),
      bus.on("consumer.fetched", (e) => {
        const x = this.#groups.get(e.group)?.get(key(e.topic, e.partition));
        if (!x) return;
        x.highWatermark = BigInt(e.highWatermark);
        if (e.position !== undefined) advance(x, BigInt(e.position));
      }),
      bus.on("consumer.committed", (e) => {
        const x = this.#groups.get(e.group)?.get(key(e.topic, e.partition));
        if (x) advance(x, BigInt(e.offset));
      }),
      bus.on("message.handled", (e) => {
        // A retried or aborted message is still ahead of the position.
        if (e.outcome === "retried" || e.outcome === "failed") return;
        let x = this.#handled.get(e.handler, e.topic, e.partition);
        if (x === undefined) {
          const group = this.#groupOf.get(e.handler);
          x = (group == null ? undefined : this.#groups.get(group)?.get(key(e.topic, e.partition))) ?? null;
          this.#handled.add(e.handler, e.topic, e.partition, x);
        }
        if (!x) return;
        const next = Number(e.offset) + 1;
        if (x.handledNext === undefined || next > x.handledNext) x.handledNext = next;
      }),
    ];
  }

  /** Partitions whose high watermark and position are both known. */
  snapshot(): PartitionLag[] {
    const out: PartitionLag[] = [];
    for (const [group, parts] of this.#groups) {
      for (const [k, x] of parts) {
        if (x.handledNext !== undefined) advance(x, BigInt(x.handledNext));
        if (x.highWatermark === undefined || x.position === undefined) continue;
        const [topic, partition] = k.split("\0") as [string, string];
        const lag = x.highWatermark > x.position ? x.highWatermark - x.position : 0n;
        out.push({ group, topic, partition: Number(partition), highWatermark: x.highWatermark, position: x.position, lag });
      }
    }
    return out;
  }

  close(): void {
    for (const off of this.#off) off();
  }
}

function advance(x: Entry, to: bigint): void {
  if (x.position === undefined || to > x.position) x.position = to;
}
