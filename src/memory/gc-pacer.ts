// Paces JavaScriptCore's garbage collection to the work done, so a worker draining a backlog stays
// small: a full, synchronous collection once enough messages were handled since the last one.
//
// Why: left alone, JSC sizes its heap from the machine's RAM (or the cgroup's memory limit). On a
// 24 GiB host it lets the heap's capacity grow to ~75 MiB around ~16 MiB of live objects while a
// backlog drains, and freed blocks return to the OS late; RSS sat at ~180 MiB. Bun.gc(false)
// (an asynchronous hint) did not change that; a full collection shrinks the capacity and releases
// memory. A collection of this heap (~20 MiB live) takes a few milliseconds, so pacing it by
// messages costs throughput nothing measurable (bench/memory.ts) and an idle worker never collects.
import type { EventBus } from "../events.ts";

export interface GcPacerOptions {
  /** Collect once this many messages were handled since the last collection. */
  everyMessages: number;
  /** How often to check; bounds how often a collection can run. */
  checkIntervalMs: number;
}

export const DEFAULT_GC_PACER: GcPacerOptions = { everyMessages: 5_000, checkIntervalMs: 100 };

/** Bun's full, synchronous collection; undefined outside Bun (Deno runs the sources). */
function bunFullGc(): (() => void) | undefined {
  const bun = (globalThis as { Bun?: { gc(sync: boolean): void } }).Bun;
  return bun ? () => bun.gc(true) : undefined;
}

/** Starts pacing; returns a function that stops it. A no-op when there is no collector to call. */
export function startGcPacer(bus: EventBus, opts: GcPacerOptions = DEFAULT_GC_PACER, collect = bunFullGc()): () => void {
  if (!collect) return () => {};
  let handled = 0;
  const off = bus.on("message.handled", () => void handled++);
  const timer = setInterval(() => {
    if (handled < opts.everyMessages) return;
    handled = 0;
    collect();
  }, opts.checkIntervalMs);
  // The pacer never keeps the process alive on its own.
  timer.unref?.();
  return () => {
    clearInterval(timer);
    off();
  };
}
