// Command-line parsing (node:util parseArgs: built in, strict, no dependency to carry).
import { nearest } from "../suggest.ts";
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

/** The settings' flags as help lists them, each with its environment variable and default. */
const SETTING_HELP: [string, string][] = [
  ["brokers", "--brokers host:port,…     KEXO_BROKERS           required for run and dlq replay"],
  ["handlers", "--handlers DIR            KEXO_HANDLERS          ./handlers"],
  ["db", "--db URL                  KEXO_DB                file:kexo.db"],
  ["http", "--http HOST:PORT          KEXO_HTTP              0.0.0.0:9464 (port 0 picks a free port)"],
  ["config", "--config FILE             KEXO_CONFIG            JSON file with the same keys"],
  ["log-level", "--log-level LEVEL         KEXO_LOG_LEVEL         info (debug, info, warn, error, silent; any case)"],
  ["shutdown-timeout", "--shutdown-timeout MS     KEXO_SHUTDOWN_TIMEOUT  25000"],
  ["client-id", "--client-id ID            KEXO_CLIENT_ID         kexo-HOSTNAME"],
  ["tls", "--tls                     KEXO_TLS               TLS with the system's CAs"],
  ["tls-ca", "--tls-ca FILE             KEXO_TLS_CA            PEM CA bundle (implies --tls)"],
  ["tls-cert", "--tls-cert FILE           KEXO_TLS_CERT          PEM client certificate, mutual TLS (with --tls-key)"],
  ["tls-key", "--tls-key FILE            KEXO_TLS_KEY           PEM private key of --tls-cert"],
  ["sasl-mechanism", "--sasl-mechanism M        KEXO_SASL_MECHANISM    plain | scram-sha-256 | scram-sha-512"],
  ["sasl-username", "--sasl-username U         KEXO_SASL_USERNAME"],
  ["sasl-password", "--sasl-password P         KEXO_SASL_PASSWORD"],
  ["schema-registry", "--schema-registry URL     KEXO_SCHEMA_REGISTRY   for handlers with format avro, protobuf, json-schema"],
  ["schema-registry-username", "--schema-registry-username U  KEXO_SCHEMA_REGISTRY_USERNAME  (basic auth)"],
  ["schema-registry-password", "--schema-registry-password P  KEXO_SCHEMA_REGISTRY_PASSWORD"],
];
const ALL_SETTINGS = SETTING_HELP.map(([flag]) => flag);
/** The settings a command reading only the journal uses. */
const JOURNAL_SETTINGS = ["db", "config"];

const settingLines = (flags: readonly string[]) => SETTING_HELP.filter(([f]) => flags.includes(f)).map(([, line]) => `  ${line}`).join("\n");

const USAGE = `kexo — exactly-once Kafka handlers

Usage:
  kexo run     [flags]            consume with the handlers (the default command)
  kexo dev     [flags] [--demo]   the same, on an embedded development broker
  kexo check   [flags] [--json]   validate config and handlers, print the plan; no network
  kexo dlq list [--handler H] [--since T] [--json]
  kexo dlq show ID [--json]
  kexo dlq replay (--all [--handler H] [--since T] | ID…) [--to TOPIC] [--dry-run] [--json]
  kexo inspect ID [--handler H] [--json]
  kexo version [--json]
  kexo COMMAND --help             one command's flags

Flags (each also an environment variable; flag > env > --config file > default):
${settingLines(ALL_SETTINGS)}
`;

/** Flags that belong to some commands only; every other flag is a setting (config.ts) or --help/--version. */
const COMMAND_FLAGS = ["json", "demo", "demo-count", "handler", "since", "to", "all", "dry-run"] as const;
type CommandFlag = (typeof COMMAND_FLAGS)[number];

/** What each command flag does, for a command's --help. */
const FLAG_HELP: Record<CommandFlag, string> = {
  json: '--json            print JSON on stdout; an error too: {"error":{"exitCode","code","message",…}}',
  demo: "--demo            also produce sample messages for the handlers",
  "demo-count": "--demo-count N    how many sample messages --demo produces (1000)",
  handler: "--handler H       only handler H's (its name)",
  since: "--since T         only those that failed since T: an ISO 8601 time, or 30m, 2h, 7d",
  to: "--to TOPIC        publish to TOPIC instead of each one's source topic",
  all: "--all             every dead letter not replayed yet",
  "dry-run": "--dry-run         print what would be replayed; publish nothing",
};

/** What one command (or dlq subcommand) takes besides the settings' flags. */
interface Shape {
  name: string;
  /** Its usage line, as USAGE shows it. */
  usage: string;
  /** What it does, one line for its --help. */
  about: string;
  /** Positionals after the command (and subcommand) word. */
  min: number;
  max: number;
  /** The message when fewer than `min` are given. */
  missing?: string;
  flags: readonly CommandFlag[];
  /** Whether it reads the configuration (and so takes the settings' flags). */
  settings: boolean;
  /** The settings its --help lists: those that change what it does. */
  shown: readonly string[];
}

