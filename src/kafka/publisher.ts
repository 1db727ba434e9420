// The producer kexo writes dead letters with: acks from all in-sync replicas, so a resolved
// publish() means the record is safe in Kafka. A topic found missing is asked for (topics.ts) and
// the write tried once more.
import type { Kafka, Producer } from "kafkajs";
import type { DeadLetterPublisher, ProducedRecord } from "../processing/executor.ts";
import { isMissingTopic, MissingTopicError } from "./produce-errors.ts";
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
    try {
      await send();
    } catch (err) {
      if (!isMissingTopic(err)) throw err;
      // Made since the start (an operator, another instance), or not yet asked for (a RegExp
      // subscription's dead-letter topic): ask, then try once more.
      const why = this.#ensureTopics ? (await this.#ensureTopics([topic], true)).get(topic) : undefined;
      if (!this.#ensureTopics || why !== undefined) throw new MissingTopicError(topic, err, why);
      try {
        await send();
      } catch (again) {
        throw isMissingTopic(again) ? new MissingTopicError(topic, again) : again;
      }
    }
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
