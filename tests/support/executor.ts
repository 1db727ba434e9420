// What the executor's unit tests give execute(): a message as kafkajs delivers it, and the deps a
// consumer would pass, with the outcomes the run reports collected.
import { EventBus, type Outcome } from "../../src/events.ts";
import type { KafkaMessage } from "../../src/index.ts";
import type { Journal } from "../../src/journal/journal.ts";
import { createLogger } from "../../src/log.ts";
import type { ExecutorDeps } from "../../src/processing/executor.ts";
import { RetryBook } from "../../src/processing/retry-book.ts";

/** A message of partition 0 of topic "t" at `offset`, with no key or headers. */
export const unitMessage = (offset: number | string, value = "x"): KafkaMessage =>
  ({ topic: "t", partition: 0, offset: String(offset), key: null, value: Buffer.from(value), headers: {}, timestamp: "0" }) as KafkaMessage;

/** Deps whose dead-letter publish fails the test (none expected); `outcomes` fills as messages are handled. */
export function unitDeps(journal: Journal, extra: Partial<ExecutorDeps> = {}): { deps: ExecutorDeps; outcomes: Outcome[] } {
  const bus = new EventBus();
  const outcomes: Outcome[] = [];
  bus.on("message.handled", (e) => void outcomes.push(e.outcome));
  const deps: ExecutorDeps = {
    journal, bus, log: createLogger({ level: "silent" }), retries: new RetryBook(), defer: () => {},
    dlq: { publish: async () => { throw new Error("no dead letter expected"); } },
    ...extra,
  };
  return { deps, outcomes };
}