const SHAPES: Record<Exclude<Command, "dlq" | "help">, Shape> = {
  run: {
    name: "kexo run",
    usage: "kexo run [flags]",
    about: "consume with the handlers (the default command)",
    min: 0,
    max: 0,
    flags: [],
    settings: true,
    shown: ALL_SETTINGS,
  },
  dev: {
    name: "kexo dev",
    usage: "kexo dev [flags] [--demo] [--demo-count N] [--json]",
    about: "the same as run, on an embedded development broker (no --brokers)",
    min: 0,
    max: 0,
    flags: ["demo", "demo-count", "json"],
    settings: true,
    shown: ALL_SETTINGS.filter((f) => f !== "brokers"),
  },
  check: {
    name: "kexo check",
    usage: "kexo check [flags] [--json]",
    about: "load and validate config and handlers, print the plan, exit; no network",
    min: 0,
    max: 0,
    flags: ["json"],
    settings: true,
    shown: ALL_SETTINGS,
  },
  inspect: {
    name: "kexo inspect",
    usage: "kexo inspect ID [--handler H] [--json]",
    about: "one message's journal entry (ID is its ctx.id): status, attempts, steps, result, error",
    min: 1,
    max: 1,
    missing: "kexo inspect ID: give the message's dedup id (ctx.id)",
    flags: ["handler", "json"],
    settings: true,
    shown: JOURNAL_SETTINGS,
  },
  version: { name: "kexo version", usage: "kexo version [--json]", about: "print kexo's version", min: 0, max: 0, flags: ["json"], settings: false, shown: [] },
};

const DLQ_SHAPES: Record<"list" | "show" | "replay", Shape> = {
  list: {
    name: "kexo dlq list",
    usage: "kexo dlq list [--handler H] [--since T] [--json]",
    about: "the dead letters kept in the journal",
    min: 0,
    max: 0,
    flags: ["handler", "since", "json"],
    settings: true,
    shown: JOURNAL_SETTINGS,
  },
  show: {
    name: "kexo dlq show",
    usage: "kexo dlq show ID [--json]",
    about: "one dead letter (ID from kexo dlq list) with its key, value and headers",
    min: 1,
    max: 1,
    missing: "kexo dlq show ID: give a dead-letter id from kexo dlq list",
    flags: ["json"],
    settings: true,
    shown: JOURNAL_SETTINGS,
  },
  replay: {
    name: "kexo dlq replay",
    usage: "kexo dlq replay (--all [--handler H] [--since T] | ID…) [--to TOPIC] [--dry-run] [--json]",
    about: "re-publish dead letters to their source topic (or --to) and mark them replayed",
    min: 0,
    max: Infinity,
    flags: ["all", "handler", "since", "to", "dry-run", "json"],
    settings: true,
    shown: [...JOURNAL_SETTINGS, "brokers", "client-id", "log-level", "tls", "tls-ca", "tls-cert", "tls-key", "sasl-mechanism", "sasl-username", "sasl-password"],
  },
};

/** A word that is none of the commands, with the nearest one. */
function unknownCommand(word: string, prefix = ""): UsageError {
  const near = nearest(word, COMMANDS);
  return new UsageError(`${prefix}unknown command "${word}"${near ? ` (did you mean ${near}?)` : ""}; commands: ${COMMANDS.join(", ")}`);
}

/**
 * The help of `topic` (a command, and a dlq subcommand): its usage lines and flags; the general
 * help for anything else, unless `strict` (asked as `kexo help TOPIC`, where an unknown TOPIC is a
 * slip, as the command itself would be: exit 64). `--help` anywhere answers the general help.
 */
export function helpText(topic: string[], strict = false): string {
  const [command, sub] = topic;
  let shapes: Shape[];
  if (command === "dlq") shapes = sub === "list" || sub === "show" || sub === "replay" ? [DLQ_SHAPES[sub]] : Object.values(DLQ_SHAPES);
  else if (command !== undefined && command in SHAPES) shapes = [SHAPES[command as keyof typeof SHAPES]];
  else if (command === undefined || command === "help" || !strict) return USAGE;
  else throw unknownCommand(command, "kexo help: ");
  const flags = COMMAND_FLAGS.filter((f) => shapes.some((s) => s.flags.includes(f)));
  const shown = ALL_SETTINGS.filter((f) => shapes.some((s) => s.shown.includes(f)));
  const parts = [`Usage:\n${shapes.map((s) => `  ${s.usage}\n      ${s.about}`).join("\n")}`];
  if (flags.length > 0) parts.push(`Flags:\n${flags.map((f) => `  ${FLAG_HELP[f]}`).join("\n")}`);
  if (shown.length > 0) {
    parts.push(`Settings (each also an environment variable and a --config file key; flag > env > file > default):\n${settingLines(shown)}`);
  }
  if (shapes.some((s) => s.settings) && shown.length < ALL_SETTINGS.length) parts.push("It accepts the other settings too; kexo help lists them.");
  return parts.join("\n\n") + "\n";
}

