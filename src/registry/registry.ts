// The schema registry as kexo uses it: decode a Confluent wire-format value (Avro, Protobuf, JSON
// Schema) and encode an emitted value with a registered schema. @kafkajs/confluent-schema-registry
// fetches, parses and caches the schemas (by id, for the process's life: ids are immutable); the
// framing is ours because the library writes no protobuf message indexes.
//
// Failure classes, which the executor treats differently:
// - PoisonError: this value can never decode (not wire format, unknown schema id, bad body).
// - RegistryUnavailableError: the registry did not answer usefully (down, 5xx, 401/403); waiting helps.
// - PermanentError (encode only): the emitted value or schema reference is wrong; retrying can't help.
import { SchemaRegistry } from "@kafkajs/confluent-schema-registry";
import { errorMessage, PermanentError, PoisonError } from "../errors.ts";
import { RegistryUnavailableError } from "./unavailable.ts";
import { readFrame, readIndexes, writeFrame } from "./wire.ts";

export type RegistryFormat = "avro" | "protobuf" | "json-schema";

/** Which registered schema `ctx.emit` encodes with. */
export type SchemaRef = { id: number } | { subject: string; version?: number | "latest" };

export interface RegistrySettings {
  url: string;
  username?: string;
  password?: string;
}

const FORMAT_OF_TYPE: Record<string, RegistryFormat> = { AVRO: "avro", PROTOBUF: "protobuf", JSON: "json-schema" };
/** How long `{ subject }` (latest version) stays resolved to one id before it is asked again. */
const LATEST_TTL_MS = 60_000;

/** The parts of a protobufjs Type used here (the library keeps it in a private field). */
interface ProtoType {
  fullName: string;
  parent: ProtoType | null;
  nestedArray?: unknown[];
  fields?: object;
  decode(body: Uint8Array): unknown;
  toObject(message: unknown, opts: object): Record<string, unknown>;
  verify(value: unknown): string | null;
  fromObject(value: unknown): unknown;
  encode(message: unknown): { finish(): Uint8Array };
}
const messagesOf = (scope: ProtoType | null): ProtoType[] =>
  (scope?.nestedArray ?? []).filter((n): n is ProtoType => typeof n === "object" && n !== null && "fields" in n);

// Protobuf to a plain JSON-friendly object: int64 as decimal strings, enums by name, every field
// present (proto3 omits defaults on the wire, but a valibot schema expects them).
const PROTO_OBJECT = { longs: String, enums: String, defaults: true };

export class PayloadRegistry {
  readonly url: string;
  #client: SchemaRegistry;
  #ids = new Map<string, { id: number; until: number }>();

  constructor(settings: RegistrySettings) {
    this.url = settings.url.replace(/\/+$/, "");
    const auth = settings.username !== undefined ? { username: settings.username, password: settings.password ?? "" } : undefined;
    // A short client-side retry rides out a blip; longer outages are the executor's backoff.
    this.#client = new SchemaRegistry({ host: this.url, auth, clientId: "kexo", retry: { retries: 2, initialRetryTimeInSecs: 0.1, maxRetryTimeInSecs: 1 } });
  }

