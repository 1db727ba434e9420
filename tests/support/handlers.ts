// Handler sources the integration tests write into a temporary handlers directory. The effects
// handler inserts one row per handled message in a ctx.tx into a table without a primary key, so a
// message handled twice shows up as a second row.

export interface EffectsHandlerOptions {
  /** Extra handler options, as source (e.g. `order: "key", concurrency: 8,`). */
  options?: string;
  /** A JS expression for a delay in ms before the tx, with the payload in `p` (e.g. `p.n % 32 === 0 ? 20 : 1`). */
  delayMs?: string;
}

export function effectsHandler(topic: string, opts: EffectsHandlerOptions = {}): string {
  return `import { defineHandler, v } from "kexo";
export default defineHandler({
  topics: [${JSON.stringify(topic)}],
  schema: v.object({ n: v.number() }),
  ${opts.options ?? ""}
  async setup(db) { await db.execute("CREATE TABLE IF NOT EXISTS effects (n INTEGER NOT NULL)"); },
  async handle(p, ctx) {
    ${opts.delayMs ? `await new Promise((r) => setTimeout(r, ${opts.delayMs}));` : ""}
    await ctx.tx((db) => db.execute({ sql: "INSERT INTO effects (n) VALUES (?)", args: [p.n] }));
  },
});
`;
}
