// Keeps kafkajs's repeated warnings and errors from flooding the log: while a broker is down it
// logs every refused connection (≈ 50 lines a second). The first line of a kind goes out at once;
// repeats within the window are counted and reported with the next one that passes.

export interface Throttle {
  /** Returns undefined to drop the line, or how many like it were dropped since the last one. */
  admit(key: string): { suppressed: number } | undefined;
}

export function createThrottle(windowMs = 5000, now: () => number = Date.now): Throttle {
  const seen = new Map<string, { at: number; suppressed: number }>();
  return {
    admit(key) {
      const t = now();
      const s = seen.get(key);
      if (s && t - s.at < windowMs) {
        s.suppressed++;
        return undefined;
      }
      // Forget old kinds now and then so the map stays small.
      if (seen.size > 1000) for (const [k, v] of seen) if (t - v.at >= windowMs) seen.delete(k);
      seen.set(key, { at: t, suppressed: 0 });
      return { suppressed: s?.suppressed ?? 0 };
    },
  };
}
