// A partition's progress never commits ahead of the completion it covers: a COMMIT that was
// queued behind an open ctx.tx must not carry progress for a completion queued after it.
import { expect, test } from "bun:test";
import Database from "libsql";
import { join } from "node:path";
import { type CommitHook, Journal, type ProgressEntry } from "../../src/journal/journal.ts";
import { tempDir } from "../support/tmp.ts";

const rec = (id: string, offset: number) => ({
  handler: "h", id, status: "completed" as const, topic: "t", partition: 1, offset: String(offset), attempts: 1, result: "null",
});

async function scenario(trigger: "timer" | "size"): Promise<void> {
  const path = join(tempDir(), "j.db");
  const journal = trigger === "timer"
    ? Journal.open({ url: `file:${path}`, commitIntervalMs: 2 })
    : Journal.open({ url: `file:${path}`, commitIntervalMs: 60_000, maxPendingWrites: 1 });
  // The consumer's view: partition t/1 is done below `next` once execute() returned "done".
  let next = -1n;
  let durable = -1n;
  const other = new Database(path);
  const violations: string[] = [];
  const hook: CommitHook = {
    progress: () => (next > durable ? [{ groupId: "g", topic: "t", partition: 1, nextOffset: next }] : []),
    hasProgress: () => next > durable,
    committed: (entries: ProgressEntry[]) => {
      for (const e of entries) {
        durable = e.nextOffset;
        // What a process restarted right now would read: progress past offset 7 needs its record.
        const done = other.prepare("SELECT count(*) AS n FROM kexo_messages WHERE id = 'm7'").get() as { n: number };
        if (e.nextOffset > 7n && done.n === 0) violations.push(`progress ${e.nextOffset} committed without m7's completion`);
      }
    },
  };
  journal.addCommitHook(hook);
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  // Message m1 (another partition) holds the journal in its ctx.tx …
  const tx = journal.runTx("h", "m1", "tx:1", async () => {
    await gate;
    return null;
  });
  if (trigger === "timer") {
    journal.requestCommit();
    await new Promise((r) => setTimeout(r, 30)); // the commit timer fired and queued its COMMIT
  } else {
    journal.setMeta("x", "1"); // queued ahead of m7: running it reaches maxPendingWrites
  }
  // … while m7 finishes: its record waits in the queue, and the consumer moves progress past it.
  journal.finish(rec("m7", 7));
  next = 8n;
  journal.requestCommit();
  release();
  await tx;
  await journal.flush();
  expect(journal.lookup("h", "m7")?.status).toBe("completed");
  expect(durable).toBe(8n);
  other.close();
  await journal.close();
  expect(violations).toEqual([]);
}

test("a COMMIT queued behind a ctx.tx carries no progress for completions queued after it", async () => {
  await scenario("timer");
});

test("a size-triggered COMMIT while queued writes run carries no progress for those still queued", async () => {
  await scenario("size");
});
