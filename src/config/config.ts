// Configuration at the edge: raw values from flags, environment and a JSON file (in that order of
// precedence, over defaults) → validated with valibot → one expanded Config. Every problem is
// reported as `key (source): message`.
import { jsonErrorOffset, lineAndColumn } from "./json-position.ts";
import { accessSync, constants, readFileSync } from "node:fs";
import { isIP } from "node:net";
import { hostname } from "node:os";
import * as v from "valibot";
import { ConfigError, type Problem } from "../errors.ts";
import { parseHostPort } from "../http/serve.ts";
import { issuePath } from "../handlers/resolve.ts";
import { type Level, levels, redactUrl } from "../log.ts";
import { didYouMean } from "../suggest.ts";

export interface TlsFiles {
  ca?: string;
  cert?: string;
  key?: string;
}

export interface Config {
  brokers: string[];
  handlers: string;
  /** True when --handlers / KEXO_HANDLERS / the file named the directory. */
  handlersGiven: boolean;
  db: string;
  http: { host: string; port: number };
  logLevel: Level;
  shutdownTimeoutMs: number;
  clientId: string;
  tls: boolean;
  /** PEM files for TLS: a private CA, and a client certificate with its key (mutual TLS). */
  tlsFiles?: TlsFiles;
  sasl?: { mechanism: "plain" | "scram-sha-256" | "scram-sha-512"; username: string; password: string };
  /** Credentials live in their own settings, never in the URL, so the URL can be logged. */
  schemaRegistry?: { url: string; username?: string; password?: string };
  configFile?: string;
}

/** Each setting: its flag, its environment variable, its key in the JSON file. */
export const SETTINGS = {
  brokers: { flag: "brokers", env: "KEXO_BROKERS" },
  handlers: { flag: "handlers", env: "KEXO_HANDLERS" },
  db: { flag: "db", env: "KEXO_DB" },
  http: { flag: "http", env: "KEXO_HTTP" },
  logLevel: { flag: "log-level", env: "KEXO_LOG_LEVEL" },
  shutdownTimeout: { flag: "shutdown-timeout", env: "KEXO_SHUTDOWN_TIMEOUT" },
  clientId: { flag: "client-id", env: "KEXO_CLIENT_ID" },
  tls: { flag: "tls", env: "KEXO_TLS" },
  tlsCa: { flag: "tls-ca", env: "KEXO_TLS_CA" },
  tlsCert: { flag: "tls-cert", env: "KEXO_TLS_CERT" },
  tlsKey: { flag: "tls-key", env: "KEXO_TLS_KEY" },
  saslMechanism: { flag: "sasl-mechanism", env: "KEXO_SASL_MECHANISM" },
  saslUsername: { flag: "sasl-username", env: "KEXO_SASL_USERNAME" },
  saslPassword: { flag: "sasl-password", env: "KEXO_SASL_PASSWORD" },
  schemaRegistry: { flag: "schema-registry", env: "KEXO_SCHEMA_REGISTRY" },
  schemaRegistryUsername: { flag: "schema-registry-username", env: "KEXO_SCHEMA_REGISTRY_USERNAME" },
  schemaRegistryPassword: { flag: "schema-registry-password", env: "KEXO_SCHEMA_REGISTRY_PASSWORD" },
} as const;
export type SettingName = keyof typeof SETTINGS;

export const DEFAULTS = {
  handlers: "./handlers",
  db: "file:kexo.db",
  http: "0.0.0.0:9464",
  logLevel: "info",
  shutdownTimeout: "25000",
} as const;

const boolText = v.pipe(
  v.string(),
  v.toLowerCase(),
  v.picklist(["true", "false", "1", "0", "yes", "no", "on", "off"], "must be true or false"),
  v.transform((s) => ["true", "1", "yes", "on"].includes(s)),
);

/** A value that says something: "" or only whitespace in a file or the environment is a slip (a flag's is refused in args.ts). */
const filled = v.check((s: string) => s.trim() !== "", (i) => (i.input === "" ? "must not be empty" : "must not be blank (only whitespace)"));

const pemFile = v.optional(
  v.pipe(
    v.string(),
    filled,
    v.check((path) => {
      if (path.trim() === "") return true; // `filled` said so
      try {
        accessSync(path, constants.R_OK);
        return true;
      } catch {
        return false;
      }
    }, (issue) => `cannot read ${String(issue.input)}; give a readable PEM file`),
  ),
);

