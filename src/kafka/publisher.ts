// The producer kexo writes dead letters with: acks from all in-sync replicas, so a resolved
// publish() means the record is safe in Kafka. A topic found missing is asked for (topics.ts) and
// the write tried once more.
import type { Kafka, Producer } from "kafkajs";
import type { DeadLetterPublisher, ProducedRecord } from "../processing/executor.ts";
import { MissingTopicError, sendCreatingTopics } from "./produce-errors.ts";
import { createPartitioner } from "./partitioner.ts";
import type { EnsureTopics } from "./topics.ts";

export class Publisher implements DeadLetterPublisher {
  #producer: Producer;
  #connected: Promise<void> | undefined;
  #ensureTopics: EnsureTopics | undefined;

  constructor(kafka: Kafka, ensureTopics?: EnsureTopics) {
    this.#ensureTopics = ensureTopics;
    this.#producer = kafka.producer({
      allowAutoTopicCreation: true,
      createPartitioner,
      retry: { retries: 3, initialRetryTime: 200, maxRetryTime: 2000 },
    });
  }

  async publish(topic: string, record: ProducedRecord, partition?: number): Promise<void> {
    await this.#connect();
    const send = () =>
      this.#producer.send({
        topic,
        acks: -1,
        timeout: 10_000,
        messages: [{ key: record.key, value: record.value, headers: record.headers, partition }],
      });
    // Deleted since the start (an operator purging it), or not yet asked for (a RegExp
    // subscription's dead-letter topic): asked for, then tried once more.
    await sendCreatingTopics(send, [topic], this.#ensureTopics, (cause, uncreated) => new MissingTopicError(topic, cause, uncreated?.get(topic)));
  }

  #connect(): Promise<void> {
    this.#connected ??= this.#producer.connect().catch((err: unknown) => {
      this.#connected = undefined;
      throw err;
    });
    return this.#connected;
  }

  async close(): Promise<void> {
    if (this.#connected) await this.#producer.disconnect().catch(() => {});
  }
}
