// Liveness turns false when a joined consumer's loop is quiet past the poll TTL or a handler
// attempt runs past the handler TTL, and readiness reports a broker silent past its grace; a
// consumer that is rebalancing, or a handler that is merely retrying, is not stalled.
import { expect, test } from "bun:test";
import { EventBus } from "../../src/events.ts";
import { Liveness } from "../../src/health/liveness.ts";
import { livenessFromEnv } from "../../src/health/options.ts";
import { ConfigError } from "../../src/errors.ts";

function setup() {
  let now = 1_000_000;
  const bus = new EventBus();
  const l = new Liveness(bus, { pollTtlMs: 1000, handlerTtlMs: 5000, brokerGraceMs: 3000 }, () => now);
  return { bus, l, advance: (ms: number) => (now += ms) };
}

test("a joined consumer with no fetch past the poll TTL is stalled; a fetch revives it", () => {
  const { bus, l, advance } = setup();
  bus.emit("consumer.joined", { handler: "h", group: "g", assignment: { t: [0] }, generation: 1 });
  advance(900);
  expect(l.stalls()).toEqual([]);
  advance(200);
  expect(l.stalls().map((s) => s.reason).join()).toContain("poll TTL");
  bus.emit("consumer.polled", { handler: "h" });
  expect(l.stalls()).toEqual([]);
});

test("a consumer that is not joined (rebalancing, crashed, stopped) is not reported stalled", () => {
  const { bus, l, advance } = setup();
  bus.emit("consumer.joined", { handler: "h", group: "g", assignment: { t: [0] }, generation: 1 });
  bus.emit("consumer.rebalancing", { handler: "h", group: "g" });
  advance(10_000);
  expect(l.stalls()).toEqual([]);
  expect(l.unreachable()).toEqual([]);
});

test("a handler attempt past the handler TTL is stalled, though the poll TTL does not apply meanwhile", () => {
  const { bus, l, advance } = setup();
  bus.emit("consumer.joined", { handler: "h", group: "g", assignment: { t: [0] }, generation: 1 });
  const attempt = { handler: "h", id: "m1" };
  bus.emit("message.started", attempt);
  advance(4000);
  expect(l.stalls()).toEqual([]);
  advance(1500);
  const [stall] = l.stalls();
  expect(stall?.reason).toContain("message m1");
  expect(stall?.reason).toContain("handler TTL");
  bus.emit("message.finished", attempt);
  expect(l.stalls()).toEqual([]);
});

test("attempts finishing out of order: the one still running past the TTL is the one reported", () => {
  const { bus, l, advance } = setup();
  bus.emit("consumer.joined", { handler: "h", group: "g", assignment: { t: [0, 1, 2] }, generation: 1 });
  const a = { handler: "h", id: "a" };
  const b = { handler: "h", id: "b" };
  const c = { handler: "h", id: "c" };
  bus.emit("message.started", a);
  advance(1000);
  bus.emit("message.started", b);
  bus.emit("message.started", c);
  // a finishes first: c moves into its place; then c finishes, leaving b.
  bus.emit("message.finished", a);
  bus.emit("message.finished", c);
  // Finishing twice, or an attempt never started, changes nothing.
  bus.emit("message.finished", a);
  bus.emit("message.finished", { handler: "h", id: "never" });
  advance(4500);
  expect(l.stalls()).toEqual([]);
  advance(600);
  expect(l.stalls().map((s) => s.reason)).toEqual([expect.stringContaining("message b has been in handle() for 5100 ms")]);
  bus.emit("message.finished", b);
  expect(l.stalls()).toEqual([]);
  // A new attempt after all finished is tracked from its own start.
  const d = { handler: "h", id: "d" };
  bus.emit("message.started", d);
  advance(5001);
  expect(l.stalls().map((s) => s.reason)).toEqual([expect.stringContaining("message d")]);
});

test("one Liveness per bus: a second is refused until the first is closed", () => {
  const { bus, l } = setup();
  expect(() => new Liveness(bus)).toThrow(/one per bus/);
  l.close();
  new Liveness(bus).close();
});

test("retries with backoff keep the loop alive", () => {
  const { bus, l, advance } = setup();
  bus.emit("consumer.joined", { handler: "h", group: "g", assignment: { t: [0] }, generation: 1 });
  for (let i = 0; i < 5; i++) {
    advance(800);
    bus.emit("message.handled", { handler: "h", topic: "t", partition: 0, offset: "1", id: "m", outcome: "retried", seconds: 0 });
  }
  expect(l.stalls()).toEqual([]);
});

test("no broker answer past the grace makes a joined consumer unreachable; a heartbeat resets it", () => {
  const { bus, l, advance } = setup();
  bus.emit("consumer.joined", { handler: "h", group: "g", assignment: { t: [0] }, generation: 1 });
  advance(2500);
  bus.emit("message.handled", { handler: "h", topic: "t", partition: 0, offset: "1", id: "m", outcome: "processed", seconds: 0 });
  advance(1000);
  expect(l.unreachable().map((f) => f.reason).join()).toContain("no answer from the broker");
  bus.emit("consumer.heartbeat", { handler: "h", group: "g" });
  expect(l.unreachable()).toEqual([]);
});

test("TTLs come from KEXO_POLL_TTL_MS, KEXO_HANDLER_TTL_MS and KEXO_BROKER_GRACE_MS; bad values name the variable", () => {
  expect(livenessFromEnv({ KEXO_POLL_TTL_MS: "2000", KEXO_HANDLER_TTL_MS: "3000", KEXO_BROKER_GRACE_MS: "4000" })).toEqual({
    pollTtlMs: 2000,
    handlerTtlMs: 3000,
    brokerGraceMs: 4000,
  });
  expect(livenessFromEnv({}).pollTtlMs).toBe(60_000);
  try {
    livenessFromEnv({ KEXO_HANDLER_TTL_MS: "5s" });
    throw new Error("accepted 5s");
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).problems[0]?.path).toBe("KEXO_HANDLER_TTL_MS");
  }
});
