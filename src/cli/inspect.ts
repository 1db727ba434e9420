// `kexo inspect ID`: one message's journal entry: status, attempts, steps, result or error.
import { UsageError } from "../errors.ts";
import type { Args } from "./args.ts";
import { checkHandlerName, journalHandlers, type JournalReader, openJournalFor } from "./journal-read.ts";
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

/** What partition progress says of a default dedup id (`kafka-unique-id-TOPIC-PARTITION-GROUP-OFFSET`). */
interface ByProgress {
  group: string;
  topic: string;
  partition: number;
  offset: string;
  completed: boolean;
}

const BY_PROGRESS = "(recorded by partition progress; no result)";

/**
 * Order partition/topic records a default-id message that returned nothing and emitted nothing
 * only in kexo_progress (no kexo_messages row): the id is matched against each progress row,
 * because topic and group names may contain "-".
 */
function byProgress(journal: JournalReader, id: string): ByProgress | undefined {
  if (!id.startsWith("kafka-unique-id-")) return undefined;
  const rows = journal.query<{ group_id: string; topic: string; partition: number; next_offset: number | bigint }>(
    "SELECT group_id, topic, partition, next_offset FROM kexo_progress",
  );
  for (const r of rows) {
    const prefix = `kafka-unique-id-${r.topic}-${r.partition}-${r.group_id}-`;
    const offset = id.startsWith(prefix) ? id.slice(prefix.length) : "";
    if (!/^\d+$/.test(offset)) continue;
    return { group: r.group_id, topic: r.topic, partition: r.partition, offset, completed: BigInt(offset) < BigInt(r.next_offset) };
  }
  return undefined;
}

