// Key lanes (order: "key"): per-key order, the shared running limit, progress at the lowest
// unfinished offset, drain() running what is queued, and nothing starting after close(), which
// aborts the messages' signal.
import { describe, expect, test } from "bun:test";
import { KeySlots, PartitionLanes } from "../../src/kafka/key-lanes.ts";

/** A message run the test finishes by hand. */
function gate() {
  let finish!: (done: boolean) => void;
  const started = { value: false };
  const run = () => {
    started.value = true;
    return new Promise<boolean>((r) => (finish = r));
  };
  return { run, started, finish: (done = true) => finish(done) };
}

const tick = () => new Promise((r) => setTimeout(r, 0));

describe("PartitionLanes", () => {
  test("one key runs in order, other keys overtake, progress waits for the lowest unfinished offset", async () => {
    const advanced: bigint[] = [];
    const lanes = new PartitionLanes(new KeySlots(8, 100), -1n, (n) => advanced.push(n));
    const a0 = gate(), a1 = gate(), b2 = gate(), n3 = gate();
    lanes.dispatch(0n, "a", 0, a0.run);
    lanes.dispatch(1n, "a", 0, a1.run);
    lanes.dispatch(2n, "b", 0, b2.run);
    lanes.dispatch(3n, null, 0, n3.run);
    expect([a0.started.value, a1.started.value, b2.started.value, n3.started.value]).toEqual([true, false, true, true]);
    b2.finish();
    n3.finish();
    await tick();
    expect(advanced).toEqual([]);
    a0.finish();
    await tick();
    expect(a1.started.value).toBe(true);
    expect(advanced).toEqual([1n]);
    a1.finish();
    await tick();
    expect(lanes.next).toBe(4n);
    expect(lanes.pending).toBe(0);
  });

  test("the running limit is shared by partitions", async () => {
    const slots = new KeySlots(2, 100);
    const p0 = new PartitionLanes(slots, -1n, () => {});
    const p1 = new PartitionLanes(slots, -1n, () => {});
    const g = [gate(), gate(), gate()];
    p0.dispatch(0n, "x", 0, g[0]!.run);
    p1.dispatch(0n, "y", 0, g[1]!.run);
    p1.dispatch(1n, "z", 0, g[2]!.run);
    expect(g.map((x) => x.started.value)).toEqual([true, true, false]);
    g[0]!.finish();
    await tick();
    expect(g[2]!.started.value).toBe(true);
  });

  test("close() starts nothing more and resolves when the running ones finished; progress stays below them", async () => {
    const slots = new KeySlots(8, 100);
    const lanes = new PartitionLanes(slots, -1n, () => {});
    const a0 = gate(), a1 = gate();
    lanes.dispatch(5n, "a", 0, a0.run);
    lanes.dispatch(6n, "a", 0, a1.run);
    let closed = false;
    void lanes.close().then(() => (closed = true));
    await tick();
    expect(closed).toBe(false);
    a0.finish();
    await tick();
    expect(closed).toBe(true);
    expect(a1.started.value).toBe(false);
    expect(lanes.next).toBe(6n);
    expect(slots.space()).toBeUndefined();
  });

  test("close() aborts the messages' signal (a wait for the next try ends); drain() does not; the parent's abort passes through", async () => {
    const parent = new AbortController();
    const closing = new PartitionLanes(new KeySlots(8, 100), -1n, () => {}, parent.signal);
    const draining = new PartitionLanes(new KeySlots(8, 100), -1n, () => {}, new AbortController().signal);
    void draining.drain();
    expect([closing.signal.aborted, draining.signal.aborted]).toEqual([false, false]);
    void closing.close();
    expect([closing.signal.aborted, draining.signal.aborted]).toEqual([true, false]);
    const other = new PartitionLanes(new KeySlots(8, 100), -1n, () => {}, parent.signal);
    parent.abort();
    expect(other.signal.aborted).toBe(true);
  });

  test("drain() takes no more but runs what is queued, so progress reaches every dispatched offset", async () => {
    const lanes = new PartitionLanes(new KeySlots(8, 100), -1n, () => {});
    const a0 = gate(), a1 = gate(), late = gate();
    lanes.dispatch(0n, "a", 0, a0.run);
    lanes.dispatch(1n, "a", 0, a1.run);
    let drained = false;
    void lanes.drain().then(() => (drained = true));
    lanes.dispatch(2n, "b", 0, late.run);
    expect(late.started.value).toBe(false);
    a0.finish();
    await tick();
    expect([a1.started.value, drained]).toEqual([true, false]);
    a1.finish();
    await tick();
    expect(drained).toBe(true);
    expect(lanes.next).toBe(2n);
  });

  test("the queue is bounded in bytes as in count: space() waits until finished messages free their bytes", async () => {
    const slots = new KeySlots(1, 1000, 1000);
    const lanes = new PartitionLanes(slots, -1n, () => {});
    const a0 = gate(), a1 = gate(), a2 = gate();
    expect(slots.space()).toBeUndefined();
    lanes.dispatch(0n, "a", 600, a0.run);
    expect(slots.space()).toBeUndefined();
    // Crosses the bound: it goes in (a message larger than the bound must pass), then the queue is full.
    lanes.dispatch(1n, "a", 600, a1.run);
    expect(slots.queued).toEqual({ messages: 2, bytes: 1200 });
    let space = false;
    void slots.space()!.then(() => (space = true));
    a0.finish();
    await tick();
    expect([space, slots.queued.bytes]).toEqual([true, 600]);
    lanes.dispatch(2n, "a", 500, a2.run);
    expect(slots.space()).toBeInstanceOf(Promise);
    // close() drops what waits: its bytes leave the queue too.
    void lanes.close();
    expect(slots.queued).toEqual({ messages: 1, bytes: 600 });
    a1.finish();
    await tick();
    expect(slots.queued).toEqual({ messages: 0, bytes: 0 });
  });

  test("a message given up stops its key's lane", async () => {
    const lanes = new PartitionLanes(new KeySlots(8, 100), -1n, () => {});
    const a0 = gate(), a1 = gate();
    lanes.dispatch(0n, "a", 0, a0.run);
    lanes.dispatch(1n, "a", 0, a1.run);
    a0.finish(false);
    await tick();
    expect(a1.started.value).toBe(false);
    expect(lanes.next).toBe(-1n);
  });
});

