// Header values at the edges of what Kafka and kafkajs hand over: an empty kexo-id (a null one
// reads as empty) is no id, so the handler's business key decides; values kafkajs's own decoder
// makes of headers named like Object.prototype members are read as the header's value.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { resolveHandler } from "../../src/handlers/resolve.ts";
import { defineHandler, type HandlerContext, type KafkaMessage, v } from "../../src/index.ts";
import { Journal } from "../../src/journal/journal.ts";
import { fromKafkajs } from "../../src/kafka/headers.ts";
import { setOwn } from "../../src/own.ts";
import { execute } from "../../src/processing/executor.ts";
import { unitDeps, unitMessage } from "../support/executor.ts";
import { tempDir } from "../support/tmp.ts";

test("an empty kexo-id header is no id: the handler's key() gives it", async () => {
  const journal = Journal.open({ url: `file:${join(tempDir(), "j.db")}`, commitIntervalMs: 1 });
  const ids: string[] = [];
  const h = resolveHandler("h.ts", "h", defineHandler({
    topics: ["t"],
    schema: v.object({ order: v.string() }),
    key: (e) => `order-${e.order}`,
    async handle(_e, ctx: HandlerContext) {
      ids.push(ctx.id);
    },
  }), [])!;
  const { deps } = unitDeps(journal);
  const signal = new AbortController().signal;
  const message = (offset: number, kexoId?: Buffer): KafkaMessage => {
    const m = unitMessage(offset, JSON.stringify({ order: `o${offset}` }));
    if (kexoId) m.headers["kexo-id"] = kexoId;
    return m;
  };
  try {
    expect(await execute(h, message(0, Buffer.alloc(0)), deps, signal)).toBe("done");
    expect(await execute(h, message(1, Buffer.from("given")), deps, signal)).toBe("done");
    expect(await execute(h, message(2), deps, signal)).toBe("done");
    expect(ids).toEqual(["order-o0", "given", "order-o2"]);
  } finally {
    await journal.close();
  }
});

test("kafkajs's decoder's values for headers named like Object.prototype members: the header's own value", () => {
  // kafkajs's reducer reads the inherited member as an earlier value: [Object, value] for
  // `constructor`, [Object.prototype, value] for `__proto__`, [the function, value] for `toString`.
  const raw: Record<string, unknown> = { constructor: [Object, Buffer.from("c")], toString: [Object.prototype.toString, Buffer.from("t1"), Buffer.from("t2")] };
  setOwn(raw, "__proto__", [Object.prototype, Buffer.from("p")]);
  const headers = fromKafkajs(raw as Parameters<typeof fromKafkajs>[0]);
  expect(Object.keys(headers).sort()).toEqual(["__proto__", "constructor", "toString"]);
  expect(String(headers.constructor)).toBe("c");
  expect(String(Object.getOwnPropertyDescriptor(headers, "__proto__")!.value)).toBe("p");
  expect(String(headers.toString)).toBe("t2");
  expect(Object.getPrototypeOf(headers)).toBe(Object.prototype);
});
