// Guarantee 4 on the journal side: nothing learns of a COMMIT (Kafka offsets through the commit
// hook, durable() waiters, the outbox relay through journal.committed) before the fsync that
// makes it survive a power loss has ended. node:fs's fsync is wrapped here, until this file's tests end, to
// take 40 ms longer and count the ones that ended: the real fsync still runs. An acknowledgement
// that merely came later (a microtask, a timer) than the COMMIT, but not after its fsync, fails.
import { afterAll, expect, mock, test } from "bun:test";
import * as realFs from "node:fs";
import { join } from "node:path";
import { tempDir } from "../support/tmp.ts";

const real = { ...realFs };
let fsyncsEnded = 0;
mock.module("node:fs", () => ({
  ...real,
  default: real,
  fsync: (fd: number, cb: (err: NodeJS.ErrnoException | null) => void) =>
    setTimeout(() => real.fsync(fd, (err) => {
      fsyncsEnded++;
      cb(err);
    }), 40),
}));
// Module mocks outlive the file in bun test's one process: the real fsync comes back after it.
afterAll(() => void mock.module("node:fs", () => ({ ...real, default: real })));
const { EventBus } = await import("../../src/events.ts");
const { Journal } = await import("../../src/journal/journal.ts");

test("hooks, durable() and journal.committed hear of a COMMIT only after its fsync ended", async () => {
  const bus = new EventBus();
  const journal = Journal.open({ url: `file:${join(tempDir(), "j.db")}`, bus, commitIntervalMs: 60_000 });
  const seen: string[] = [];
  let next = 0n;
  let taken = 0n;
  journal.addCommitHook({
    progress: () => {
      if (next <= taken) return [];
      taken = next;
      return [{ groupId: "g", topic: "t", partition: 0, nextOffset: next }];
    },
    hasProgress: () => next > taken,
    committed: () => void seen.push(`hook after ${fsyncsEnded} fsync(s)`),
  });
  bus.on("journal.committed", (e) => void seen.push(`event (outbox ${e.outboxSeq}) after ${fsyncsEnded} fsync(s)`));
  const before = fsyncsEnded;
  journal.finish(
    { handler: "h", id: "m0", status: "completed", topic: "t", partition: 0, offset: "0", attempts: 1, result: "null" },
    [{ handler: "h", messageId: "m0", topic: "out", key: null, value: Buffer.from("x"), headers: {} }],
  );
  next = 1n;
  await journal.flush().then(() => void seen.push(`flush after ${fsyncsEnded} fsync(s)`));
  expect(seen).toEqual([
    `event (outbox 1) after ${before + 1} fsync(s)`,
    `hook after ${before + 1} fsync(s)`,
    `flush after ${before + 1} fsync(s)`,
  ]);
  // durable() with only that COMMIT's successor fsync outstanding waits for it too.
  journal.setMeta("k", "v");
  await journal.commit();
  const ended = fsyncsEnded;
  await journal.durable();
  expect(fsyncsEnded).toBeGreaterThanOrEqual(ended + 1);
  await journal.close();
});
