// JSON-lines logger on stderr: one object per line, levels, secrets redacted by key name.
import { errorMessage, errorType } from "./errors.ts";
import { setOwn } from "./own.ts";

export type Level = "debug" | "info" | "warn" | "error" | "silent";
const rank: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 100 };
export const levels = Object.keys(rank) as Level[];

const SECRET_KEY = /pass(word)?|secret|token|sasl|authorization|credential|api[-_]?key/i;

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  child(fields: Record<string, unknown>): Logger;
  enabled(level: Level): boolean;
}

/**
 * Replaces values under secret-looking keys, recursively; errors become {type, message}. Never
 * throws, whatever it is given (a handler's ctx.log fields, a thrown object): cycles become
 * "[cycle]", what lies deeper than 8 levels "[deep]", a getter that throws "[unreadable]".
 */
export function redact(value: unknown, depth = 0, seen: WeakSet<object> = new WeakSet()): unknown {
  if (typeof value === "bigint" || typeof value === "symbol") return value.toString();
  if (typeof value === "function") return `[function ${value.name || "anonymous"}]`;
  if (value === null || typeof value !== "object") return value;
  if (seen.has(value)) return "[cycle]";
  if (depth > 8) return "[deep]";
  seen.add(value);
  try {
    if (value instanceof Error) {
      const out: Record<string, unknown> = { type: errorType(value), message: errorMessage(value) };
      const code = (value as { code?: unknown }).code;
      if (code !== undefined) out.code = redact(code, depth + 1, seen);
      if (value.cause !== undefined) out.cause = redact(value.cause, depth + 1, seen);
      return out;
    }
    if (Array.isArray(value)) return value.map((v) => redact(v, depth + 1, seen));
    if (value instanceof Uint8Array) return `<${value.length} bytes>`;
    if (value instanceof Map) return redact(Object.fromEntries(value), depth, seen);
    if (value instanceof Set) return redact([...value], depth, seen);
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(value)) {
      let v: unknown;
      try {
        v = (value as Record<string, unknown>)[k];
      } catch {
        setOwn(out, k, "[unreadable]");
        continue;
      }
      setOwn(out, k, SECRET_KEY.test(k) && (typeof v === "string" ? v !== "" : typeof v === "object" && v !== null) ? "[redacted]" : redact(v, depth + 1, seen));
    }
    return out;
  } catch {
    return "[unreadable]";
  } finally {
    seen.delete(value);
  }
}

/** A URL with secret-looking query parameters (libsql's ?authToken=…) and user:password hidden. */
export function redactUrl(url: string): string {
  return url
    .replace(/([?&][^=&#]*=)([^&#]*)/g, (m, name: string, value: string) => (SECRET_KEY.test(name) && value ? `${name}[redacted]` : m))
    .replace(/^([a-z][a-z0-9+.-]*:\/\/[^/@:]*):[^/@]*@/i, "$1:[redacted]@");
}

export function createLogger(
  opts: { level?: Level; write?: (line: string) => void; base?: Record<string, unknown> } = {},
): Logger {
  const min = rank[opts.level ?? "info"];
  const write = opts.write ?? ((line: string) => process.stderr.write(line + "\n"));
  const base = opts.base ?? {};
  const emit = (level: Level, msg: string, fields?: Record<string, unknown>) => {
    if (rank[level] < min) return;
    const rec = { time: new Date().toISOString(), level, msg, ...base, ...(fields ? (redact(fields) as object) : {}) };
    let line: string;
    try {
      line = JSON.stringify(rec);
    } catch (err) {
      // redact() leaves plain data only; a toJSON() of the handler's may still throw.
      line = JSON.stringify({ time: rec.time, level, msg, logError: `fields could not be written: ${errorMessage(err)}` });
    }
    write(line);
  };
  return {
    debug: (m, f) => emit("debug", m, f),
    info: (m, f) => emit("info", m, f),
    warn: (m, f) => emit("warn", m, f),
    error: (m, f) => emit("error", m, f),
    child: (fields) => createLogger({ level: opts.level, write, base: { ...base, ...fields } }),
    enabled: (level) => rank[level] >= min,
  };
}
