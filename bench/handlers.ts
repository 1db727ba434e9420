// The benchmark's handler files, one per scenario, written to a temporary --handlers directory.
// Every handler validates the ~150-byte JSON value with a schema, as a real one would.

const schema = `v.object({ id: v.string(), account: v.string(), amount: v.number(), sentAt: v.number(), pad: v.string() })`;
const table = `async setup(db) {
    await db.execute("CREATE TABLE IF NOT EXISTS bench_rows (id TEXT PRIMARY KEY, account TEXT NOT NULL, amount REAL NOT NULL)");
  },`;
const insert = `await ctx.tx(async (db) => {
      await db.execute({ sql: "INSERT INTO bench_rows (id, account, amount) VALUES (?, ?, ?)", args: [e.id, e.account, e.amount] });
    });`;

export type Scenario = "noop" | "tx" | "step-tx" | "key-order";

export function handlerSource(scenario: Scenario, topic: string): string {
  const head = `import { defineHandler, v } from "kexo";\n`;
  switch (scenario) {
    case "noop":
      return `${head}export default defineHandler({
  topics: [${JSON.stringify(topic)}],
  schema: ${schema},
  async handle() {},
});\n`;
    case "tx":
      return `${head}export default defineHandler({
  topics: [${JSON.stringify(topic)}],
  schema: ${schema},
  ${table}
  async handle(e, ctx) {
    ${insert}
  },
});\n`;
    case "step-tx":
      return `${head}export default defineHandler({
  topics: [${JSON.stringify(topic)}],
  schema: ${schema},
  ${table}
  async handle(e, ctx) {
    const score = await ctx.step("score", () => ({ score: e.amount * 2 }));
    ${insert}
    return score;
  },
});\n`;
    case "key-order":
      return `${head}export default defineHandler({
  topics: [${JSON.stringify(topic)}],
  schema: ${schema},
  order: "key",
  concurrency: 256,
  async handle() {
    await new Promise((r) => setTimeout(r, 5));
  },
});\n`;
  }
}