/**
 * Refuses what the command would silently ignore: arguments past those it takes and flags of
 * other commands. Checked here, before any command opens a journal or a connection.
 */
function checkShape(command: Exclude<Command, "help">, positionals: string[], flags: Args["flags"]): void {
  let shape: Shape;
  let rest = positionals;
  if (command === "dlq") {
    const sub = positionals[0];
    if (sub !== "list" && sub !== "show" && sub !== "replay") {
      const got = sub === undefined ? "no subcommand" : `unknown subcommand "${sub}"`;
      throw new UsageError(`kexo dlq: ${got}; one of:\n  ${Object.values(DLQ_SHAPES).map((s) => s.usage).join("\n  ")}`);
    }
    shape = DLQ_SHAPES[sub];
    rest = positionals.slice(1);
  } else {
    shape = SHAPES[command];
  }
  for (const [name, value] of Object.entries(flags)) {
    if (value === undefined || name === "help" || name === "version") continue;
    const allowed = (COMMAND_FLAGS as readonly string[]).includes(name) ? (shape.flags as readonly string[]).includes(name) : shape.settings;
    if (!allowed) throw new UsageError(`${shape.name}: unexpected flag --${name}; usage: ${shape.usage}`);
    // An empty value is a slip (an unset shell variable: --db "$DB"), never a choice: refused
    // rather than read as "not given" or as a value that fails later with a vaguer message.
    if (typeof value === "string" && value.trim() === "") {
      throw new UsageError(`${shape.name}: --${name} was given an empty value; give one, or leave the flag out`);
    }
  }
  if (rest.some((a) => a.trim() === "")) throw new UsageError(`${shape.name}: an argument is empty; usage: ${shape.usage}`);
  if (rest.length > shape.max) {
    const extra = rest.slice(shape.max);
    const takes = shape.max === 0 ? "takes no arguments" : `takes ${shape.max === 1 ? "one" : shape.max} argument${shape.max === 1 ? "" : "s"}`;
    throw new UsageError(
      `${shape.name}: unexpected argument${extra.length === 1 ? "" : "s"} ${extra.map((a) => `"${a}"`).join(" ")} (it ${takes}); usage: ${shape.usage}`,
    );
  }
  if (rest.length < shape.min) throw new UsageError(shape.missing ?? `usage: ${shape.usage}`);
  const demoCount = flags["demo-count"];
  if (typeof demoCount === "string" && !/^[1-9]\d{0,8}$/.test(demoCount)) {
    throw new UsageError(`kexo dev: --demo-count ${demoCount}: expected a whole number of messages from 1 to 999999999`);
  }
  if (command === "dlq" && positionals[0] !== "list") {
    for (const id of rest) {
      if (!/^\d+$/.test(id)) throw new UsageError(`dead-letter id "${id}" is not a number; see kexo dlq list`);
    }
  }
  if (command === "dlq" && positionals[0] === "replay") {
    if (flags.all && rest.length > 0) throw new UsageError(`kexo dlq replay: give --all or dead-letter ids, not both (got --all and ${rest.join(" ")})`);
    if (!flags.all && rest.length === 0) throw new UsageError("kexo dlq replay: give --all or dead-letter ids (see kexo dlq list)");
    if (!flags.all && (flags.handler !== undefined || flags.since !== undefined)) {
      throw new UsageError("kexo dlq replay: --handler and --since select dead letters for --all; with ids, drop them");
    }
  }
}

/**
 * Whether the line asks for --json, read without parsing it: the error of a line that does not
 * parse is answered in JSON too. Past `--` it is an argument, not the flag.
 */
export function jsonRequested(argv: string[]): boolean {
  const end = argv.indexOf("--");
  return (end < 0 ? argv : argv.slice(0, end)).includes("--json");
}

export function parseCli(argv: string[]): Args {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
  } catch (err) {
    // node:util's texts, said the way kexo's other usage errors are, with the nearest flag.
    const message = (err as Error).message;
    const unknown = /^Unknown option '(-{1,2}[^']*)'/.exec(message)?.[1];
    if (unknown) {
      const near = nearest(unknown.replace(/^-+/, ""), Object.keys(OPTIONS));
      throw new UsageError(`unknown flag ${unknown}${near ? ` (did you mean --${near}?)` : ""}; run kexo help for the flags`);
    }
    throw new UsageError(`${message}\nRun kexo help for the flags.`);
  }
  const positionals = [...parsed.positionals];
  const flags = parsed.values as Args["flags"];
  let command: Command = "run";
  // --help and --version answer whatever else the line holds; --help with the command's help
  // (helpText reads the command and the dlq subcommand from the positionals).
  if (parsed.values.help) return { command: "help", positionals, flags };
  if (parsed.values.version) return { command: "version", positionals, flags };
  if (positionals.length > 0) {
    const first = positionals.shift()!;
    if (!(COMMANDS as readonly string[]).includes(first)) throw unknownCommand(first);
    command = first as Command;
  }
  if (command !== "help") checkShape(command, positionals, flags);
  return { command, positionals, flags };
}
