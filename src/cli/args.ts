// Command-line parsing (node:util parseArgs: built in, strict, no dependency to carry).
import { parseArgs } from "node:util";
import { UsageError } from "../errors.ts";

export const COMMANDS = ["run", "dev", "check", "dlq", "inspect", "version", "help"] as const;
export type Command = (typeof COMMANDS)[number];

const OPTIONS = {
  brokers: { type: "string" },
  handlers: { type: "string" },
  db: { type: "string" },
  http: { type: "string" },
  config: { type: "string" },
  "log-level": { type: "string" },
  "shutdown-timeout": { type: "string" },
  "client-id": { type: "string" },
  tls: { type: "boolean" },
  "tls-ca": { type: "string" },
  "tls-cert": { type: "string" },
  "tls-key": { type: "string" },
  "sasl-mechanism": { type: "string" },
  "sasl-username": { type: "string" },
  "sasl-password": { type: "string" },
  "schema-registry": { type: "string" },
  "schema-registry-username": { type: "string" },
  "schema-registry-password": { type: "string" },
  json: { type: "boolean" },
  demo: { type: "boolean" },
  "demo-count": { type: "string" },
  handler: { type: "string" },
  since: { type: "string" },
  to: { type: "string" },
  all: { type: "boolean" },
  "dry-run": { type: "boolean" },
  help: { type: "boolean", short: "h" },
  version: { type: "boolean", short: "v" },
} as const;

export interface Args {
  command: Command;
  positionals: string[];
  flags: Record<string, string | boolean | undefined>;
}

export const USAGE = `kexo — exactly-once Kafka handlers

Usage:
  kexo run     [flags]            consume with the handlers (the default command)
  kexo dev     [flags] [--demo]   the same, on an embedded development broker
  kexo check   [flags] [--json]   validate config and handlers, print the plan; no network
  kexo dlq list [--handler H] [--since T] [--json]
  kexo dlq show ID [--json]
  kexo dlq replay (--all | ID…) [--to TOPIC] [--dry-run]
  kexo inspect ID [--handler H] [--json]
  kexo version

Flags (each also an environment variable; flag > env > --config file > default):
  --brokers host:port,…     KEXO_BROKERS           required for run
  --handlers DIR            KEXO_HANDLERS          ./handlers
  --db URL                  KEXO_DB                file:kexo.db
  --http HOST:PORT          KEXO_HTTP              0.0.0.0:9464 (port 0 picks a free port)
  --config FILE             KEXO_CONFIG            JSON file with the same keys
  --log-level LEVEL         KEXO_LOG_LEVEL         info (debug, info, warn, error, silent)
  --shutdown-timeout MS     KEXO_SHUTDOWN_TIMEOUT  25000
  --client-id ID            KEXO_CLIENT_ID         kexo-HOSTNAME
  --tls                     KEXO_TLS               TLS with the system's CAs
  --tls-ca FILE             KEXO_TLS_CA            PEM CA bundle (implies --tls)
  --tls-cert FILE           KEXO_TLS_CERT          PEM client certificate, mutual TLS (with --tls-key)
  --tls-key FILE            KEXO_TLS_KEY           PEM private key of --tls-cert
  --sasl-mechanism M        KEXO_SASL_MECHANISM    plain | scram-sha-256 | scram-sha-512
  --sasl-username U         KEXO_SASL_USERNAME
  --sasl-password P         KEXO_SASL_PASSWORD
  --schema-registry URL     KEXO_SCHEMA_REGISTRY   for handlers with format avro, protobuf, json-schema
  --schema-registry-username U  KEXO_SCHEMA_REGISTRY_USERNAME  (basic auth)
  --schema-registry-password P  KEXO_SCHEMA_REGISTRY_PASSWORD
`;

export function parseCli(argv: string[]): Args {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
  } catch (err) {
    throw new UsageError(`${(err as Error).message}\nRun kexo help for the flags.`);
  }
  const positionals = [...parsed.positionals];
  let command: Command = "run";
  if (parsed.values.help) command = "help";
  else if (parsed.values.version) command = "version";
  else if (positionals.length > 0) {
    const first = positionals.shift()!;
    if (!(COMMANDS as readonly string[]).includes(first)) {
      throw new UsageError(`unknown command "${first}"; commands: ${COMMANDS.join(", ")}`);
    }
    command = first as Command;
  }
  return { command, positionals, flags: parsed.values as Args["flags"] };
}
