// Turns a handler file's default export into a ResolvedHandler: validated, defaults applied,
// group id derived. Every problem is reported as `FILE: field: message`.
import { extname } from "node:path";
import * as v from "valibot";
import type { Problem } from "../errors.ts";
import { HANDLER, type Handler, type Order, type PayloadFormat } from "../index.ts";
import type { PayloadRegistry } from "../registry/registry.ts";
import { didYouMean } from "../suggest.ts";

export interface ResolvedHandler {
  name: string;
  file: string;
  def: Handler<unknown>;
  topics: (string | RegExp)[];
  groupId: string;
  order: Order;
  /** The handler's `format`; without one, "json" with a schema and "raw" without. */
  format: PayloadFormat;
  /** The schema registry (--schema-registry), when configured: decodes registry formats, encodes emits. */
  registry?: PayloadRegistry;
  concurrency: number;
  /** Emits and offsets go to Kafka in one transaction (src/outbox/transactional.ts). */
  kafkaTransactions: boolean;
  retry: { attempts: number; initialDelayMs: number; maxDelayMs: number };
  /** Dead-letter topic for a source topic, or false to retry forever. */
  deadLetterTopic(topic: string): string | false;
}

export const DEFAULT_RETRY = { attempts: 5, initialDelayMs: 200, maxDelayMs: 30_000 };
export const DEFAULT_CONCURRENCY = 16;

const fn = v.custom<(...args: never[]) => unknown>((x) => typeof x === "function", "must be a function");
const positiveInt = v.pipe(v.number("must be a number"), v.integer("must be an integer"), v.minValue(1, "must be at least 1"));
const nonNegativeInt = v.pipe(v.number("must be a number"), v.integer("must be an integer"), v.minValue(0, "must be 0 or more"));
// Timers clamp a longer delay to 1 ms: a retry delay past it would retry at once, in a loop.
const delayMs = v.pipe(nonNegativeInt, v.maxValue(2_147_483_647, "must be at most 2147483647 ms (24.8 days): a longer timer fires at once"));
const topicName = v.pipe(
  v.string(),
  v.nonEmpty("must not be empty"),
  v.maxLength(249, "must be at most 249 characters (Kafka's limit)"),
  v.regex(/^[A-Za-z0-9._-]+$/, "a Kafka topic name holds only letters, digits, '.', '_' and '-'"),
);

/**
 * A handler's name is a metric label, part of its group id, dedup ids and journal rows, and a
 * CLI argument (--handler): Kafka's id characters only, none a shell or a label would mangle.
 */
const NAME = /^[A-Za-z0-9._-]{1,200}$/;
const NAME_RULE = "1 to 200 characters, each a letter, digit, '.', '_' or '-'";

export const PAYLOAD_FORMATS = ["json", "avro", "protobuf", "json-schema", "raw"] as const;
/** Formats whose values are decoded through the schema registry. */
export const REGISTRY_FORMATS: readonly PayloadFormat[] = ["avro", "protobuf", "json-schema"];

const RETRY_ENTRIES = {
  attempts: v.optional(positiveInt),
  initialDelayMs: v.optional(delayMs),
  maxDelayMs: v.optional(delayMs),
};

const HandlerShape = v.object({
  name: v.optional(v.pipe(v.string("must be a string"), v.regex(NAME, `must be ${NAME_RULE}`))),
  topics: v.pipe(
    v.array(v.union([topicName, v.instance(RegExp)], "must be a topic name or a RegExp"), "must be an array of topics"),
    v.minLength(1, "must name at least one topic"),
  ),
  // Any characters Kafka takes: an explicit group id often continues a group that exists already.
  groupId: v.optional(v.pipe(v.string("must be a string"), v.nonEmpty("must not be empty"), v.maxLength(255, "must be at most 255 characters"))),
  schema: v.optional(v.custom((x) => typeof x === "object" && x !== null && "~standard" in x, "must be a valibot schema")),
  key: v.optional(fn),
  order: v.optional(v.picklist(["partition", "key", "topic"], 'must be "partition", "key" or "topic"')),
  format: v.optional(v.picklist(PAYLOAD_FORMATS, `must be ${PAYLOAD_FORMATS.map((f) => `"${f}"`).join(", ")}`)),
  concurrency: v.optional(positiveInt),
  retry: v.optional(v.object(RETRY_ENTRIES, "must be { attempts, initialDelayMs, maxDelayMs }")),
  deadLetter: v.optional(v.union([topicName, v.literal(false)], "must be a topic name or false")),
  kafkaTransactions: v.optional(v.boolean("must be true or false")),
  setup: v.optional(fn),
  handle: fn,
  // Only a missing key has no input: a wrong value gets its entry's own message.
}, (issue) => (issue.input === undefined ? "is required" : "must be an object"));

/** ` (e.g. orders.ts)` for `ordérs`: accents dropped, other characters made `_`; or nothing. */
function suggestedName(name: string, ext: string): string {
  const s = name.normalize("NFKD").replace(/[\u0300-\u036f]/g, "").replace(/[^A-Za-z0-9._-]+/g, "_").slice(0, 200);
  return /[A-Za-z0-9]/.test(s) ? ` (e.g. ${s}${ext})` : "";
}

export function groupIdFor(name: string, topics: (string | RegExp)[]): string {
  const parts = topics.map((t) => (typeof t === "string" ? t : t.source.replace(/[^A-Za-z0-9._-]+/g, "_")));
  return `kexo-${name}-${parts.join("-")}`.slice(0, 255);
}

