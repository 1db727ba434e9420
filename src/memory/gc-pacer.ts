// Paces JavaScriptCore's garbage collection to the work done, so a worker draining a backlog stays
// small: a full, synchronous collection once enough messages were handled since the last one,
// while RSS is high, and never for more than a set share of the time.
//
// Why: left alone, JSC sizes its heap from the machine's RAM (or the cgroup's memory limit). On a
// 24 GiB host it lets the heap's capacity grow to ~75 MiB around ~16 MiB of live objects while a
// backlog drains, and freed blocks return to the OS late; RSS sat at ~180 MiB. Bun.gc(false)
// (an asynchronous hint) did not change that; a full collection shrinks the capacity and releases
// memory. Since the worker heap sizing (heap-sizing.ts) JSC's own collections mostly keep up, and
// a full collection of a busy worker's heap takes ~15 ms of the JavaScript thread: every 5000
// messages at 90k msg/s, that was 15% of it. So the pacer collects only above minRssBytes, and
// at most maxShare of the time until RSS reaches urgentRssBytes: scenario (b) of bench/run.ts
// went from 89.9k to 104.1k msg/s (mean of six alternating pairs), peak RSS 125–141 MiB before
// and 134–139 after (bun main.ts). With the compiled binary, three alternating pairs of (b) and (c):
// 101.6k, 106.9k, 91.0k msg/s against 91.0k, 93.0k, 87.9k with the old pacing, peak RSS 141–152
// MiB against 137–153: the peak is about where it was, near 150 MiB either way. Lower thresholds
// (112/128, 104/120 MiB) did not lower it; 144 MiB heap sizing cost ~20% for little.
import type { EventBus } from "../events.ts";

export interface GcPacerOptions {
  /** Collect once this many messages were handled since the last collection. */
  everyMessages: number;
  /** How often to check; bounds how often a collection can run. */
  checkIntervalMs: number;
  /** Collect only while the process's RSS is at least this (bytes): below it, JSC's own collections keep up. */
  minRssBytes: number;
  /**
   * The share of time full collections may take: after one that took T ms, the next waits at
   * least T / maxShare ms. A collection stops the JavaScript thread; at 10 a second (a fast
   * backlog, every 5000 messages) they took 15% of it.
   */
  maxShare: number;
  /** From this RSS (bytes) on, maxShare no longer holds a collection back. */
  urgentRssBytes: number;
}

export const DEFAULT_GC_PACER: GcPacerOptions = { everyMessages: 5_000, checkIntervalMs: 100, minRssBytes: 120 * 2 ** 20, maxShare: 0.05, urgentRssBytes: 136 * 2 ** 20 };

/** Bun's full, synchronous collection; undefined outside Bun (Deno runs the sources). */
function bunFullGc(): (() => void) | undefined {
  const bun = (globalThis as { Bun?: { gc(sync: boolean): void } }).Bun;
  return bun ? () => bun.gc(true) : undefined;
}

const processRss = (): number => process.memoryUsage.rss();

/** Starts pacing; returns a function that stops it. A no-op when there is no collector to call. */
export function startGcPacer(bus: EventBus, opts: GcPacerOptions = DEFAULT_GC_PACER, collect = bunFullGc(), rss = processRss): () => void {
  if (!collect) return () => {};
  let handled = 0;
  let notBefore = 0;
  const off = bus.on("message.handled", () => void handled++);
  const timer = setInterval(() => {
    if (handled < opts.everyMessages) return;
    const now = performance.now();
    const bytes = rss();
    if (bytes < opts.minRssBytes || (now < notBefore && bytes < opts.urgentRssBytes)) return;
    handled = 0;
    collect();
    const took = performance.now() - now;
    notBefore = now + took / opts.maxShare;
  }, opts.checkIntervalMs);
  // The pacer never keeps the process alive on its own.
  timer.unref?.();
  return () => {
    clearInterval(timer);
    off();
  };
}
