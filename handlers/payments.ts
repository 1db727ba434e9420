// Example handler: add each payment to its customer's balance. The UPDATE is not idempotent, so
// it is only correct because ctx.tx commits it exactly once with the message's journal record.
import { defineHandler, v } from "kexo";

export default defineHandler({
  topics: ["payments"],
  schema: v.object({
    paymentId: v.pipe(v.string(), v.nonEmpty()),
    customer: v.string(),
    amount: v.number(),
  }),
  async setup(db) {
    await db.execute("CREATE TABLE IF NOT EXISTS balances (customer TEXT PRIMARY KEY, paid REAL NOT NULL, payments INTEGER NOT NULL)");
  },
  async handle(payment, ctx) {
    const balance = await ctx.tx(async (db) => {
      await db.execute({
        sql: `INSERT INTO balances (customer, paid, payments) VALUES (?, ?, 1)
              ON CONFLICT (customer) DO UPDATE SET paid = paid + excluded.paid, payments = payments + 1`,
        args: [payment.customer, payment.amount],
      });
      const r = await db.execute({ sql: "SELECT paid FROM balances WHERE customer = ?", args: [payment.customer] });
      return Number(r.rows[0]?.paid ?? 0);
    });
    ctx.log.debug("payment applied", { paymentId: payment.paymentId, balance });
    return { balance };
  },
});
