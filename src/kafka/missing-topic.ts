// A broker's answer that a topic does not exist and was not created for the request (Kafka with
// auto.create.topics.enable=false), as kafkajs reports it: named in what kexo says, with what to do.
import { errorMessage } from "../errors.ts";

/** UNKNOWN_TOPIC_OR_PARTITION, also wrapped (kafkajs's retries-exceeded error keeps the text). */
export function isMissingTopic(err: unknown): boolean {
  return /does not host this topic-partition|UNKNOWN_TOPIC/i.test(errorMessage(err));
}

export class MissingTopicError extends Error {
  constructor(readonly topic: string, cause: unknown) {
    super(
      `topic ${topic} does not exist and the broker did not create it: create it, or let the broker create topics ` +
        `(auto.create.topics.enable=true); ${errorMessage(cause)}`,
      { cause },
    );
    this.name = "MissingTopicError";
  }
}