export async function inspectCommand(args: Args, env: Record<string, string | undefined>): Promise<number> {
  // parseCli checked that there is one ID, before the journal is opened.
  const asked = args.positionals[0];
  if (asked === undefined) throw new UsageError("kexo inspect ID: give the message's dedup id (ctx.id)");
  const { journal } = openJournalFor(args, env);
  try {
    const handler = args.flags.handler as string | undefined;
    checkHandlerName(journal, handler);
    const byId = (id: string) =>
      journal.query<Row>(
        `SELECT * FROM kexo_messages WHERE id = ? ${handler ? "AND handler = ?" : ""} ORDER BY handler`,
        ...(handler ? [id, handler] : [id]),
      );
    let id = asked;
    let rows = byId(id);
    // The offset form of an id whose message is recorded under another id (its business key, or
    // a kexo-id header): the record of the message at that offset is the answer, not what
    // partition progress would say of an offset-form id.
    let recordedAs: string | undefined;
    const place = rows.length === 0 ? byProgress(journal, id) : undefined;
    if (place) {
      // Only a record of the group's own handler: another handler of the same topic has records
      // at the same offsets.
      const mine = handlersOfGroup(journal, place.group);
      const there = journal.query<Row>(
        `SELECT * FROM kexo_messages WHERE topic = ? AND partition = ? AND "offset" = ? ${handler ? "AND handler = ?" : ""} ORDER BY handler`,
        ...[place.topic, place.partition, Number(place.offset), ...(handler ? [handler] : [])],
      ).filter((r) => mine.has(r.handler));
      if (there.length > 0 && there[0]!.id !== id) {
        recordedAs = id = there[0]!.id;
        rows = byId(id);
      }
    }
    const steps = journal.query<{ handler: string; name: string; result: string; recorded_at: number }>(
      `SELECT handler, name, result, recorded_at FROM kexo_steps WHERE id = ? ${handler ? "AND handler = ?" : ""} ORDER BY recorded_at`,
      ...(handler ? [id, handler] : [id]),
    );
    // Failed attempts of a message that is still being retried (kexo_retries).
    const retrying = journal.query<{ handler: string; attempts: number; deaths: number; updated_at: number; next_try_at: number | null }>(
      `SELECT handler, attempts, deaths, updated_at, next_try_at FROM kexo_retries WHERE id = ? ${handler ? "AND handler = ?" : ""} ORDER BY handler`,
      ...(handler ? [id, handler] : [id]),
    );
    const progress = rows.length === 0 && !recordedAs ? byProgress(journal, id) : undefined;
    if (rows.length === 0 && steps.length === 0 && progress?.completed) {
      const { group, topic, partition, offset } = progress;
      if (args.flags.json) printJson({ id, group, status: "completed", recordedBy: "partition progress", topic, partition, offset, steps: [] });
      else {
        printLine(`${id}  (group ${group})`);
        printLine(`  status     completed ${BY_PROGRESS}`);
        printLine(`  message    ${topic}/${partition}@${offset}`);
      }
      return 0;
    }
    if (rows.length === 0 && steps.length === 0 && retrying.length === 0) {
      // Exit 64, as kexo dlq show for an unknown id (1 would say "a bug"); --json still answers
      // `{"id":…,"found":false,"error":{…}}` (main.ts prints it).
      throw new UsageError(
        `no journal entry for ${id}${handler ? ` in handler ${handler}` : ""} in journal ${journal.path}: not handled yet, ` +
          "or the worker runs on another --db; the id is the message's ctx.id (see kexo dlq list for dead letters)",
        { id, found: false },
      );
    }
    const handlers = [...new Set([...rows.map((r) => r.handler), ...steps.map((s) => s.handler), ...retrying.map((a) => a.handler)])];
    const entries = handlers.map((h) => {
      const r = rows.find((x) => x.handler === h);
      // A replayed dead letter being retried has its dead_lettered row and a count.
      const failed = retrying.find((a) => a.handler === h);
      return {
        handler: h,
        id,
        ...(recordedAs && { askedFor: asked }),
        status: failed ? "retrying" : (r?.status ?? (progress?.completed ? "completed" : "in progress")),
        failedAttempts: failed?.attempts,
        // Of those, attempts the process did not survive (see processing/crash-guard.ts).
        diedIn: failed?.deaths,
        lastFailedAt: failed ? new Date(failed.updated_at).toISOString() : undefined,
        // When the next attempt is due, as the last failure set it (a restart waits until then).
        nextTryAt: failed?.next_try_at == null ? undefined : new Date(Number(failed.next_try_at)).toISOString(),
        recordedBy: !r && progress?.completed ? "partition progress" : undefined,
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
    if (recordedAs) printLine(`${asked} is the message at ${place!.topic}/${place!.partition}@${place!.offset}, recorded under its id ${recordedAs} (the handler's key or a kexo-id header):`);
    for (const e of entries) {
      printLine(`${e.id}  (handler ${e.handler})`);
      printLine(`  status     ${e.status}${e.recordedBy ? ` ${BY_PROGRESS}` : ""}`);
      if (e.topic !== undefined) printLine(`  message    ${e.topic}/${e.partition}@${e.offset}`);
      if (e.attempts !== undefined) printLine(`  attempts   ${e.attempts}`);
      if (e.failedAttempts !== undefined) printLine(`  failed     ${e.failedAttempts} attempt${e.failedAttempts === 1 ? "" : "s"} so far${e.diedIn ? ` (the process died in ${e.diedIn})` : ""}, the last at ${e.lastFailedAt}${e.nextTryAt ? `, next try at ${e.nextTryAt}` : ""}`);
      if (e.finishedAt) printLine(`  finished   ${e.finishedAt}`);
      // Records are kept as step:NAME (ctx.step) and tx:N (the Nth ctx.tx): said as the handler wrote them.
      for (const s of e.steps) {
        const tx = /^tx:(\d+)$/.exec(s.name);
        printLine(tx ? `  ctx.tx #${tx[1]}  = ${JSON.stringify(s.result)}` : `  step       ${s.name.replace(/^step:/, "")} = ${JSON.stringify(s.result)}`);
      }
      if (e.result !== undefined) printLine(`  result     ${JSON.stringify(e.result)}`);
      if (e.error) printLine(`  error      ${e.error}`);
    }
    return 0;
  } finally {
    await journal.close();
  }
}

/**
 * The handlers whose consumer group is `group`, as far as the journal tells: those that
 * dead-lettered a message from it, and those whose default group name (`kexo-NAME-TOPICS`) it is.
 */
function handlersOfGroup(journal: JournalReader, group: string): Set<string> {
  const out = new Set<string>();
  for (const r of journal.query<{ handler: string }>("SELECT DISTINCT handler FROM kexo_dead_letters WHERE group_id = ?", group)) out.add(r.handler);
  for (const h of journalHandlers(journal) ?? []) if (group.startsWith(`kexo-${h}-`)) out.add(h);
  return out;
}
