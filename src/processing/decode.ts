// Payload decoding for a handler: by its format (JSON: strict UTF-8 then JSON; registry formats:
// the Confluent wire format through the schema registry), then the handler's valibot schema.
// Anything that fails is poison: retrying can't fix it. Only a registry that can't be asked is not
// (RegistryUnavailableError): the executor waits for it.
import * as v from "valibot";
import { PoisonError } from "../errors.ts";
import type { KafkaMessage } from "../index.ts";
import { issuePath, type ResolvedHandler } from "../handlers/resolve.ts";
import type { RegistryFormat } from "../registry/registry.ts";

const utf8 = new TextDecoder("utf-8", { fatal: true });

/** Synchronous for "json" and "raw" (the hot path); a promise for the registry formats. */
export function decodePayload(handler: ResolvedHandler, message: KafkaMessage): unknown {
  const format = handler.format;
  if (format === "raw") return message.value;
  if (format !== "json") return decodeRegistered(handler, message, format);
  const schema = handler.def.schema;
  const value = message.value;
  const expects = schema ? "JSON matching its schema" : "JSON";
  if (value === null) throw new PoisonError(`value is null (a tombstone) but the handler expects ${expects}`);
  if (value.length === 0) throw new PoisonError(`value is empty but the handler expects ${expects}`);
  let text: string;
  try {
    text = utf8.decode(value);
  } catch {
    throw new PoisonError(`value is not valid UTF-8 (${value.length} bytes) but the handler expects JSON`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new PoisonError(`value is not JSON: ${(err as Error).message}`);
  }
  return schema ? validate(schema, json) : json;
}

async function decodeRegistered(handler: ResolvedHandler, message: KafkaMessage, format: RegistryFormat): Promise<unknown> {
  // resolve.ts and run.ts guarantee a registry for a registry format.
  const decoded = await handler.registry!.decode(message.value, format);
  return handler.def.schema ? validate(handler.def.schema, decoded) : decoded;
}

function validate(schema: v.GenericSchema, value: unknown): unknown {
  let result: ReturnType<typeof v.safeParse>;
  try {
    result = v.safeParse(schema, value);
  } catch (err) {
    throw new PoisonError(`value could not be validated: ${(err as Error).message}`);
  }
  if (!result.success) {
    const issues = result.issues.map((i) => `${issuePath(i) || "value"}: ${i.message}`).join("; ");
    throw new PoisonError(`value does not match the schema: ${issues}`);
  }
  return result.output;
}

/** Dedup id per SPEC. Never change the default format: journals in the field depend on it. */
export function messageId(message: KafkaMessage, groupId: string, businessKey: string | undefined): string {
  const header = message.headers["kexo-id"];
  if (header !== undefined && header.length > 0) return header.toString();
  if (businessKey !== undefined) return businessKey;
  return defaultMessageId(message.topic, message.partition, groupId, message.offset);
}

export function defaultMessageId(topic: string, partition: number, groupId: string, offset: string): string {
  return `kafka-unique-id-${topic}-${partition}-${groupId}-${offset}`;
}
