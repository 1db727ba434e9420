// A message dead-lettered at one offset and delivered again at that same offset (order "key"
// finishes messages above the committed offset, so Kafka redelivers them after a crash) is done:
// the handler does not run again and no second dead letter is written. A replayed dead letter
// (same id, another offset) runs again.
import { expect, test } from "bun:test";
import { join } from "node:path";
import type { Problem } from "../../src/errors.ts";
import { EventBus } from "../../src/events.ts";
import { resolveHandler } from "../../src/handlers/resolve.ts";
import { defineHandler, type KafkaMessage, PermanentError } from "../../src/index.ts";
import { Journal } from "../../src/journal/journal.ts";
import { createLogger } from "../../src/log.ts";
import { execute } from "../../src/processing/executor.ts";
import { tempDir } from "../support/tmp.ts";

test("a dead letter redelivered at its offset is done; a replay at another offset runs", async () => {
  let runs = 0;
  const problems: Problem[] = [];
  const handler = resolveHandler("h.ts", "h", defineHandler({
    topics: ["t"],
    key: () => "order-1",
    async handle() {
      runs++;
      throw new PermanentError("refused");
    },
  }), problems)!;
  expect(problems).toEqual([]);
  const journal = Journal.open({ url: `file:${join(tempDir(), "j.db")}`, commitIntervalMs: 1 });
  const written: string[] = [];
  const deps = {
    journal,
    bus: new EventBus(),
    log: createLogger({ level: "error", write: () => {} }),
    dlq: { publish: async (topic: string) => void written.push(topic) },
  };
  const message = (offset: string): KafkaMessage => ({
    topic: "t", partition: 2, offset, key: null, value: Buffer.from("x"), headers: {}, timestamp: "0",
  });
  const signal = new AbortController().signal;

  expect(await execute(handler, message("7"), deps, signal)).toBe("done");
  await journal.durable();
  expect([runs, written.length]).toEqual([1, 1]);

  expect(await execute(handler, message("7"), deps, signal)).toBe("done");
  expect([runs, written.length]).toEqual([1, 1]);

  expect(await execute(handler, message("12"), deps, signal)).toBe("done");
  expect([runs, written.length]).toEqual([2, 2]);
  await journal.close();
});
