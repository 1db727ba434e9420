// What a broker's refusal of a produce request means, as kafkajs reports it, for kexo's producers
// (dead letters, outbox): a topic that does not exist and was not created for the request (Kafka
// with auto.create.topics.enable=false), named with what to do; a request too large for it.
import { errorMessage } from "../errors.ts";
import type { EnsureTopics } from "./topics.ts";

/** UNKNOWN_TOPIC_OR_PARTITION, also wrapped (kafkajs's retries-exceeded error keeps the text). */
export function isMissingTopic(err: unknown): boolean {
  return /does not host this topic-partition|UNKNOWN_TOPIC/i.test(errorMessage(err));
}

/** What to do about a topic kexo writes to that is missing: the same words for dead letters and the outbox. */
export const CREATE_TOPIC_HINT = "create it, or let kexo create topics (CreateTopics for its principal) or the broker (auto.create.topics.enable=true)";

/**
 * `send`, and when it finds a topic of `topics` missing: asks `ensureTopics` for them (rechecked,
 * see EnsureTopics) and sends once more. `missing` makes the error for a topic still missing:
 * `uncreated` says why kexo could not create them, when it asked and failed.
 */
export async function sendCreatingTopics<T>(
  send: () => Promise<T>,
  topics: string[],
  ensureTopics: EnsureTopics | undefined,
  missing: (cause: unknown, uncreated: Map<string, string> | undefined) => Error,
): Promise<T> {
  try {
    return await send();
  } catch (err) {
    if (!isMissingTopic(err)) throw err;
    const uncreated = ensureTopics ? await ensureTopics(topics, true) : undefined;
    if (!uncreated || uncreated.size > 0) throw missing(err, uncreated);
    try {
      return await send();
    } catch (again) {
      throw isMissingTopic(again) ? missing(again, undefined) : again;
    }
  }
}

export class MissingTopicError extends Error {
  /** `uncreated`: why kexo's own CreateTopics for it failed (kafka/topics.ts), when it asked. */
  constructor(readonly topic: string, cause: unknown, uncreated?: string) {
    super(
      `topic ${topic} does not exist and the broker did not create it${uncreated ? `, nor could kexo (${uncreated})` : ""}: ` +
        `${CREATE_TOPIC_HINT}; ${errorMessage(cause)}`,
      { cause },
    );
    this.name = "MissingTopicError";
  }
}

/** Kafka refused a produce request for its size (max.message.bytes), through kafkajs's error causes. */
export function refusedAsTooLarge(err: unknown, depth = 0): boolean {
  if (depth > 4 || typeof err !== "object" || err === null) return false;
  const { type, cause } = err as { type?: unknown; cause?: unknown };
  return type === "MESSAGE_TOO_LARGE" || type === "RECORD_LIST_TOO_LARGE" || refusedAsTooLarge(cause, depth + 1);
}
