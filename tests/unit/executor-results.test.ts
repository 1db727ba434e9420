// What ctx.step and ctx.tx give back is the same on the first run as on a replay from the journal
// (what JSON kept), and ctx.emit refuses a partition the broker would drop without a word.
import type { WireHeaders } from "../../src/kafka/headers.ts";
import { expect, test } from "bun:test";
import { join } from "node:path";
import { EventBus } from "../../src/events.ts";
import { resolveHandler } from "../../src/handlers/resolve.ts";
import { defineHandler, type HandlerContext } from "../../src/index.ts";
import { decodeHeaders, Journal } from "../../src/journal/journal.ts";
import { createLogger } from "../../src/log.ts";
import { execute } from "../../src/processing/executor.ts";
import { RetryBook } from "../../src/processing/retry-book.ts";
import { unitMessage } from "../support/executor.ts";
import { tempDir } from "../support/tmp.ts";

function setup() {
  const journal = Journal.open({ url: `file:${join(tempDir(), "j.db")}`, commitIntervalMs: 1 });
  const dlq: WireHeaders[] = [];
  const deps = {
    journal, bus: new EventBus(), log: createLogger({ level: "silent" }), retries: new RetryBook(), defer: () => {},
    dlq: { publish: async (_t: string, r: { headers: WireHeaders }) => void dlq.push(r.headers) },
  };
  return { journal, dlq, deps };
}
const msg = (offset: number) => unitMessage(offset);
const signal = new AbortController().signal;

test("step and tx results are what JSON kept, on the first run as on the replay", async () => {
  const { journal, deps } = setup();
  const seen: unknown[][] = [];
  const at = new Date(1_700_000_000_000);
  const h = resolveHandler("h.ts", "h", defineHandler({
    topics: ["t"], retry: { attempts: 3, initialDelayMs: 1, maxDelayMs: 1 },
    async handle(_v, ctx: HandlerContext) {
      const s = await ctx.step("s", () => ({ at, map: new Map([["a", 1]]), big: 7n, missing: undefined }));
      const u = await ctx.step("u", () => undefined);
      const t = await ctx.tx(async () => 7n);
      seen.push([s, u, t]);
      // The first attempt fails after its steps and tx: the second one replays them.
      if (ctx.attempt === 1) throw new Error("once");
    },
  }), [])!;
  try {
    for (let i = 0; i < 5 && (await execute(h, msg(0), deps, signal)) !== "done"; i++) await Bun.sleep(5);
    expect(seen.length).toBe(2);
    expect(seen[0]).toEqual([{ at: at.toISOString(), map: {}, big: 7 }, null, 7]);
    expect(seen[1]).toEqual(seen[0]!);
  } finally {
    await journal.close();
  }
});

test("ctx.emit refuses a partition that is not a whole number from 0: a dead letter that says so", async () => {
  const { journal, dlq, deps } = setup();
  const partitions = [-1, 0.5, Number.NaN];
  const h = resolveHandler("h.ts", "h", defineHandler({
    topics: ["t"],
    async handle(_v, ctx) {
      ctx.emit("out", { value: "v", partition: partitions[Number(ctx.message.offset)] });
    },
  }), [])!;
  try {
    for (let i = 0; i < partitions.length; i++) expect(await execute(h, msg(i), deps, signal)).toBe("done");
    expect(dlq.map((d) => d["kexo-dlq-reason"]!.toString())).toEqual(["permanent", "permanent", "permanent"]);
    expect(dlq[0]!["kexo-dlq-error"]!.toString()).toBe("ctx.emit to out: partition must be a whole number from 0 (got -1); leave it out to let the key choose");
  } finally {
    await journal.close();
  }
});

test("ctx calls after handle() returned are refused, not recorded outside the message's record", async () => {
  const { journal, deps } = setup();
  let kept: HandlerContext | undefined;
  const h = resolveHandler("h.ts", "h", defineHandler({
    topics: ["t"],
    async handle(_v, ctx) {
      kept = ctx;
    },
  }), [])!;
  try {
    expect(await execute(h, msg(0), deps, signal)).toBe("done");
    expect(() => kept!.emit("out", { value: "late" })).toThrow("ctx.emit to out after handle() returned (message kafka-unique-id-t-0-");
    await expect(kept!.tx(async () => 1)).rejects.toThrow("ctx.tx after handle() returned");
    await expect(kept!.step("s", () => 1)).rejects.toThrow('ctx.step("s") after handle() returned');
  } finally {
    await journal.close();
  }
});

test("an emitted header named __proto__ is kept as a header in the outbox row, not taken as a prototype", async () => {
  const { journal, deps } = setup();
  const h = resolveHandler("h.ts", "h", defineHandler({
    topics: ["t"],
    async handle(_v, ctx: HandlerContext) {
      ctx.emit("out", { value: "v", headers: JSON.parse('{"__proto__":"p","x":"y"}') as Record<string, string> });
    },
  }), [])!;
  try {
    expect(await execute(h, msg(0), deps, signal)).toBe("done");
    await journal.flush();
    const [row] = journal.query<{ headers: string }>("SELECT headers FROM kexo_outbox");
    const headers = decodeHeaders(row!.headers);
    expect(Object.keys(headers).sort()).toEqual(["__proto__", "kexo-id", "x"]);
    expect(Object.getOwnPropertyDescriptor(headers, "__proto__")?.value.toString()).toBe("p");
  } finally {
    await journal.close();
  }
});
