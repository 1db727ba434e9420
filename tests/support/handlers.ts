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

/** What hangingHandler appends to CALLS_LOG, one JSON line per event. */
export interface HangCall {
  id: string;
  what: "start" | "aborted" | "end";
  partition: number;
  /** Date.now() when written. */
  at: number;
  pid: number;
}

/**
 * A handler whose messages with a value starting "hang" wait until the file named by the env RELEASE
 * exists (unless HANG=0 in its process), throwing when ctx.signal aborts (unless IGNORE_SIGNAL=1);
 * every message then inserts its value into `effects` in a ctx.tx. Each start, abort and end is
 * a line in CALLS_LOG (HangCall). `options`: extra handler options, as source.
 */
export function hangingHandler(topic: string, options = ""): string {
  return `import { defineHandler } from "kexo";
import { appendFileSync, existsSync } from "node:fs";

const log = (entry) => appendFileSync(process.env.CALLS_LOG, JSON.stringify({ ...entry, at: Date.now(), pid: process.pid }) + "\\n");

export default defineHandler({
  topics: [${JSON.stringify(topic)}],
  ${options}
  async setup(db) { await db.execute("CREATE TABLE IF NOT EXISTS effects (v TEXT NOT NULL)"); },
  async handle(value, ctx) {
    const v = String(value);
    const partition = ctx.message.partition;
    log({ id: v, what: "start", partition });
    if (v.startsWith("hang") && process.env.HANG !== "0") {
      while (!existsSync(process.env.RELEASE)) {
        if (ctx.signal.aborted && process.env.IGNORE_SIGNAL !== "1") {
          log({ id: v, what: "aborted", partition });
          throw new Error("aborted by kexo");
        }
        await new Promise((r) => setTimeout(r, 20));
      }
    }
    await ctx.tx((db) => db.execute({ sql: "INSERT INTO effects (v) VALUES (?)", args: [v] }));
    log({ id: v, what: "end", partition });
  },
});
`;
}
