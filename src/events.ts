// The one typed event bus: processing reports here; logging, metrics and HTTP only subscribe.
// Emitting with no listener costs one map lookup.

export type Outcome = "processed" | "deduplicated" | "retried" | "dead_lettered" | "failed";

export interface Events {
  "message.handled": {
    handler: string;
    topic: string;
    partition: number;
    offset: string;
    id: string;
    outcome: Outcome;
    seconds: number;
    result?: unknown;
  };
  /** One attempt of the handler's `handle` begins / ends: the same object both times. */
  "message.started": Attempt;
  "message.finished": Attempt;
  /**
   * A COMMIT is on disk (fired in commit order). `seconds`: from its start to the end of its fsync.
   * `outboxSeq`: the outbox's highest seq in it, when it wrote outbox rows.
   */
  "journal.committed": { seconds: number; writes: number; outboxSeq?: number };
  "consumer.joining": { handler: string; group: string };
  /**
   * `outOfOrder`: the handler finishes a partition's messages out of offset order (order "key"), so
   * a handled offset says nothing of those below it: its position is the committed offset.
   */
  "consumer.joined": { handler: string; group: string; assignment: Record<string, number[]>; generation: number; outOfOrder?: boolean };
  /** `position`: the fetch reached this offset (every offset below was delivered or skipped). */
  "consumer.fetched": { handler: string; group: string; topic: string; partition: number; highWatermark: string; position?: string };
  "consumer.rebalancing": { handler: string; group: string };
  /** The group coordinator answered a heartbeat: the broker is reachable. */
  "consumer.heartbeat": { handler: string; group: string };
  "consumer.committed": { handler: string; group: string; topic: string; partition: number; offset: string };
  "consumer.polled": { handler: string };
  "consumer.crashed": { handler: string; group: string; error: unknown; restarting: boolean };
  "consumer.stopped": { handler: string; group: string };
  "outbox.pending": { count: number };
  "worker.error": { handler?: string; error: unknown };
}

/** An attempt of `handle`; listeners may key on the object itself (no per-message string hashing). */
export interface Attempt {
  handler: string;
  id: string;
  /** Liveness's index of the attempt in its running list (see liveness.ts); -1 when not running. */
  slot?: number;
}

type Listener<K extends keyof Events> = (payload: Events[K]) => void;

export class EventBus {
  #listeners = new Map<keyof Events, Set<Listener<never>>>();

  on<K extends keyof Events>(name: K, fn: Listener<K>): () => void {
    let set = this.#listeners.get(name);
    if (!set) this.#listeners.set(name, (set = new Set()));
    set.add(fn as Listener<never>);
    return () => set.delete(fn as Listener<never>);
  }

  has(name: keyof Events): boolean {
    return (this.#listeners.get(name)?.size ?? 0) > 0;
  }

  emit<K extends keyof Events>(name: K, payload: Events[K]): void {
    const set = this.#listeners.get(name);
    if (!set) return;
    for (const fn of set) (fn as Listener<K>)(payload);
  }
}
