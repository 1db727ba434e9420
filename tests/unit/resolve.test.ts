// Handler resolution: automatic group ids per SPEC (`kexo-{name}-{topic1}-{topic2}…`, at most 255
// characters) and the validation of the ordering and transaction options.
import { describe, expect, test } from "bun:test";
import type { Problem } from "../../src/errors.ts";
import { groupIdFor, resolveHandler } from "../../src/handlers/resolve.ts";
import { defineHandler } from "../../src/index.ts";

const resolve = (def: Record<string, unknown>) => {
  const problems: Problem[] = [];
  const h = resolveHandler("h.ts", "h", defineHandler({ handle: async () => {}, ...def } as never), problems);
  return { h, problems };
};

describe("groupIdFor", () => {
  test("joins the name and the topics in order", () => {
    expect(groupIdFor("orders", ["orders", "refunds"])).toBe("kexo-orders-orders-refunds");
  });

  test("spells a RegExp by its source, with characters Kafka ids dislike replaced", () => {
    expect(groupIdFor("audit", [/^audit\..*$/])).toBe("kexo-audit-_audit_.._");
  });

  test("truncates to 255 characters", () => {
    const topics = Array.from({ length: 40 }, (_, i) => `topic-number-${i}`);
    const id = groupIdFor("many", topics);
    expect(id.length).toBe(255);
    expect(id.startsWith("kexo-many-topic-number-0-topic-number-1-")).toBe(true);
  });

  test("a handler without groupId gets the automatic one; an explicit one wins", () => {
    expect(resolve({ topics: ["a", "b"] }).h?.groupId).toBe("kexo-h-a-b");
    expect(resolve({ topics: ["a"], groupId: "mine" }).h?.groupId).toBe("mine");
  });
});

describe("ordering and transaction options", () => {
  test('order defaults to "partition"; "key" and "topic" are accepted', () => {
    expect(resolve({ topics: ["a"] }).h?.order).toBe("partition");
    expect(resolve({ topics: ["a"], order: "key" }).h?.order).toBe("key");
    expect(resolve({ topics: ["a", /b.*/], order: "key" }).h?.order).toBe("key");
  });

  test('a RegExp topic is refused with order: "topic"', () => {
    const { h, problems } = resolve({ topics: ["a", /b.*/], order: "topic" });
    expect(h).toBeUndefined();
    expect(problems).toEqual([{ path: "h.ts: topics", message: 'a RegExp topic can not be used with order: "topic"; list the topics by name' }]);
  });

  test("kafkaTransactions is a boolean, off by default", () => {
    expect(resolve({ topics: ["a"] }).h?.kafkaTransactions).toBe(false);
    expect(resolve({ topics: ["a"], kafkaTransactions: true }).h?.kafkaTransactions).toBe(true);
    expect(resolve({ topics: ["a"], kafkaTransactions: "yes" }).problems).toEqual([{ path: "h.ts: kafkaTransactions", message: "must be true or false" }]);
  });
});
