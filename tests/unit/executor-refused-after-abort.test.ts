// A ctx.tx or ctx.step called after ctx.signal aborted is refused (an AbortError naming the
// message): the signal aborts when kexo gives the message up (rebalance grace, shutdown timeout),
// and another run handles it, so this one must record nothing more. A handler that catches the
// refusal and returns anyway records no outcome: its completion would say "done" without the
// writes it meant to make. tests/partition-revoke-signal.test.ts runs the same through kexo.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { resolveHandler } from "../../src/handlers/resolve.ts";
import { defineHandler, type HandlerContext } from "../../src/index.ts";
import { Journal } from "../../src/journal/journal.ts";
import { execute } from "../../src/processing/executor.ts";
import { unitDeps, unitMessage } from "../support/executor.ts";
import { tempDir } from "../support/tmp.ts";

async function run(body: (ctx: HandlerContext) => Promise<unknown>) {
  const journal = Journal.open({ url: `file:${join(tempDir(), "j.db")}`, commitIntervalMs: 1 });
  await journal.handlerDb.execute("CREATE TABLE effects (n INTEGER)");
  journal.endSetup();
  const { deps, outcomes } = unitDeps(journal);
  const aborter = new AbortController();
  const h = resolveHandler("h.ts", "h", defineHandler({
    topics: ["t"],
    async handle(_m, ctx) {
      aborter.abort();
      return body(ctx);
    },
  }), [])!;
  const verdict = await execute(h, unitMessage(0), deps, aborter.signal);
  await journal.flush();
  const effects = journal.query<{ n: number }>("SELECT count(*) AS n FROM effects")[0]!.n;
  const recorded = journal.lookup("h", `kafka-unique-id-t-0-${h.groupId}-0`, { topic: "t", partition: 0, offset: "0" }) !== undefined;
  const steps = journal.query<{ n: number }>("SELECT count(*) AS n FROM kexo_steps")[0]!.n;
  await journal.close();
  return { verdict, outcomes, effects, recorded, steps };
}

const insert = (ctx: HandlerContext) => ctx.tx((db) => db.execute({ sql: "INSERT INTO effects (n) VALUES (1)", args: [] }));

test("ctx.tx after the abort is refused with an AbortError naming the message; nothing is recorded", async () => {
  let err: Error | undefined;
  const r = await run(async (ctx) => {
    try {
      await insert(ctx);
    } catch (e) {
      err = e as Error;
      throw e;
    }
  });
  expect(err?.name).toBe("AbortError");
  expect(err?.message).toContain("ctx.tx refused for message kafka-unique-id-t-0-");
  expect(err?.message).toContain("t[0]@0");
  expect(r).toEqual({ verdict: "aborted", outcomes: ["failed"], effects: 0, recorded: false, steps: 0 });
});

test("a handler that catches the refusals and returns records no outcome either", async () => {
  let ran = 0;
  const r = await run(async (ctx) => {
    await insert(ctx).catch(() => {});
    await ctx.step("s", () => ++ran).catch(() => {});
    return "done anyway";
  });
  // The step's function did not run: it would be run again by the message's next run.
  expect(ran).toBe(0);
  expect(r).toEqual({ verdict: "aborted", outcomes: ["failed"], effects: 0, recorded: false, steps: 0 });
});
