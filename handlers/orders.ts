// Example handler: charge each order once. The charge is a recorded step (an external call that
// must not repeat), the order row is written atomically with the message's journal record.
import { defineHandler, PermanentError, v } from "kexo";

export default defineHandler({
  topics: ["orders"],
  schema: v.object({
    orderId: v.pipe(v.string(), v.nonEmpty()),
    customer: v.string(),
    amount: v.pipe(v.number(), v.minValue(0)),
  }),
  // The producer's event id: a re-published copy of an order is skipped, not charged twice.
  key: (order) => order.orderId,
  retry: { attempts: 5, initialDelayMs: 200, maxDelayMs: 10_000 },
  async setup(db) {
    await db.execute(
      "CREATE TABLE IF NOT EXISTS orders (order_id TEXT PRIMARY KEY, customer TEXT NOT NULL, amount REAL NOT NULL, receipt TEXT NOT NULL)",
    );
  },
  async handle(order, ctx) {
    if (order.amount > 10_000) throw new PermanentError(`amount ${order.amount} is above the 10000 limit; needs manual review`);
    // Stands for a payment API call; `${ctx.id}:charge` is the idempotency key to pass it.
    const receipt = await ctx.step("charge", () => ({ id: `rcpt-${order.orderId}`, idempotencyKey: `${ctx.id}:charge` }));
    await ctx.tx(async (db) => {
      await db.execute({
        sql: "INSERT INTO orders (order_id, customer, amount, receipt) VALUES (?, ?, ?, ?)",
        args: [order.orderId, order.customer, order.amount, receipt.id],
      });
    });
    return { receipt: receipt.id };
  },
});
