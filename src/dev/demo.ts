// `kexo dev --demo`: produces sample orders and payments (with re-published duplicates and a few
// poison messages) and prints progress on stdout until every message is accounted for.
import type { Kafka } from "kafkajs";
import type { EventBus, Outcome } from "../events.ts";
import { createPartitioner } from "../kafka/partitioner.ts";

export interface DemoOptions {
  count: number;
  out: (line: string) => void;
  json: boolean;
  /** Whether a handler consumes `topic`: the demo produces only to topics that one consumes. */
  consumes(topic: string): boolean;
}

/** The demo's topics, those of the repository's example handlers. */
export const DEMO_TOPICS = ["orders", "payments"] as const;

interface Tally {
  produced: number;
  expected: number;
  outcomes: Record<Outcome, number>;
}

const CUSTOMERS = ["ada", "grace", "linus", "barbara", "ken"];

function sampleMessages(count: number) {
  const orders: { key: string; value: string }[] = [];
  const payments: { key: string; value: string }[] = [];
  for (let i = 1; i <= count; i++) {
    const customer = CUSTOMERS[i % CUSTOMERS.length]!;
    const order = JSON.stringify({ orderId: `o-${i}`, customer, amount: (i % 97) + 0.5 });
    orders.push({ key: `o-${i}`, value: order });
    // Every 50th order is re-published by a retrying producer: same event id, new offset.
    if (i % 50 === 0) orders.push({ key: `o-${i}`, value: order });
    payments.push({ key: customer, value: JSON.stringify({ paymentId: `p-${i}`, customer, amount: 10 }) });
  }
  // Poison: not JSON, and JSON of the wrong shape; both go to orders.dlq with the reason.
  orders.push({ key: "bad-1", value: "{not json" });
  orders.push({ key: "bad-2", value: JSON.stringify({ orderId: 42 }) });
  // Above the limit: the handler throws PermanentError.
  orders.push({ key: "o-big", value: JSON.stringify({ orderId: "o-big", customer: "ada", amount: 50_000 }) });
  return { orders, payments };
}

export async function runDemo(kafka: Kafka, bus: EventBus, opts: DemoOptions, signal: AbortSignal): Promise<Tally> {
  const { orders, payments } = sampleMessages(opts.count);
  // Handlers of the user's own (--handlers) may consume neither: nothing to wait for then.
  const sends = ([["orders", orders], ["payments", payments]] as const).filter(([topic]) => opts.consumes(topic));
  const tally: Tally = {
    produced: 0,
    expected: sends.reduce((n, [, msgs]) => n + msgs.length, 0),
    outcomes: { processed: 0, deduplicated: 0, retried: 0, dead_lettered: 0, failed: 0 },
  };
  const off = bus.on("message.handled", (e) => {
    tally.outcomes[e.outcome]++;
  });
  const print = (final: boolean) => {
    const o = tally.outcomes;
    if (opts.json) {
      opts.out(JSON.stringify({ demo: final ? "done" : "progress", produced: tally.produced, ...o }));
    } else {
      opts.out(
        `demo: produced ${tally.produced}/${tally.expected} · processed ${o.processed} · deduplicated ${o.deduplicated} · dead-lettered ${o.dead_lettered} · retried ${o.retried}`,
      );
    }
  };
  if (sends.length === 0) {
    off();
    const said = `the demo's sample messages go to ${DEMO_TOPICS.join(" and ")} (the example handlers' topics), which none of these handlers consumes; ` +
      "nothing was produced. Produce to your handlers' topics yourself (the broker's address is in the log: \"development broker started\")";
    opts.out(opts.json ? JSON.stringify({ demo: "skipped", reason: said }) : `demo: ${said}`);
    return tally;
  }
  const producer = kafka.producer({ createPartitioner });
  await producer.connect();
  try {
    for (const [topic, msgs] of sends) {
      for (let i = 0; i < msgs.length; i += 500) {
        const chunk = msgs.slice(i, i + 500);
        await producer.send({ topic, messages: chunk });
        tally.produced += chunk.length;
      }
    }
  } finally {
    await producer.disconnect();
  }
  const done = () => {
    const o = tally.outcomes;
    return o.processed + o.deduplicated + o.dead_lettered >= tally.expected;
  };
  while (!done() && !signal.aborted) {
    print(false);
    await new Promise((r) => setTimeout(r, 1000));
  }
  off();
  print(true);
  return tally;
}
