// Logs are JSON lines with a level; values under secret-looking keys never reach them, at any
// depth, also in kafkajs's own log entries routed through kexo's logger.
import { expect, test } from "bun:test";
import { createKafka } from "../../src/kafka/client.ts";
import { createLogger } from "../../src/log.ts";

function capture(level: "debug" | "info" = "info") {
  const lines: Record<string, unknown>[] = [];
  const log = createLogger({ level, write: (line) => lines.push(JSON.parse(line) as Record<string, unknown>) });
  return { log, lines };
}

test("one JSON object per line with time, level and msg; below the level nothing is written", () => {
  const { log, lines } = capture("info");
  log.debug("hidden");
  log.warn("shown", { partition: 3 });
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatchObject({ level: "warn", msg: "shown", partition: 3 });
  expect(typeof lines[0]!.time).toBe("string");
});

test("secrets are redacted by key name, nested, in arrays, in child loggers and in error causes", () => {
  const { log, lines } = capture();
  const child = log.child({ component: "x" });
  child.info("connecting", {
    brokers: ["b:9092"],
    sasl: { mechanism: "plain", username: "svc", password: "hunter2" },
    nested: [{ apiKey: "k-123", token: "t-456" }],
    headers: { Authorization: "Bearer abc" },
    error: new Error("auth failed", { cause: Object.assign(new Error("inner"), { code: "E" }) }),
  });
  const text = JSON.stringify(lines);
  for (const secret of ["hunter2", "k-123", "t-456", "Bearer abc"]) expect(text).not.toContain(secret);
  expect(lines[0]).toMatchObject({ component: "x", sasl: "[redacted]", brokers: ["b:9092"], error: { type: "Error", message: "auth failed", cause: { message: "inner", code: "E" } } });
});

test("kafkajs's log entries come out as kexo JSON lines, component kafkajs, secrets redacted", () => {
  const { log, lines } = capture("debug");
  const kafka = createKafka({ brokers: ["127.0.0.1:1"], clientId: "t", sasl: { mechanism: "plain", username: "u", password: "pw-secret" } }, log);
  kafka.logger().error("broker refused", { broker: "127.0.0.1:1", password: "pw-secret" });
  kafka.logger().info("joined", { groupId: "g" });
  const mine = lines.filter((l) => l.component === "kafkajs");
  expect(mine.map((l) => [l.level, l.msg])).toEqual([["error", "broker refused"], ["debug", "joined"]]);
  expect(JSON.stringify(lines)).not.toContain("pw-secret");
});

test("a logged object's own __proto__ key stays a field (assigning it set the copy's prototype)", () => {
  const lines: string[] = [];
  createLogger({ write: (l) => lines.push(l) }).info("m", { payload: JSON.parse('{"__proto__":{"a":1},"b":2}') });
  expect(JSON.parse(lines[0]!).payload).toEqual(JSON.parse('{"__proto__":{"a":1},"b":2}'));
  expect(lines[0]).toContain('"__proto__":{"a":1}');
});
