// Whatever a handler throws or logs, the worker describes it and carries on: the message is
// dead-lettered with a readable error, never a failure of the worker (which exited 75 and met the
// same message again on every start). Found by a probe of the handler API.
import type { WireHeaders } from "../../src/kafka/headers.ts";
import { expect, test } from "bun:test";
import { join } from "node:path";
import { EventBus } from "../../src/events.ts";
import { resolveHandler } from "../../src/handlers/resolve.ts";
import { defineHandler } from "../../src/index.ts";
import { Journal } from "../../src/journal/journal.ts";
import { createLogger, redact } from "../../src/log.ts";
import { execute } from "../../src/processing/executor.ts";
import { RetryBook } from "../../src/processing/retry-book.ts";
import { unitMessage } from "../support/executor.ts";
import { tempDir } from "../support/tmp.ts";

class Weird extends Error {
  override get message(): string {
    throw new Error("no message for you");
  }
}

const circular = () => {
  const o: Record<string, unknown> = { a: 1 };
  o.self = o;
  return o;
};

const THROWN: Record<string, () => unknown> = {
  "a null-prototype object": () => Object.create(null),
  "a circular object": circular,
  "an Error caused by a response that points back at itself": () => {
    const res: Record<string, unknown> = { status: 500 };
    res.req = { res };
    return new Error("upstream failed", { cause: res });
  },
  "an Error named by a Symbol": () => Object.assign(new Error("symbolic"), { name: Symbol("n") }),
  "an Error whose message is an object and stack a number": () => Object.defineProperties(new Error(), { message: { value: { x: 1 } }, stack: { value: 42 } }),
  "an Error whose message getter throws": () => new Weird(),
};

test("odd things thrown are dead-lettered with a readable error; odd things logged are written", async () => {
  const lines: string[] = [];
  const log = createLogger({ level: "info", write: (l) => lines.push(l) });
  const journal = Journal.open({ url: `file:${join(tempDir(), "j.db")}`, commitIntervalMs: 1 });
  const dlq: WireHeaders[] = [];
  const deps = {
    journal, bus: new EventBus(), log, retries: new RetryBook(), defer: () => {},
    dlq: { publish: async (_t: string, r: { headers: WireHeaders }) => void dlq.push(r.headers) },
  };
  const signal = new AbortController().signal;
  try {
    const cases = Object.entries(THROWN);
    for (let i = 0; i < cases.length; i++) {
      const [what, make] = cases[i]!;
      const h = resolveHandler("h.ts", `h${i}`, defineHandler({
        topics: ["t"], retry: { attempts: 1, initialDelayMs: 1, maxDelayMs: 1 },
        async handle(_v, ctx) {
          // Logging must not fail the message either.
          ctx.log.info("about to fail", { body: circular(), big: 10n, deep: { a: { b: { c: { d: { e: { f: { g: { h: { i: { password: "hunter2" } } } } } } } } } } });
          throw make();
        },
      }), [])!;
      const m = unitMessage(i);
      expect({ what, verdict: await execute(h, m, deps, signal) }).toEqual({ what, verdict: "done" });
    }
    expect(dlq.length).toBe(cases.length);
    for (const headers of dlq) {
      expect(headers["kexo-dlq-reason"]!.toString()).toBe("exhausted");
      expect(typeof headers["kexo-dlq-error"]!.toString()).toBe("string");
    }
    expect(dlq[0]!["kexo-dlq-error"]!.toString()).toContain("a thrown object that has no text");
    expect(dlq[2]!["kexo-dlq-error"]!.toString()).toBe("upstream failed");
    expect(dlq[5]!["kexo-dlq-error"]!.toString()).toContain("an Error whose message is not a string");
    const logged = lines.map((l) => JSON.parse(l)).filter((l) => l.msg === "about to fail");
    expect(logged.length).toBe(cases.length);
    expect(logged[0]).toMatchObject({ body: { a: 1, self: "[cycle]" }, big: "10" });
    expect(JSON.stringify(logged[0])).not.toContain("hunter2");
  } finally {
    await journal.close();
  }
});

test("redact never throws and keeps shared (non-cyclic) values", () => {
  const shared = { n: 1 };
  expect(redact({ a: shared, b: shared, m: new Map([["k", 1n]]), s: new Set([1]), f() {}, sym: Symbol("x") })).toEqual({
    a: { n: 1 }, b: { n: 1 }, m: { k: "1" }, s: [1], f: "[function f]", sym: "Symbol(x)",
  });
  const getter = Object.defineProperty({}, "boom", { enumerable: true, get: () => { throw new Error("x"); } });
  expect(redact({ getter })).toEqual({ getter: { boom: "[unreadable]" } });
});
