// The drain (the executor's `drain` signal, aborted when stop() begins) ends the waits of messages
// whose handler has not run: for the schema registry (to decode) and for the crash guard. Such a
// message ends "aborted" at once, with no attempt used up and no outcome recorded. A message whose
// handler ran and that waits to encode its emits is in flight: the drain waits for it (a next
// owner with its own journal would run the handler again); the shutdown timeout ends that wait,
// and the rerun on the same journal reuses what the handler recorded (ctx.step, ctx.tx).
// tests/drain-registry-wait.test.ts and tests/drain-guard-wait.test.ts run the same through kexo.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { resolveHandler } from "../../src/handlers/resolve.ts";
import { defineHandler, type HandlerContext, v } from "../../src/index.ts";
import { Journal } from "../../src/journal/journal.ts";
import { CrashGuard } from "../../src/processing/crash-guard.ts";
import { execute, type ExecutorDeps, type Verdict } from "../../src/processing/executor.ts";
import { RegistryUnavailableError } from "../../src/registry/unavailable.ts";
import { unitDeps, unitMessage } from "../support/executor.ts";
import { tempDir } from "../support/tmp.ts";
import { waitUntil } from "../support/wait.ts";

const never = new AbortController().signal;
const msg = (offset: number, value = '{"id":"a"}') => unitMessage(offset, value);
// A backoff far longer than any test: only the drain can end these waits.
const retry = { attempts: 3, initialDelayMs: 60_000, maxDelayMs: 60_000 };

function deps(journal: Journal, drain: AbortSignal, extra: Partial<ExecutorDeps> = {}) {
  const { deps: d, outcomes } = unitDeps(journal, { drain, ...extra });
  return { d, outcomes };
}

/** The verdict, or "still waiting" when it has not come within `ms`. */
async function settledWithin(p: Promise<Verdict>, ms: number): Promise<Verdict | "still waiting"> {
  return Promise.race([p, Bun.sleep(ms).then(() => "still waiting" as const)]);
}

const failedAttempts = (journal: Journal) => journal.query<{ n: number }>("SELECT count(*) AS n FROM kexo_retries")[0]!.n;

test("a message waiting for the registry to decode ends aborted as soon as the drain begins, no attempt used", async () => {
  const journal = Journal.open({ url: `file:${join(tempDir(), "j.db")}`, commitIntervalMs: 1 });
  let asked = 0;
  let handled = 0;
  const h = resolveHandler("h.ts", "h", defineHandler({
    topics: ["t"], format: "json-schema", retry,
    async handle() {
      handled++;
    },
  }), [])!;
  h.registry = {
    decode: async () => {
      asked++;
      throw new RegistryUnavailableError("registry down");
    },
  } as never;
  try {
    const drain = new AbortController();
    const { d, outcomes } = deps(journal, drain.signal);
    const run = execute(h, msg(0), d, never);
    await waitUntil("the registry asked", () => asked >= 1 || undefined, { timeoutMs: 2000 });
    expect(await settledWithin(run, 200)).toBe("still waiting");
    drain.abort();
    expect(await settledWithin(run, 200)).toBe("aborted");
    expect({ asked, handled, outcomes }).toEqual({ asked: 1, handled: 0, outcomes: ["retried"] });
    await journal.flush();
    expect(failedAttempts(journal)).toBe(0);
  } finally {
    await journal.close();
  }
});

test("a message waiting for the registry to encode its emits is in flight: the drain waits for it, and it finishes once the registry answers", async () => {
  const journal = Journal.open({ url: `file:${join(tempDir(), "j.db")}`, commitIntervalMs: 1 });
  let down = true;
  let asked = 0;
  let handled = 0;
  const h = resolveHandler("h.ts", "h", defineHandler({
    topics: ["t"], schema: v.object({ id: v.string() }), retry: { attempts: 3, initialDelayMs: 100, maxDelayMs: 100 },
    async handle(p: { id: string }, ctx: HandlerContext) {
      handled++;
      ctx.emit("out", { key: p.id, value: { id: p.id }, schema: { subject: "out-value" } });
    },
  }), [])!;
  h.registry = {
    encode: async () => {
      asked++;
      if (down) throw new RegistryUnavailableError("registry down");
      return Buffer.from("encoded");
    },
  } as never;
  try {
    const drain = new AbortController();
    const { d, outcomes } = deps(journal, drain.signal);
    const run = execute(h, msg(0), d, never);
    await waitUntil("the registry asked to encode", () => asked >= 1 || undefined, { timeoutMs: 2000 });
    drain.abort();
    // Well past a few of its 50–100 ms waits: the drain did not end it.
    expect(await settledWithin(run, 500)).toBe("still waiting");
    down = false;
    expect(await run).toBe("done");
    expect({ handled, outcomes }).toEqual({ handled: 1, outcomes: ["processed"] });
    await journal.flush();
    const outbox = journal.query<{ value: Uint8Array }>("SELECT value FROM kexo_outbox WHERE topic = 'out'");
    expect(outbox.map((r) => Buffer.from(r.value).toString())).toEqual(["encoded"]);
  } finally {
    await journal.close();
  }
});

