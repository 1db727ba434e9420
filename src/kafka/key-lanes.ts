// Key ordering (order: "key"): one partition's messages run concurrently across keys and in order
// within a key, with one shared limit of running messages for all of a handler's partitions.
//
// Invariants:
// - Within a partition and key (all null keys form one key), a message starts only after the
//   previous one of that key finished; a message that did not finish stops its key's lane.
// - A running message holds a slot of the shared limit, except while it waits for its next try
//   (KeySlots.without): as many retrying keys as slots must not stop every other key.
// - `PartitionLanes.next` is the lowest dispatched offset that is not finished (or one past the
//   last dispatched when all finished): every offset below it is done. It only moves forward.
// - Nothing is dispatched after drain() or close(). drain() lets queued messages run, so `next`
//   reaches every dispatched offset (what a new owner with its own journal needs: it knows nothing
//   of work finished above `next`). close() drops queued messages (they sit at or above `next`, so
//   Kafka delivers them again from the committed offset) and aborts `signal`: a message waiting
//   for its next try stops there, since the partition's next epoch or owner runs it again.
// - Offsets finished above `next` (kept until `next` passes them) are bounded too: past
//   MAX_FINISHED_ABOVE the partition takes no more (`crowded`) until `next` moves, since a key
//   stuck in its retries would otherwise let them grow with everything the other keys finish.
// - Dispatched and unfinished messages stay within KeySlots' bounds, in count and in bytes (plus
//   the one message that crossed a bound): the batch loop waits for space() before each dispatch.

/** Runs one message; resolves true when it is done, false when it was given up (lane stops). */
export type RunMessage = () => Promise<boolean>;

/**
 * The running limit and the queue bounds shared by one handler's partitions. The queue is bounded
 * in bytes too: a count alone let 1000 messages of 1 MB wait in memory behind a slow key.
 */
export class KeySlots {
  readonly limit: number;
  readonly maxQueued: number;
  readonly maxQueuedBytes: number;
  #running = 0;
  #queued = 0;
  #queuedBytes = 0;
  #waiting: (() => void)[] = [];
  #space: (() => void)[] = [];

  constructor(limit: number, maxQueued: number, maxQueuedBytes = Number.POSITIVE_INFINITY) {
    this.limit = limit;
    this.maxQueued = maxQueued;
    this.maxQueuedBytes = maxQueuedBytes;
  }

  /** Messages dispatched and unfinished (running or waiting), and their bytes. */
  get queued(): { messages: number; bytes: number } {
    return { messages: this.#queued, bytes: this.#queuedBytes };
  }

  #full(): boolean {
    return this.#queued >= this.maxQueued || this.#queuedBytes >= this.maxQueuedBytes;
  }