/** `new URL()` without the throw: valibot runs a pipe's later checks after an earlier one failed. */
function urlOf(s: string): URL | undefined {
  try {
    return new URL(s);
  } catch {
    return undefined;
  }
}

/**
 * An IP address (IPv6 in brackets) or a host name (RFC 1123 labels; `_` allowed, as container
 * names have it). All digits and dots is an IPv4 address, so 999.1.1.1 is refused, not looked up.
 */
function validHost(host: string): boolean {
  if (host.startsWith("[") && host.endsWith("]")) return isIP(host.slice(1, -1)) === 6;
  if (isIP(host) !== 0) return true;
  if (/^[\d.]+$/.test(host)) return false;
  return host.length <= 253 && host.split(".").every((label) => /^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$/i.test(label));
}

/** A value that failed to parse, quoted for the message unless it may carry a password. */
function quoted(s: string): string {
  return s.includes("@") ? "the value given" : `"${s}"`;
}

const REMOTE_DB = /^(libsql|https?|wss?):\/\//;

const Raw = v.object({
  brokers: v.optional(
    v.pipe(
      v.string(),
      v.transform((s) => s.split(",").map((b) => b.trim()).filter(Boolean)),
      v.array(
        v.pipe(
          v.string(),
          // Named back only when it cannot hold credentials (a URL with user:password@ would).
          v.regex(/^[^\s:]+:\d{1,5}$/, (issue) => {
            const got = String(issue.input);
            return `each broker must be host:port${/^[\w.\-:[\]]+$/.test(got) ? ` (got "${got}")` : " (a URL or user:password@ is not one)"}`;
          }),
          // The checks pass what the regex refused: that broker is reported once.
          v.check((b) => !/^[^\s:]+:\d{1,5}$/.test(b) || validHost(b.split(":")[0]!), (i) => `${i.input}: ${String(i.input).split(":")[0]} is not an IP address or host name`),
          v.check((b) => !/^[^\s:]+:\d{1,5}$/.test(b) || (Number(b.split(":")[1]) >= 1 && Number(b.split(":")[1]) <= 65535), (i) => `${i.input}: port ${String(i.input).split(":")[1]} is out of range (1 to 65535)`),
        ),
      ),
      v.minLength(1, "must list at least one host:port"),
    ),
  ),
  handlers: v.pipe(v.string(), filled),
  // Remote schemes: what @libsql/client connects to (journal/remote.ts isRemoteUrl).
  db: v.pipe(
    v.string(),
    v.regex(
      /^(file:|libsql:\/\/|https?:\/\/|wss?:\/\/|:memory:)/,
      // A plain path (never a URL with credentials) is named back with its file: form.
      (issue) => `must be file:PATH, libsql://HOST, http(s)://HOST or ws(s)://HOST${/^[\w./~-]+$/.test(String(issue.input)) ? ` (did you mean file:${String(issue.input)}?)` : ""}`,
    ),
    v.check((s) => !REMOTE_DB.test(s) || Boolean(urlOf(s)?.hostname), (i) => `"${redactUrl(String(i.input))}" is not a URL with a host; expected e.g. libsql://HOST[:PORT]`),
  ),
  http: v.pipe(
    v.string(),
    v.check((s) => parseHostPort(s) !== undefined, "must be HOST:PORT with a port from 0 to 65535 (0 picks a free port)"),
    // Refused here, not by the listen call much later with an unrelated error (ENOENT).
    v.check((s) => {
      const hp = parseHostPort(s);
      return hp === undefined || validHost(hp.host);
    }, (i) => `${String(i.input).slice(0, String(i.input).lastIndexOf(":"))} is not an IP address or host name; use e.g. 0.0.0.0:9464 (every interface) or 127.0.0.1:9464`),
    v.transform((s) => parseHostPort(s)!),
  ),
  // Any case (INFO, Debug): levels are words, not identifiers.
  logLevel: v.pipe(
    v.string(),
    v.trim(),
    v.toLowerCase(),
    v.picklist(levels, (i) => `must be one of ${levels.join(", ")}${didYouMean(String(i.input), levels)}`),
  ),
  shutdownTimeout: v.pipe(
    v.string(),
    v.regex(/^\d+$/, "must be a whole number of milliseconds"),
    v.transform(Number),
    v.maxValue(3_600_000, "must be at most 3600000 (one hour)"),
  ),
  clientId: v.optional(v.pipe(v.string(), filled)),
  tls: v.optional(boolText),
  tlsCa: pemFile,
  tlsCert: pemFile,
  tlsKey: pemFile,
  saslMechanism: v.optional(v.pipe(v.string(), v.toLowerCase(), v.picklist(["plain", "scram-sha-256", "scram-sha-512"], "must be plain, scram-sha-256 or scram-sha-512"))),
  saslUsername: v.optional(v.pipe(v.string(), filled)),
  saslPassword: v.optional(v.pipe(v.string(), filled)),
  schemaRegistry: v.optional(
    v.pipe(
      v.string(),
      v.check((s) => Boolean(urlOf(s)?.host), (i) => `must be a URL like http://host:8081; ${quoted(String(i.input))} is not one`),
      v.check((s) => { const u = urlOf(s); return !u?.host || /^https?:$/.test(u.protocol); }, "must be an http:// or https:// URL"),
      v.check((s) => { const u = urlOf(s); return !u || (!u.username && !u.password); }, "must not carry credentials; set KEXO_SCHEMA_REGISTRY_USERNAME and KEXO_SCHEMA_REGISTRY_PASSWORD"),
    ),
  ),
  schemaRegistryUsername: v.optional(v.pipe(v.string(), filled)),
  schemaRegistryPassword: v.optional(v.pipe(v.string(), filled)),
});