test("a message waiting for the registry to encode its emits ends aborted at the shutdown timeout; the rerun reuses its step and tx", async () => {
  const url = `file:${join(tempDir(), "j.db")}`;
  let down = true;
  let asked = 0;
  const runs = { handle: 0, step: 0, tx: 0 };
  const h = resolveHandler("h.ts", "h", defineHandler({
    topics: ["t"], schema: v.object({ id: v.string() }), retry,
    async handle(p: { id: string }, ctx: HandlerContext) {
      runs.handle++;
      const charged = await ctx.step("charge", () => ++runs.step);
      await ctx.tx(async () => ++runs.tx);
      ctx.emit("out", { key: p.id, value: { id: p.id, charged }, schema: { subject: "out-value" } });
    },
  }), [])!;
  h.registry = {
    encode: async () => {
      asked++;
      if (down) throw new RegistryUnavailableError("registry down");
      return Buffer.from("encoded");
    },
  } as never;

  // Run 1: the handler ran, its emit waits for the registry; the drain begins, then the shutdown
  // timeout aborts ctx.signal.
  let journal = Journal.open({ url, commitIntervalMs: 1 });
  const drain = new AbortController();
  const timeout = new AbortController();
  const first = deps(journal, drain.signal);
  const run = execute(h, msg(0), first.d, timeout.signal);
  await waitUntil("the registry asked to encode", () => asked >= 1 || undefined, { timeoutMs: 2000 });
  drain.abort();
  expect(await settledWithin(run, 200)).toBe("still waiting");
  timeout.abort();
  expect(await settledWithin(run, 200)).toBe("aborted");
  expect(first.outcomes).toEqual(["failed"]);
  await journal.close();

  // Run 2 (the restart, registry back): the same offset runs again, to its end.
  down = false;
  journal = Journal.open({ url, commitIntervalMs: 1 });
  try {
    const second = deps(journal, new AbortController().signal);
    expect(await execute(h, msg(0), second.d, never)).toBe("done");
    expect(second.outcomes).toEqual(["processed"]);
    await journal.flush();
    // handle() twice, but its step and its tx once: the rerun found them recorded.
    expect(runs).toEqual({ handle: 2, step: 1, tx: 1 });
    const outbox = journal.query<{ value: Uint8Array }>("SELECT value FROM kexo_outbox WHERE topic = 'out'");
    expect(outbox.map((r) => Buffer.from(r.value).toString())).toEqual(["encoded"]);
    expect(failedAttempts(journal)).toBe(0);
  } finally {
    await journal.close();
  }
});

test("messages waiting for the crash guard end aborted at the drain, also one let in during the turn the drain began", async () => {
  const journal = Journal.open({ url: `file:${join(tempDir(), "j.db")}`, commitIntervalMs: 1 });
  const handled: string[] = [];
  const h = resolveHandler("h.ts", "h", defineHandler({
    topics: ["t"], schema: v.object({ id: v.string() }), retry,
    async handle(p: { id: string }) {
      handled.push(p.id);
    },
  }), [])!;
  try {
    const guard = new CrashGuard();

    // A message running alone (held here): the next one waits its turn until the drain begins.
    const alone = (await guard.enter(true, never))!;
    const drain = new AbortController();
    const waiting = execute(h, msg(0, '{"id":"w"}'), deps(journal, drain.signal, { guard }).d, never);
    expect(await settledWithin(waiting, 100)).toBe("still waiting");
    drain.abort();
    expect(await settledWithin(waiting, 200)).toBe("aborted");
    alone();

    // Two handlers' consumers stop in one turn (worker.stop() calls each stop() in turn): the
    // first one's drain ends an alone waiter's wait, which lets the shared waiter of the second in
    // before that one's drain begins. It has not started, so it ends unfinished too.
    const shared = guard.enter(false, never) as () => void;
    const drainA = new AbortController();
    const drainB = new AbortController();
    const aloneWaiter = guard.enter(true, drainA.signal);
    const letIn = execute(h, msg(1, '{"id":"let-in"}'), deps(journal, drainB.signal, { guard }).d, never);
    expect(await settledWithin(letIn, 100)).toBe("still waiting");
    drainA.abort();
    drainB.abort();
    expect(await aloneWaiter).toBeUndefined();
    expect(await settledWithin(letIn, 200)).toBe("aborted");
    shared();

    expect(handled).toEqual([]);
    // Nobody holds the lock any more: an alone holder gets it at once.
    const again = guard.enter(true, never);
    expect(again instanceof Promise ? await settledWithin(again.then(() => "done" as const), 100) : "done").toBe("done");
    await journal.flush();
    expect(failedAttempts(journal)).toBe(0);
  } finally {
    await journal.close();
  }
});