/** Pushes a problem for each key of `given` not in `known`, with the likely meant one; returns them. */
function unknownKeys(given: Record<string, unknown>, known: string[], prefix: string, file: string, problems: Problem[]): string[] {
  const unknown = Object.keys(given).filter((k) => !known.includes(k));
  for (const k of unknown) {
    const hint = didYouMean(k, known);
    problems.push({ path: `${file}: ${prefix}${k}`, message: `unknown ${prefix ? `${prefix.slice(0, -1)} ` : "handler "}option${hint || `; known: ${known.join(", ")}`}` });
  }
  return unknown;
}

export function issuePath(issue: v.BaseIssue<unknown>): string {
  return (issue.path ?? []).map((p) => String(p.key)).join(".");
}

/** Validates one handler file's default export; returns it resolved or pushes problems. */
export function resolveHandler(file: string, defaultName: string, exported: unknown, problems: Problem[]): ResolvedHandler | undefined {
  if (exported === undefined) {
    problems.push({ path: file, message: "has no default export; export default defineHandler({ … })" });
    return undefined;
  }
  if (typeof exported !== "object" || exported === null || !(HANDLER in exported)) {
    problems.push({ path: file, message: "default export is not a handler; wrap it in defineHandler({ … }) from \"kexo\"" });
    return undefined;
  }
  // A misspelt option would otherwise fall back to its default without a word (`deadletter: false`
  // would dead-letter where the handler meant to retry forever).
  const unknown = unknownKeys(exported as Record<string, unknown>, Object.keys(HandlerShape.entries), "", file, problems);
  const retryGiven = (exported as { retry?: unknown }).retry;
  if (typeof retryGiven === "object" && retryGiven !== null) unknown.push(...unknownKeys(retryGiven as Record<string, unknown>, Object.keys(RETRY_ENTRIES), "retry.", file, problems));
  const parsed = v.safeParse(HandlerShape, exported);
  if (!parsed.success) {
    for (const issue of parsed.issues) problems.push({ path: `${file}: ${issuePath(issue) || "handler"}`, message: issue.message });
    return undefined;
  }
  if (unknown.length > 0) return undefined;
  const def = exported as Handler<unknown>;
  if ((def.schema as { async?: unknown } | undefined)?.async === true) {
    // safeParse() of an async schema gives a Promise, which would read as a success with no value.
    problems.push({ path: `${file}: schema`, message: "is an async valibot schema (pipeAsync, checkAsync, …): kexo validates each message synchronously; use the sync functions" });
    return undefined;
  }
  const order = def.order ?? "partition";
  if (order === "topic" && def.topics.some((t) => t instanceof RegExp)) {
    problems.push({ path: `${file}: topics`, message: 'a RegExp topic can not be used with order: "topic"; list the topics by name' });
    return undefined;
  }
  const format = def.format ?? (def.schema ? "json" : "raw");
  if (format === "raw" && def.schema) {
    problems.push({ path: `${file}: format`, message: '"raw" hands the handler the value\'s bytes, so it can not be combined with schema; drop one' });
    return undefined;
  }
  const retry = { ...DEFAULT_RETRY, ...def.retry };
  if (retry.maxDelayMs < retry.initialDelayMs) {
    problems.push({ path: `${file}: retry.maxDelayMs`, message: "must be at least retry.initialDelayMs" });
    return undefined;
  }
  const name = def.name ?? defaultName;
  if (!NAME.test(name)) {
    problems.push({
      path: file,
      message: `the file name gives the handler the name "${name}", which must be ${NAME_RULE}: it becomes a metric label, ` +
        `part of the consumer group id and journal rows, and a CLI argument. Rename the file${suggestedName(name, extname(file))}, or set the handler's name option`,
    });
    return undefined;
  }
  const deadLetter = def.deadLetter;
  const loops = typeof deadLetter === "string" ? def.topics.find((t) => (typeof t === "string" ? t === deadLetter : deadLetter.search(t) >= 0)) : undefined;
  if (loops !== undefined) {
    problems.push({
      path: `${file}: deadLetter`,
      message: `"${deadLetter}" is also a topic this handler consumes (${String(loops)}): each dead letter would come back to it. Name another topic`,
    });
    return undefined;
  }
  return {
    name,
    file,
    def,
    topics: def.topics,
    groupId: def.groupId ?? groupIdFor(name, def.topics),
    order,
    format,
    concurrency: def.concurrency ?? DEFAULT_CONCURRENCY,
    kafkaTransactions: def.kafkaTransactions ?? false,
    retry,
    deadLetterTopic: (topic) => (deadLetter === false ? false : (deadLetter ?? `${topic}.dlq`)),
  };
}

/** Cross-handler rules: unique names, never a shared group. */
export function checkHandlerSet(handlers: ResolvedHandler[], problems: Problem[]): void {
  const names = new Map<string, string>();
  const groups = new Map<string, string>();
  for (const h of handlers) {
    const n = names.get(h.name);
    if (n) problems.push({ path: `${h.file}: name`, message: `"${h.name}" is also the name of ${n}; give one a distinct name` });
    names.set(h.name, h.file);
    const g = groups.get(h.groupId);
    if (g) problems.push({ path: `${h.file}: groupId`, message: `"${h.groupId}" is also the group of ${g}; two handlers never share a group` });
    groups.set(h.groupId, h.file);
  }
}
