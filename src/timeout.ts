// Waiting for something, but not longer than a bound.

export const TIMED_OUT: unique symbol = Symbol("timed out");

/** `work`'s value, or TIMED_OUT when it has not settled within `ms`; the timer is cleared either way. */
export async function within<T>(work: Promise<T>, ms: number): Promise<T | typeof TIMED_OUT> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([work, new Promise<typeof TIMED_OUT>((r) => (timer = setTimeout(() => r(TIMED_OUT), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}
