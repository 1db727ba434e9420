// The kafkajs client: brokers, TLS/SASL, and kafkajs's own logs routed into kexo's JSON lines.
import { Kafka, logLevel, type KafkaConfig, type SASLOptions } from "kafkajs";
import type { Logger } from "../log.ts";

export interface KafkaSettings {
  brokers: string[];
  clientId: string;
  tls?: boolean;
  sasl?: { mechanism: "plain" | "scram-sha-256" | "scram-sha-512"; username: string; password: string };
}

let warningFilterInstalled = false;

/**
 * kafkajs's request queue sets timers with negative delays under Bun, Deno and Node ≥ 23
 * (tulios/kafkajs#1751). The warning is harmless and repeats for every throttled request, so it
 * alone is dropped; every other process warning still prints.
 */
export function silenceTimeoutNegativeWarning(): void {
  if (warningFilterInstalled) return;
  warningFilterInstalled = true;
  const original = process.emitWarning.bind(process);
  process.emitWarning = ((warning: string | Error, ...rest: unknown[]) => {
    const name = typeof warning === "string" ? (typeof rest[0] === "string" ? rest[0] : (rest[0] as { type?: string })?.type) : warning.name;
    if (name === "TimeoutNegativeWarning") return;
    return (original as (...a: unknown[]) => void)(warning, ...rest);
  }) as typeof process.emitWarning;
}

const levelName: Record<number, "error" | "warn" | "info" | "debug"> = {
  [logLevel.ERROR]: "error",
  [logLevel.WARN]: "warn",
  [logLevel.INFO]: "info",
  [logLevel.DEBUG]: "debug",
};

export function createKafka(settings: KafkaSettings, log: Logger): Kafka {
  silenceTimeoutNegativeWarning();
  const kafkaLog = log.child({ component: "kafkajs" });
  const config: KafkaConfig = {
    clientId: settings.clientId,
    brokers: settings.brokers,
    ssl: settings.tls ? true : undefined,
    sasl: settings.sasl as SASLOptions | undefined,
    connectionTimeout: 3000,
    requestTimeout: 30000,
    retry: { initialRetryTime: 100, maxRetryTime: 5000, retries: 8 },
    // kafkajs's INFO lines (joins, commits) are debug-level detail for kexo's users.
    logLevel: log.enabled("debug") ? logLevel.DEBUG : logLevel.WARN,
    logCreator: () => ({ namespace, level, log: entry }) => {
      const { message, timestamp: _t, logger: _l, ...rest } = entry as Record<string, unknown> & { message: string };
      const lvl = levelName[level] ?? "debug";
      kafkaLog[lvl === "info" ? "debug" : lvl](String(message), { namespace, ...rest });
    },
  };
  return new Kafka(config);
}
