// The producer kexo writes dead letters (and later outbox records) with: acks from all in-sync
// replicas, so a resolved publish() means the record is safe in Kafka.
import type { Kafka, Producer } from "kafkajs";
import type { DeadLetterPublisher, ProducedRecord } from "../processing/executor.ts";
import { isMissingTopic, MissingTopicError } from "./produce-errors.ts";
import { createPartitioner } from "./partitioner.ts";

export class Publisher implements DeadLetterPublisher {
  #producer: Producer;
  #connected: Promise<void> | undefined;

  constructor(kafka: Kafka) {
    this.#producer = kafka.producer({
      allowAutoTopicCreation: true,
      createPartitioner,
      retry: { retries: 3, initialRetryTime: 200, maxRetryTime: 2000 },
    });
  }

  async publish(topic: string, record: ProducedRecord, partition?: number): Promise<void> {
    await this.#connect();
    try {
      await this.#producer.send({
        topic,
        acks: -1,
        timeout: 10_000,
        messages: [{ key: record.key, value: record.value, headers: record.headers, partition }],
      });
    } catch (err) {
      throw isMissingTopic(err) ? new MissingTopicError(topic, err) : err;
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