  async decode(value: Buffer | null, expected: RegistryFormat): Promise<unknown> {
    if (value === null || value.length === 0) {
      throw new PoisonError(`value is ${value === null ? "null (a tombstone)" : "empty"} but the handler expects ${expected} in the Confluent wire format`);
    }
    const { schemaId, body } = readFrame(value);
    const { format, schema } = await this.#schema(schemaId, (status) =>
      status === 404 ? new PoisonError(`schema id ${schemaId} is unknown to the schema registry ${this.url}; was the value produced against another registry?`) : undefined);
    if (format !== expected) throw new PoisonError(`schema id ${schemaId} is a ${format} schema but the handler expects ${expected}`);
    try {
      if (format !== "protobuf") return (schema as { fromBuffer(b: Buffer): unknown }).fromBuffer(body);
      const { indexes, rest } = readIndexes(body);
      const type = protoTypeAt(schema, indexes);
      if (!type) throw new PoisonError(`protobuf message indexes [${indexes}] name no message in schema id ${schemaId}`);
      return type.toObject(type.decode(rest), PROTO_OBJECT);
    } catch (err) {
      if (err instanceof PoisonError) throw err;
      throw new PoisonError(`value does not decode with ${format} schema id ${schemaId}: ${detail(err)}`, { cause: err });
    }
  }

  async encode(ref: SchemaRef, value: unknown): Promise<Buffer> {
    const id = await this.#resolve(ref);
    const { format, schema } = await this.#schema(id, (status) =>
      status === 404 ? new PermanentError(`ctx.emit: schema id ${id} is unknown to the schema registry ${this.url}`) : undefined);
    try {
      if (format !== "protobuf") return writeFrame(id, (schema as { toBuffer(v: unknown): Buffer }).toBuffer(value));
      const type = protoTypeAt(schema, [0])!;
      const invalid = type.verify(value);
      if (invalid) throw new Error(invalid);
      return writeFrame(id, type.encode(type.fromObject(value)).finish(), [0]);
    } catch (err) {
      throw new PermanentError(`ctx.emit: value does not match ${format} schema id ${id}: ${detail(err)}`, { cause: err });
    }
  }

  async #resolve(ref: SchemaRef): Promise<number> {
    if ("id" in ref) return ref.id;
    const version = ref.version ?? "latest";
    const key = `${ref.subject}@${version}`;
    const hit = this.#ids.get(key);
    if (hit && hit.until > Date.now()) return hit.id;
    const id = await this.#ask(`look up subject "${ref.subject}" version ${version}`, () => this.#client.getRegistryId(ref.subject, version), (status) =>
      status === 404 ? new PermanentError(`ctx.emit: subject "${ref.subject}" version ${version} is not in the schema registry ${this.url}; register it first`) : undefined);
    // A numbered version never changes; "latest" is asked again after a while to follow evolution.
    this.#ids.set(key, { id, until: version === "latest" ? Date.now() + LATEST_TTL_MS : Infinity });
    return id;
  }

  async #schema(id: number, onStatus: (status: number) => Error | undefined): Promise<{ format: RegistryFormat; schema: unknown }> {
    const schema = await this.#ask(`fetch schema id ${id}`, () => this.#client.getSchema(id), onStatus, id);
    const type = this.#client.cache.getSchema(id)?.type ?? "UNKNOWN";
    const format = FORMAT_OF_TYPE[type];
    if (!format) throw new PoisonError(`schema id ${id} has type ${type}, which kexo can not decode`);
    return { format, schema };
  }

  async #ask<T>(what: string, call: () => Promise<T>, onStatus: (status: number) => Error | undefined, id?: number): Promise<T> {
    try {
      return await call();
    } catch (err) {
      const status = (err as { status?: unknown }).status;
      if (typeof status !== "number") {
        // Not an HTTP answer: the registry's schema text did not parse.
        throw new PoisonError(`schema${id === undefined ? "" : ` id ${id}`} from ${this.url} can not be used: ${errorMessage(err)}`, { cause: err });
      }
      const mapped = onStatus(status);
      if (mapped) throw mapped;
      const hint = status === 401 || status === 403
        ? "check KEXO_SCHEMA_REGISTRY_USERNAME / KEXO_SCHEMA_REGISTRY_PASSWORD"
        : "is the registry up? kexo retries";
      // mappersmith reports a connection failure as a status-400 answer carrying the socket error.
      const cause = errorMessage(err).replace(/^kexo - Error, status 400: /, "");
      throw new RegistryUnavailableError(`schema registry ${this.url}: cannot ${what}: ${cause}; ${hint}`, { cause: err });
    }
  }
}

/** The error's message, with the failing paths the library's validation errors carry. */
function detail(err: unknown): string {
  const paths = (err as { paths?: unknown[] }).paths?.map((p) => (Array.isArray(p) ? p.join(".") : JSON.stringify(p))).filter(Boolean);
  return `${errorMessage(err)}${paths?.length ? ` (at ${paths.join(", ")})` : ""}`;
}

/** The protobuf message that message indexes name: a path through the file's (nested) messages. */
function protoTypeAt(schema: unknown, indexes: number[]): ProtoType | undefined {
  // The library picks the file's first message; its parent is the file's package scope.
  const first = (schema as { message: ProtoType }).message;
  let candidates = messagesOf(first.parent);
  let type: ProtoType | undefined;
  for (const i of indexes) {
    type = candidates[i];
    if (!type) return undefined;
    candidates = messagesOf(type);
  }
  return type;
}