type Sources = Partial<Record<SettingName, { value: string; from: string }>>;

function readConfigFile(path: string, problems: Problem[]): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    problems.push({ path: "config", message: `cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}` });
    return {};
  }
  try {
    const parsed: unknown = JSON.parse(text);
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
      problems.push({ path: "config", message: `${path} must hold a JSON object` });
      return {};
    }
    return parsed as Record<string, unknown>;
  } catch (err) {
    const at = jsonErrorOffset(text);
    let where = "";
    if (at !== undefined) {
      const { line, column } = lineAndColumn(text, at);
      where = ` at line ${line}, column ${column}`;
    }
    problems.push({ path: "config", message: `${path} is not valid JSON${where}: ${(err as Error).message}` });
    return {};
  }
}

/**
 * Resolves the configuration. `flags` holds the command line's values by flag name;
 * `needBrokers` is false for commands that don't touch Kafka.
 */
export function resolveConfig(
  flags: Record<string, string | boolean | undefined>,
  env: Record<string, string | undefined>,
  opts: { needBrokers: boolean },
): Config {
  const problems: Problem[] = [];
  // An empty KEXO_CONFIG is unset, as every empty variable is (an empty --config is refused in args.ts).
  const configFile = ((flags.config as string | undefined) ?? env.KEXO_CONFIG) || undefined;
  const file = configFile ? readConfigFile(configFile, problems) : {};
  const known = new Set<string>(Object.values(SETTINGS).map((s) => s.flag));
  for (const k of Object.keys(file)) {
    if (known.has(k)) continue;
    problems.push({ path: `${k} (${configFile})`, message: `unknown key${didYouMean(k, known)}; known keys: ${[...known].join(", ")}` });
  }
  const sources: Sources = {};
  const raw: Record<string, string> = {};
  for (const [name, s] of Object.entries(SETTINGS) as [SettingName, (typeof SETTINGS)[SettingName]][]) {
    const flag = flags[s.flag];
    const fromFile = file[s.flag];
    let picked: { value: string; from: string } | undefined;
    if (flag !== undefined) picked = { value: String(flag), from: `--${s.flag}` };
    else if (env[s.env] !== undefined && env[s.env] !== "") picked = { value: env[s.env]!, from: s.env };
    else if (fromFile !== undefined) {
      const value = Array.isArray(fromFile) ? fromFile.join(",") : typeof fromFile === "object" ? JSON.stringify(fromFile) : String(fromFile);
      picked = { value, from: configFile! };
    } else if (name in DEFAULTS) picked = { value: DEFAULTS[name as keyof typeof DEFAULTS], from: "default" };
    if (picked) {
      sources[name] = picked;
      raw[name] = picked.value;
    }
  }
  const parsed = v.safeParse(Raw, raw);
  if (!parsed.success) {
    for (const issue of parsed.issues) {
      const name = (issuePath(issue).split(".")[0] ?? "") as SettingName;
      const s = SETTINGS[name];
      const src = sources[name]?.from;
      problems.push({ path: s ? `${s.flag}${src && src !== `--${s.flag}` ? ` (${src})` : ""}` : name || "config", message: issue.message });
    }
  }
  if (opts.needBrokers && (!parsed.success || !parsed.output.brokers) && !raw.brokers) {
    problems.push({ path: "brokers", message: "required: pass --brokers host:port[,host:port…] or set KEXO_BROKERS" });
  }
  // Cross-field rules read the raw values, so they are reported together with the others.
  if (raw.saslMechanism) {
    // An empty one given is reported by `filled`.
    if (raw.saslUsername === undefined) problems.push({ path: "sasl-username", message: `required with sasl-mechanism ${raw.saslMechanism}` });
    if (raw.saslPassword === undefined) problems.push({ path: "sasl-password", message: `required with sasl-mechanism ${raw.saslMechanism}` });
  } else if (raw.saslUsername || raw.saslPassword) {
    problems.push({ path: "sasl-mechanism", message: "required when a SASL username or password is set" });
  }
  if ((raw.schemaRegistryUsername !== undefined) !== (raw.schemaRegistryPassword !== undefined)) {
    const missing = raw.schemaRegistryUsername === undefined ? "schema-registry-username" : "schema-registry-password";
    problems.push({ path: missing, message: "required: the schema registry's username and password go together" });
  } else if (raw.schemaRegistryUsername !== undefined && !raw.schemaRegistry) {
    problems.push({ path: "schema-registry", message: "required when schema registry credentials are set" });
  }
  if (Boolean(raw.tlsCert) !== Boolean(raw.tlsKey)) {
    problems.push({ path: raw.tlsCert ? "tls-key" : "tls-cert", message: "tls-cert and tls-key go together (a client certificate and its private key)" });
  }
  const tlsFilesGiven = Boolean(raw.tlsCa || raw.tlsCert || raw.tlsKey);
  if (tlsFilesGiven && parsed.success && parsed.output.tls === false) {
    problems.push({ path: `tls (${sources.tls?.from})`, message: "is false, but TLS files are given; drop one or the other" });
  }
  const out = parsed.success ? parsed.output : undefined;
  const sasl: Config["sasl"] = out?.saslMechanism
    ? { mechanism: out.saslMechanism, username: out.saslUsername ?? "", password: out.saslPassword ?? "" }
    : undefined;
  if (problems.length > 0 || !out) throw new ConfigError(problems);
  return {
    brokers: out.brokers ?? [],
    handlers: out.handlers,
    handlersGiven: sources.handlers?.from !== "default",
    db: out.db,
    http: out.http,
    logLevel: out.logLevel,
    shutdownTimeoutMs: out.shutdownTimeout,
    clientId: out.clientId ?? `kexo-${hostname()}`,
    tls: out.tls ?? tlsFilesGiven,
    tlsFiles: tlsFilesGiven ? { ca: out.tlsCa, cert: out.tlsCert, key: out.tlsKey } : undefined,
    sasl,
    schemaRegistry: out.schemaRegistry
      ? { url: out.schemaRegistry, username: out.schemaRegistryUsername, password: out.schemaRegistryPassword }
      : undefined,
    configFile,
  };
}

/**
 * The warning for SASL without TLS, or nothing: PLAIN sends the password as it is, and with SCRAM
 * the username, the exchange (open to an offline guess of the password) and every message are
 * readable on the network. A warning, not an error: a private network may be what the user chose.
 */
export function saslWithoutTls(config: Pick<Config, "sasl" | "tls">): { msg: string; mechanism: string; detail: string } | undefined {
  if (!config.sasl || config.tls) return undefined;
  const { mechanism } = config.sasl;
  const exposed = mechanism === "plain" ? "the password is sent as it is" : "the SCRAM exchange and every message are readable";
  return {
    msg: "SASL credentials sent without TLS",
    mechanism,
    detail: `${exposed} on the network; set KEXO_TLS=true (or --tls, or --tls-ca FILE for a private CA) if the brokers' SASL listener speaks TLS (SASL_SSL)`,
  };
}
