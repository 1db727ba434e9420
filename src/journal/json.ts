// How step, tx and handler results are stored: JSON, with bigints (libSQL row ids, counters)
// stored as numbers when exact and as strings otherwise. What JSON can't hold is a permanent
// error: retrying produces the same value again.
import { PermanentError } from "../errors.ts";

function replacer(_key: string, value: unknown): unknown {
  if (typeof value === "bigint") {
    return value <= BigInt(Number.MAX_SAFE_INTEGER) && value >= BigInt(Number.MIN_SAFE_INTEGER) ? Number(value) : value.toString();
  }
  return value;
}

export function toJson(value: unknown, what: string): string {
  // Most handlers return nothing: JSON.stringify with a replacer is not free (≈ 0.35 µs).
  if (value === undefined || value === null) return "null";
  try {
    return JSON.stringify(value, replacer) ?? "null";
  } catch (err) {
    throw new PermanentError(`${what} is not JSON-serializable: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * A recorded result as the handler gets it, on its first run as on a replay: what JSON kept
 * (a Date as its string, a Map as {}, a BigInt as a number or string, undefined as null), so that
 * code after a step or a tx does not behave differently once the result comes from the journal.
 */
export function fromJson<R>(json: string): R {
  return (json === "null" ? null : JSON.parse(json)) as R;
}
