// The kafkajs client: brokers, TLS/SASL, and kafkajs's own logs routed into kexo's JSON lines.
import { Kafka, logLevel, type KafkaConfig, type RetryOptions, type SASLOptions } from "kafkajs";
// @ts-expect-error: kafkajs's internal request queue has no type declarations.
import RequestQueue from "kafkajs/src/network/requestQueue/index.js";
import { readFileSync } from "node:fs";
import type { ConnectionOptions } from "node:tls";
import { ConfigError } from "../errors.ts";
import type { Logger } from "../log.ts";
import { installFetchDecoder } from "./fetch-decode.ts";
import { createThrottle } from "./log-throttle.ts";

export interface KafkaSettings {
  brokers: string[];
  clientId: string;
  tls?: boolean;
  /** PEM files: a private CA bundle, a client certificate and its key (mutual TLS). */
  tlsFiles?: { ca?: string; cert?: string; key?: string };
  sasl?: { mechanism: "plain" | "scram-sha-256" | "scram-sha-512"; username: string; password: string };
}

let warningSilenced = false;

/**
 * kafkajs's request queue schedules its throttle check with `throttledUntil - Date.now()`, a
 * negative delay when it isn't throttled (tulios/kafkajs#1751); Bun, Deno and Node ≥ 23 print a
 * TimeoutNegativeWarning for each. A negative delay already means "as soon as possible", so this
 * clamps it to 0 for that one method only: same behaviour, no warning, other warnings untouched.
 */
export function silenceTimeoutNegativeWarning(): void {
  if (warningSilenced) return;
  warningSilenced = true;
  const proto = (RequestQueue as { prototype: { scheduleCheckPendingRequests(this: unknown): void } }).prototype;
  const original = proto.scheduleCheckPendingRequests;
  proto.scheduleCheckPendingRequests = function (this: unknown) {
    const realSetTimeout = globalThis.setTimeout;
    globalThis.setTimeout = ((fn: () => void, ms?: number) => realSetTimeout(fn, Math.max(0, ms ?? 0))) as typeof setTimeout;
    try {
      original.call(this);
    } finally {
      globalThis.setTimeout = realSetTimeout;
    }
  };
}

/**
 * kafkajs's `ssl`: true uses the system's CAs; with files, their PEM contents (a CA bundle
 * replaces the system's CAs, as in Node's tls). Read once, here, so a bad file stops the start.
 */
export function sslOptions(settings: Pick<KafkaSettings, "tls" | "tlsFiles">): true | ConnectionOptions | undefined {
  if (!settings.tls) return undefined;
  const files = settings.tlsFiles;
  if (!files) return true;
  const read = (what: string, path: string | undefined) => {
    if (!path) return undefined;
    try {
      return readFileSync(path, "utf8");
    } catch (err) {
      throw new ConfigError([{ path: what, message: `cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}` }]);
    }
  };
  const ca = read("tls-ca", files.ca);
  return { ...(ca && { ca: [ca] }), cert: read("tls-cert", files.cert), key: read("tls-key", files.key) };
}

const levelName: Record<number, "error" | "warn" | "info" | "debug"> = {
  [logLevel.ERROR]: "error",
  [logLevel.WARN]: "warn",
  [logLevel.INFO]: "info",
  [logLevel.DEBUG]: "debug",
};

/** `retry`: kafkajs's retries for this client's connections and requests, in place of kexo's. */
export function createKafka(settings: KafkaSettings, log: Logger, retry?: RetryOptions): Kafka {
  silenceTimeoutNegativeWarning();
  installFetchDecoder();
  const config = kafkaConfig(settings, log);
  return new Kafka(retry ? { ...config, retry } : config);
}

/** kafkajs's client options for kexo's settings. */
export function kafkaConfig(settings: KafkaSettings, log: Logger): KafkaConfig {
  const kafkaLog = log.child({ component: "kafkajs" });
  // kafkajs's partitioner notice is for users migrating from kafkajs 1.x; kexo never was one.
  process.env.KAFKAJS_NO_PARTITIONER_WARNING = "1";
  const throttle = createThrottle();
  const config: KafkaConfig = {
    clientId: settings.clientId,
    brokers: settings.brokers,
    ssl: sslOptions(settings),
    sasl: settings.sasl as SASLOptions | undefined,
    connectionTimeout: 3000,
    requestTimeout: 30000,
    retry: { initialRetryTime: 100, maxRetryTime: 5000, retries: 8 },
    // kafkajs's INFO lines (joins, commits) are debug-level detail for kexo's users.
    logLevel: log.enabled("debug") ? logLevel.DEBUG : logLevel.WARN,
    logCreator: () => ({ namespace, level, log: entry }) => {
      const { message, timestamp: _t, logger: _l, ...rest } = entry as Record<string, unknown> & { message: string };
      const lvl = levelName[level] ?? "debug";
      if (lvl === "warn" || lvl === "error") {
        const pass = throttle.admit(`${lvl}\u0000${namespace}\u0000${String(message)}`);
        if (!pass) return;
        if (pass.suppressed > 0) rest.suppressedSimilar = pass.suppressed;
      }
      kafkaLog[lvl === "info" ? "debug" : lvl](String(message), { namespace, ...rest });
    },
  };
  return config;
}
