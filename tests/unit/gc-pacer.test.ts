// The GC pacer runs a full collection once enough messages were handled while RSS is high, never
// while idle, and never for more than its share of the time.
import { expect, test } from "bun:test";
import { EventBus } from "../../src/events.ts";
import { startGcPacer } from "../../src/memory/gc-pacer.ts";

const handled = (bus: EventBus, n: number) => {
  for (let i = 0; i < n; i++) {
    bus.emit("message.handled", { handler: "h", topic: "t", partition: 0, offset: String(i), id: `t:0:${i}`, outcome: "processed", seconds: 0 });
  }
};
const tick = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A collector that takes `ms` of the thread; `at`: when each collection began. */
function slowCollector(ms: number): { at: number[]; slow: () => void } {
  const at: number[] = [];
  const slow = () => {
    at.push(performance.now());
    const end = performance.now() + ms;
    while (performance.now() < end);
  };
  return { at, slow };
}

test("collects after everyMessages handled, not before, not when idle, not after stop", async () => {
  const bus = new EventBus();
  let collections = 0;
  const stop = startGcPacer(bus, { everyMessages: 100, checkIntervalMs: 10, minRssBytes: 0, maxShare: 1, urgentRssBytes: Infinity }, () => void collections++);
  handled(bus, 99);
  await tick(50);
  expect(collections).toBe(0);
  handled(bus, 1);
  await tick(50);
  expect(collections).toBe(1);
  await tick(50);
  expect(collections).toBe(1); // idle: the count restarted at 0
  stop();
  handled(bus, 500);
  await tick(50);
  expect(collections).toBe(1);
});

test("does not collect while RSS is below minRssBytes, and does once it is above", async () => {
  const bus = new EventBus();
  let collections = 0;
  let rss = 100;
  const stop = startGcPacer(bus, { everyMessages: 10, checkIntervalMs: 10, minRssBytes: 200, maxShare: 1, urgentRssBytes: Infinity }, () => void collections++, () => rss);
  handled(bus, 1000);
  await tick(60);
  expect(collections).toBe(0);
  rss = 250;
  await tick(60);
  expect(collections).toBe(1); // the 1000 handled count once
  stop();
});

test("a collection that took T ms is followed by none for T / maxShare ms", async () => {
  const bus = new EventBus();
  const { at, slow } = slowCollector(20);
  // 20 ms a collection, at most 10% of the time: the next one comes 200 ms after the last began.
  const stop = startGcPacer(bus, { everyMessages: 1, checkIntervalMs: 5, minRssBytes: 0, maxShare: 0.1, urgentRssBytes: 100 }, slow, () => 1);
  const feed = setInterval(() => handled(bus, 5), 2);
  const t0 = performance.now();
  await tick(500);
  clearInterval(feed);
  stop();
  // At 0, 200, 400 ms: three in 500 ms, one more per 200 ms the timer ran late.
  expect(at.length).toBeGreaterThanOrEqual(2);
  expect(at.length).toBeLessThanOrEqual(Math.floor((performance.now() - t0) / 200) + 1);
  for (let i = 1; i < at.length; i++) expect(at[i]! - at[i - 1]!).toBeGreaterThanOrEqual(199);
});

test("from urgentRssBytes on, the time share no longer holds collections back", async () => {
  const bus = new EventBus();
  const { at, slow } = slowCollector(20);
  const stop = startGcPacer(bus, { everyMessages: 1, checkIntervalMs: 5, minRssBytes: 0, maxShare: 0.01, urgentRssBytes: 100 }, slow, () => 150);
  const feed = setInterval(() => handled(bus, 5), 2);
  await tick(300);
  clearInterval(feed);
  stop();
  // 20 ms at 1% would be one collection in 2 s; at or above urgentRssBytes they follow each other.
  expect(at.length).toBeGreaterThanOrEqual(5);
});
