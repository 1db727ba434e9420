// Payload decoding for a handler: strict UTF-8, then JSON, then the handler's valibot schema.
// Anything that fails is poison: retrying can't fix it.
import * as v from "valibot";
import { PoisonError } from "../errors.ts";
import type { KafkaMessage } from "../index.ts";
import { issuePath, type ResolvedHandler } from "../handlers/resolve.ts";

const utf8 = new TextDecoder("utf-8", { fatal: true });

export function decodePayload(handler: ResolvedHandler, message: KafkaMessage): unknown {
  const schema = handler.def.schema;
  if (!schema) return message.value;
  const value = message.value;
  if (value === null) throw new PoisonError("value is null (a tombstone) but the handler expects JSON matching its schema");
  if (value.length === 0) throw new PoisonError("value is empty but the handler expects JSON matching its schema");
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
  let result: ReturnType<typeof v.safeParse>;
  try {
    result = v.safeParse(schema, json);
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
  return `kafka-unique-id-${message.topic}-${message.partition}-${groupId}-${message.offset}`;
}
