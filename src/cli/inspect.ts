// `kexo inspect ID`: one message's journal entry: status, attempts, steps, result or error.
import { UsageError } from "../errors.ts";
import type { Args } from "./args.ts";
import { openJournalFor } from "./journal-read.ts";
import { printJson, printLine } from "./output.ts";

interface Row {
  handler: string;
  id: string;
  status: string;
  topic: string;
  partition: number;
  offset: number;
  attempts: number;
  result: string | null;
  error: string | null;
  finished_at: number;
}

export async function inspectCommand(args: Args, env: Record<string, string | undefined>): Promise<number> {
  const id = args.positionals[0];
  if (!id) throw new UsageError("kexo inspect ID: give the message's dedup id (ctx.id)");
  const { journal } = openJournalFor(args, env);
  try {
    const handler = args.flags.handler as string | undefined;
    const rows = journal.query<Row>(
      `SELECT * FROM kexo_messages WHERE id = ? ${handler ? "AND handler = ?" : ""} ORDER BY handler`,
      ...(handler ? [id, handler] : [id]),
    );
    const steps = journal.query<{ handler: string; name: string; result: string; recorded_at: number }>(
      `SELECT handler, name, result, recorded_at FROM kexo_steps WHERE id = ? ${handler ? "AND handler = ?" : ""} ORDER BY recorded_at`,
      ...(handler ? [id, handler] : [id]),
    );
    if (rows.length === 0 && steps.length === 0) {
      if (args.flags.json) printJson({ id, found: false });
      else printLine(`no journal entry for ${id}${handler ? ` in handler ${handler}` : ""} (not handled yet, or another --db)`);
      return 1;
    }
    const handlers = [...new Set([...rows.map((r) => r.handler), ...steps.map((s) => s.handler)])];
    const entries = handlers.map((h) => {
      const r = rows.find((x) => x.handler === h);
      return {
        handler: h,
        id,
        status: r?.status ?? "in progress",
        topic: r?.topic,
        partition: r?.partition,
        offset: r?.offset === undefined ? undefined : String(r.offset),
        attempts: r?.attempts,
        finishedAt: r ? new Date(r.finished_at).toISOString() : undefined,
        steps: steps.filter((s) => s.handler === h).map((s) => ({ name: s.name, result: JSON.parse(s.result) as unknown, recordedAt: new Date(s.recorded_at).toISOString() })),
        result: r?.result ? (JSON.parse(r.result) as unknown) : undefined,
        error: r?.error ?? undefined,
      };
    });
    if (args.flags.json) {
      printJson(entries.length === 1 ? entries[0] : entries);
      return 0;
    }
    for (const e of entries) {
      printLine(`${e.id}  (handler ${e.handler})`);
      printLine(`  status     ${e.status}`);
      if (e.topic !== undefined) printLine(`  message    ${e.topic}/${e.partition}@${e.offset}`);
      if (e.attempts !== undefined) printLine(`  attempts   ${e.attempts}`);
      if (e.finishedAt) printLine(`  finished   ${e.finishedAt}`);
      for (const s of e.steps) printLine(`  step       ${s.name} = ${JSON.stringify(s.result)}`);
      if (e.result !== undefined) printLine(`  result     ${JSON.stringify(e.result)}`);
      if (e.error) printLine(`  error      ${e.error}`);
    }
    return 0;
  } finally {
    await journal.close();
  }
}