  /**
   * Resolves when fewer than `maxQueued` messages of fewer than `maxQueuedBytes` are dispatched
   * and unfinished. A message larger than the byte bound still goes in once the queue is below it.
   */
  space(): Promise<void> | undefined {
    if (!this.#full()) return undefined;
    return new Promise((r) => this.#space.push(r));
  }

  enqueued(bytes: number): void {
    this.#queued++;
    this.#queuedBytes += bytes;
  }

  dequeued(bytes: number): void {
    this.#queued--;
    this.#queuedBytes -= bytes;
    if (!this.#full()) for (const r of this.#space.splice(0)) r();
  }

  /** Calls `start` once a slot is free (FIFO), holding the slot until `release()`. */
  acquire(start: () => void): void {
    if (this.#running < this.limit) {
      this.#running++;
      start();
    } else {
      this.#waiting.push(start);
    }
  }

  release(): void {
    const next = this.#waiting.shift();
    if (next) return next();
    this.#running--;
  }

  /**
   * A holder lets its slot go while `wait` lasts (a message waiting for its next try is not
   * running), then takes one again, behind those already waiting, before it goes on or returns.
   */
  async without<T>(wait: Promise<T>): Promise<T> {
    this.release();
    try {
      return await wait;
    } finally {
      await new Promise<void>((r) => this.acquire(r));
    }
  }
}

interface Item {
  offset: bigint;
  bytes: number;
  run: RunMessage;
}

/** Offsets finished above `next` that one partition keeps before it takes no more (≈ 100 B each). */
export const MAX_FINISHED_ABOVE = 100_000;

export class PartitionLanes {
  #slots: KeySlots;
  #maxFinished: number;
  #room: (() => void)[] = [];
  #lanes = new Map<string | null, Item[]>();
  /** Dispatched offsets in order; those before #head are retired. */
  #order: bigint[] = [];
  #head = 0;
  #finished = new Set<bigint>();
  #running = 0;
  #idle: (() => void)[] = [];
  #empty: (() => void)[] = [];
  #onAdvance: (next: bigint) => void;
  #closed = false;
  #accepting = true;
  #closing = new AbortController();
  /** Offsets below this were dispatched in this epoch: a re-fetched copy is skipped. */
  dispatchedTo = -1n;
  next: bigint;
  /** The messages' signal (ctx.signal): `parent`'s, and aborted by close(). */
  readonly signal: AbortSignal;

  constructor(slots: KeySlots, next: bigint, onAdvance: (next: bigint) => void, parent?: AbortSignal, maxFinished = MAX_FINISHED_ABOVE) {
    this.#slots = slots;
    this.#maxFinished = maxFinished;
    this.next = next;
    this.#onAdvance = onAdvance;
    this.signal = parent ? AbortSignal.any([parent, this.#closing.signal]) : this.#closing.signal;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** False once drain() or close() was called. */
  get accepting(): boolean {
    return this.#accepting;
  }

  /** Messages dispatched and not finished (running or queued behind their key). */
  get pending(): number {
    return this.#order.length - this.#head;
  }

  /** Too many offsets finished above `next`: take no more until it moves (see onRoom). */
  get crowded(): boolean {
    return this.#finished.size >= this.#maxFinished;
  }

  /** Calls `resume` once no longer crowded (or closed). */
  onRoom(resume: () => void): void {
    if (!this.crowded || this.#closed) resume();
    else this.#room.push(resume);
  }

  /** Offsets finished above `next`, in no order: done, though `next` cannot pass them yet. */
  finishedAbove(): bigint[] {
    return [...this.#finished];
  }

  /** `bytes`: what the message holds in memory until it finished (counted against the byte bound). */
  dispatch(offset: bigint, key: string | null, bytes: number, run: RunMessage): void {
    if (!this.#accepting) return;
    this.dispatchedTo = offset + 1n;
    this.#order.push(offset);
    this.#slots.enqueued(bytes);
    let lane = this.#lanes.get(key);
    if (!lane) this.#lanes.set(key, (lane = []));
    lane.push({ offset, bytes, run });
    if (lane.length === 1) this.#schedule(key, lane);
  }

  /** Takes no more messages; resolves once every lane ran empty (or stopped). */
  drain(): Promise<void> {
    this.#accepting = false;
    if (this.#lanes.size === 0) return Promise.resolve();
    return new Promise((r) => this.#empty.push(r));
  }

  /**
   * Stops starting messages and aborts `signal`; resolves once the running ones of this partition
   * finished (a handler that ignores the signal may still finish its message).
   */
  close(): Promise<void> {
    this.#accepting = false;
    if (!this.#closed) {
      this.#closed = true;
      this.#closing.abort();
      for (const r of this.#room.splice(0)) r();
      for (const lane of this.#lanes.values()) {
        // The head of a lane is running or waiting for a slot; the rest never start.
        for (let i = 1; i < lane.length; i++) this.#slots.dequeued(lane[i]!.bytes);
        lane.length = Math.min(lane.length, 1);
      }
    }
    if (this.#running === 0) return Promise.resolve();
    return new Promise((r) => this.#idle.push(r));
  }

  #schedule(key: string | null, lane: Item[]): void {
    const item = lane[0]!;
    this.#slots.acquire(() => {
      if (this.#closed) {
        this.#slots.release();
        this.#drop(key, lane);
        if (this.#lanes.size === 0) for (const r of this.#empty.splice(0)) r();
        return;
      }
      this.#running++;
      let ok = false;
      item
        .run()
        .then((done) => (ok = done), () => (ok = false))
        .finally(() => {
          this.#running--;
          this.#slots.release();
          if (ok) this.#finish(item.offset);
          lane.shift();
          this.#slots.dequeued(item.bytes);
          if (!ok || this.#closed) {
            this.#drop(key, lane);
          } else if (lane.length > 0) {
            this.#schedule(key, lane);
          } else {
            this.#lanes.delete(key);
          }
          if (this.#running === 0) for (const r of this.#idle.splice(0)) r();
          if (this.#lanes.size === 0) for (const r of this.#empty.splice(0)) r();
        });
    });
  }

  /** Drops what is left of a lane that stopped (its messages stay above `next`). */
  #drop(key: string | null, lane: Item[]): void {
    for (let i = 0; i < lane.length; i++) this.#slots.dequeued(lane[i]!.bytes);
    lane.length = 0;
    if (this.#lanes.get(key) === lane) this.#lanes.delete(key);
  }

  #finish(offset: bigint): void {
    this.#finished.add(offset);
    let moved = false;
    while (this.#head < this.#order.length && this.#finished.has(this.#order[this.#head]!)) {
      const o = this.#order[this.#head++]!;
      this.#finished.delete(o);
      if (o + 1n > this.next) this.next = o + 1n;
      moved = true;
    }
    if (this.#head > 1024 && this.#head * 2 > this.#order.length) {
      this.#order = this.#order.slice(this.#head);
      this.#head = 0;
    }
    if (moved) {
      this.#onAdvance(this.next);
      if (this.#room.length > 0 && !this.crowded) for (const r of this.#room.splice(0)) r();
    }
  }
}
