// The executor and the membership fence (ExecutorDeps.fence): while the coordinator says the
// member is out (fence.out: it answered a request with UNKNOWN_MEMBER_ID or ILLEGAL_GENERATION,
// and kafkajs has not rejoined yet), a message does not start, and a ctx.tx or ctx.step of one
// running is refused, with nothing recorded: the partition may be another member's now. The fence
// itself against the development broker: tests/unit/member-fence.test.ts.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { resolveHandler } from "../../src/handlers/resolve.ts";
import { defineHandler, type HandlerContext } from "../../src/index.ts";
import { Journal } from "../../src/journal/journal.ts";
import { execute, type Fence } from "../../src/processing/executor.ts";
import { unitDeps, unitMessage } from "../support/executor.ts";
import { tempDir } from "../support/tmp.ts";

/** A fence whose heartbeats are all accepted (never stale): only `out` speaks. `asked`: confirm() calls. */
function fence(out: boolean): Fence & { out: boolean; asked: number } {
  const f = {
    at: Date.now() + 3_600_000, staleMs: 5000, sessionTimeoutMs: 6000, out, asked: 0,
    confirm: async () => (f.asked++, !f.out),
  };
  return f;
}

async function run(f: Fence, body: (ctx: HandlerContext) => Promise<unknown>) {
  const journal = Journal.open({ url: `file:${join(tempDir(), "j.db")}`, commitIntervalMs: 1 });
  await journal.handlerDb.execute("CREATE TABLE effects (n INTEGER)");
  journal.endSetup();
  const { deps, outcomes } = unitDeps(journal, { fence: f });
  let ran = 0;
  const h = resolveHandler("h.ts", "h", defineHandler({
    topics: ["t"],
    async handle(_m, ctx) {
      ran++;
      return body(ctx);
    },
  }), [])!;
  const verdict = await execute(h, unitMessage(0), deps, new AbortController().signal);
  await journal.flush();
  const effects = journal.query<{ n: number }>("SELECT count(*) AS n FROM effects")[0]!.n;
  const recorded = journal.lookup("h", `kafka-unique-id-t-0-${h.groupId}-0`, { topic: "t", partition: 0, offset: "0" }) !== undefined;
  await journal.close();
  return { verdict, outcomes, ran, effects, recorded };
}

const insert = (ctx: HandlerContext) => ctx.tx((db) => db.execute({ sql: "INSERT INTO effects (n) VALUES (1)", args: [] }));

test("a member the coordinator said is out starts no message", async () => {
  const f = fence(true);
  expect(await run(f, insert)).toEqual({ verdict: "aborted", outcomes: [], ran: 0, effects: 0, recorded: false });
});

test("found out while the handler runs: its ctx.tx is refused, naming the generation, and nothing is recorded", async () => {
  const f = fence(false);
  let err: Error | undefined;
  const r = await run(f, async (ctx) => {
    f.out = true; // a heartbeat of the member answered ILLEGAL_GENERATION meanwhile
    await insert(ctx).catch((e) => {
      err = e as Error;
      throw e;
    });
  });
  expect(err?.name).toBe("AbortError");
  expect(err?.message).toContain("no longer a member of the group's generation");
  expect(r).toEqual({ verdict: "aborted", outcomes: ["failed"], ran: 1, effects: 0, recorded: false });
});

test("a member in its generation runs and records as usual, without asking the coordinator", async () => {
  const f = fence(false);
  expect(await run(f, insert)).toEqual({ verdict: "done", outcomes: ["processed"], ran: 1, effects: 1, recorded: true });
  expect(f.asked).toBe(0);
});