describe("PartitionLanes, what finished above progress", () => {
  test("finishedAbove() lists what finished above `next`; past the bound the lanes are crowded until `next` moves", async () => {
    const lanes = new PartitionLanes(new KeySlots(8, 100), 0n, () => {}, undefined, 3);
    const stuck = gate();
    lanes.dispatch(0n, "stuck", 0, stuck.run);
    const others = [1n, 2n, 3n].map((o) => {
      const g = gate();
      lanes.dispatch(o, `k${o}`, 0, g.run);
      return g;
    });
    for (const g of others.slice(0, 2)) g.finish();
    await tick();
    expect(lanes.finishedAbove().sort()).toEqual([1n, 2n]);
    expect(lanes.crowded).toBe(false);
    others[2]!.finish();
    await tick();
    expect(lanes.crowded).toBe(true);
    let resumed = 0;
    lanes.onRoom(() => resumed++);
    expect(resumed).toBe(0);
    stuck.finish();
    await tick();
    expect(lanes.next).toBe(4n);
    expect(lanes.finishedAbove()).toEqual([]);
    expect([lanes.crowded, resumed]).toEqual([false, 1]);
  });

  test("close() lets a crowded partition's waiter go", async () => {
    const lanes = new PartitionLanes(new KeySlots(8, 100), 0n, () => {}, undefined, 1);
    const stuck = gate();
    const other = gate();
    lanes.dispatch(0n, "stuck", 0, stuck.run);
    lanes.dispatch(1n, "other", 0, other.run);
    other.finish();
    await tick();
    let resumed = 0;
    lanes.onRoom(() => resumed++);
    void lanes.close();
    expect(resumed).toBe(1);
  });
});

describe("KeySlots", () => {
  test("without() lends the holder's slot while it waits and takes one again, behind those waiting", async () => {
    const slots = new KeySlots(1, 100);
    const started: string[] = [];
    slots.acquire(() => started.push("waiter"));
    expect(started).toEqual(["waiter"]);
    slots.acquire(() => started.push("second"));
    let wake!: () => void;
    let back = false;
    void slots.without(new Promise<void>((r) => (wake = r))).then(() => (back = true));
    // The holder ("waiter") waits: its slot goes to "second".
    expect(started).toEqual(["waiter", "second"]);
    wake();
    await tick();
    expect(back).toBe(false);
    slots.release(); // "second" ends: the holder has its slot again
    await tick();
    expect(back).toBe(true);
  });
});
