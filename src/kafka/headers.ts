// Kafka headers are a list, and one name may repeat (tracing baggage, for one). kafkajs folds
// them into an object whose repeated names hold arrays. Handlers see one Buffer per name
// (ctx.message.headers, the SPEC's "Record of Buffer": the last value, as Java's lastHeader());
// dead letters, the journal and `dlq replay` carry every value, so the original headers are
// preserved. (kafkajs itself keeps values in order per name, not the order across names.)
import type { KafkaMessage } from "../index.ts";
import { setOwn } from "../own.ts";

/** Headers as they go over the wire: a repeated name holds its values in order. */
export type WireHeaders = Record<string, Buffer | Buffer[]>;

/**
 * Set on a consumed message's `headers` object only when a name repeats: every value of every
 * header. A symbol, so handlers' Object.keys, for…in and JSON never see it.
 */
const ALL = Symbol("kexo.allHeaders");
type WithAll = Record<string, Buffer | undefined> & { [ALL]?: WireHeaders };

/** The message's headers with every value of a repeated name (its `headers` when none repeats). */
export function allHeaders(message: KafkaMessage): WireHeaders {
  const headers = message.headers as WithAll;
  return headers[ALL] ?? (headers as Record<string, Buffer>);
}

/** Bytes of the headers on the wire, near enough: each value with its name (a repeated name counts per value). */
export function headerBytes(headers: WireHeaders): number {
  let n = 0;
  for (const k in headers) {
    const v = headers[k]!;
    if (Array.isArray(v)) for (const b of v) n += k.length + b.byteLength;
    else n += k.length + v.byteLength;
  }
  return n;
}

// kafkajs's types leave out null, but a record's header value may be null (length -1: the Java
// client sends one for a null value); both Fetch decoders give it as null.
type HeaderValue = Buffer | string | null | (Buffer | string | null | undefined)[] | undefined;

/** A null header value, as handlers, dead letters and the journal see it (kafkajs cannot send a null). */
const EMPTY = Buffer.alloc(0);

function headerBuffer(x: Buffer | string | null, copy: boolean): Buffer {
  if (x === null) return EMPTY;
  return Buffer.isBuffer(x) && !copy ? x : Buffer.from(x);
}

/**
 * A value a header can have. kafkajs's own decoder (Fetch before v11, or a record set kexo's
 * decoder leaves to it) reads an inherited member as an earlier value of a header named like one:
 * `constructor` arrives as [Object, value], `__proto__` as [Object.prototype, value].
 */
function isHeaderValue(x: unknown): x is Buffer | string | null {
  return x === null || typeof x === "string" || Buffer.isBuffer(x);
}

/**
 * kafkajs's headers as a message's: the last value of each name (every value kept aside when a
 * name repeats), a null value as an empty Buffer. `copy`: Buffer values copied, not views of the fetch response.
 */
export function fromKafkajs(raw: Record<string, HeaderValue> | undefined, copy = false): Record<string, Buffer> {
  // Per message: no entries arrays or spread objects (allocations on the hot path).
  const headers: Record<string, Buffer> = {};
  let all: WireHeaders | undefined;
  if (!raw) return headers;
  for (const k in raw) {
    const v = raw[k];
    if (Array.isArray(v)) {
      const values: Buffer[] = [];
      for (const x of v) if (isHeaderValue(x)) values.push(headerBuffer(x, copy));
      if (values.length === 0) continue;
      setOwn(headers, k, values[values.length - 1]!);
      if (values.length > 1) {
        if (!all) {
          all = {};
          for (const seen in headers) if (seen !== k) setOwn<Buffer | Buffer[]>(all, seen, headers[seen]!);
        }
        setOwn<Buffer | Buffer[]>(all, k, values);
        continue;
      }
    } else if (isHeaderValue(v)) {
      setOwn(headers, k, headerBuffer(v, copy));
    } else continue;
    if (all) setOwn<Buffer | Buffer[]>(all, k, headers[k]!);
  }
  if (all) (headers as WithAll)[ALL] = all;
  return headers;
}
