// The GC pacer runs a full collection once enough messages were handled, and never while idle.
import { expect, test } from "bun:test";
import { EventBus } from "../../src/events.ts";
import { startGcPacer } from "../../src/memory/gc-pacer.ts";

const handled = (bus: EventBus, n: number) => {
  for (let i = 0; i < n; i++) {
    bus.emit("message.handled", { handler: "h", topic: "t", partition: 0, offset: String(i), id: `t:0:${i}`, outcome: "processed", seconds: 0 });
  }
};
const tick = (ms: number) => new Promise((r) => setTimeout(r, ms));

test("collects after everyMessages handled, not before, not when idle, not after stop", async () => {
  const bus = new EventBus();
  let collections = 0;
  const stop = startGcPacer(bus, { everyMessages: 100, checkIntervalMs: 10 }, () => void collections++);
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
