// JSON-lines logger on stderr: one object per line, levels, secrets redacted by key name.

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

/** Replaces values under secret-looking keys, recursively; errors become {type, message}. */
export function redact(value: unknown, depth = 0): unknown {
  if (value instanceof Error) {
    const out: Record<string, unknown> = { type: value.name, message: value.message };
    if ("code" in value && value.code !== undefined) out.code = value.code;
    if (value.cause !== undefined && depth < 4) out.cause = redact(value.cause, depth + 1);
    return out;
  }
  if (typeof value === "bigint") return value.toString();
  if (value === null || typeof value !== "object" || depth > 6) return value;
  if (Array.isArray(value)) return value.map((v) => redact(v, depth + 1));
  if (value instanceof Uint8Array) return `<${value.length} bytes>`;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) {
    out[k] = SECRET_KEY.test(k) && (typeof v === "string" ? v !== "" : typeof v === "object" && v !== null) ? "[redacted]" : redact(v, depth + 1);
  }
  return out;
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
    write(JSON.stringify(rec));
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
