// `kexo dlq list|show|replay`: the dead letters kept in the journal. Replay re-publishes the
// original key, value and headers (plus kexo-id, the message's id, when it had none) to the source
// topic (or --to) and marks the record replayed; a dead letter was never completed, so the
// replayed copy is handled again, under the same id.
import { UsageError } from "../errors.ts";
import { Journal, decodeHeaders } from "../journal/journal.ts";
import { createKafka } from "../kafka/client.ts";
import { createLogger } from "../log.ts";
import type { Args } from "./args.ts";
import { openJournalFor } from "./journal-read.ts";
import { printJson, printLine, table } from "./output.ts";

interface DeadLetterRow {
  seq: number;
  handler: string;
  group_id: string;
  message_id: string;
  topic: string;
  partition: number;
  offset: number;
  key: Uint8Array | null;
  value: Uint8Array | null;
  headers: string;
  reason: string;
  error: string;
  error_type: string;
  attempts: number;
  failed_at: string;
  dlq_topic: string;
  replayed_at: string | null;
  replayed_to: string | null;
}

function summary(r: DeadLetterRow) {
  return {
    id: r.seq,
    handler: r.handler,
    messageId: r.message_id,
    source: `${r.topic}/${r.partition}@${r.offset}`,
    reason: r.reason,
    errorType: r.error_type,
    error: r.error,
    attempts: r.attempts,
    failedAt: r.failed_at,
    deadLetterTopic: r.dlq_topic,
    replayedAt: r.replayed_at ?? undefined,
    replayedTo: r.replayed_to ?? undefined,
  };
}

function parseSince(since: string): string {
  const rel = /^(\d+)([smhd])$/.exec(since);
  if (rel) {
    const ms = Number(rel[1]) * { s: 1e3, m: 60e3, h: 3600e3, d: 86400e3 }[rel[2] as "s" | "m" | "h" | "d"];
    return new Date(Date.now() - ms).toISOString();
  }
  const t = Date.parse(since);
  if (Number.isNaN(t)) throw new UsageError(`--since ${since}: expected an ISO 8601 time or a duration like 30m, 2h, 7d`);
  return new Date(t).toISOString();
}

function select(journal: Journal, args: Args): DeadLetterRow[] {
  const where: string[] = [];
  const params: unknown[] = [];
  if (args.flags.handler) {
    where.push("handler = ?");
    params.push(args.flags.handler);
  }
  if (args.flags.since) {
    where.push("failed_at >= ?");
    params.push(parseSince(String(args.flags.since)));
  }
  return journal.query<DeadLetterRow>(
    `SELECT * FROM kexo_dead_letters ${where.length ? `WHERE ${where.join(" AND ")}` : ""} ORDER BY seq`,
    ...params,
  );
}

function byIds(journal: Journal, ids: string[]): DeadLetterRow[] {
  return ids.map((id) => {
    if (!/^\d+$/.test(id)) throw new UsageError(`dead-letter id "${id}" is not a number; see kexo dlq list`);
    const row = journal.query<DeadLetterRow>("SELECT * FROM kexo_dead_letters WHERE seq = ?", Number(id))[0];
    if (!row) throw new UsageError(`no dead letter with id ${id}; see kexo dlq list`);
    return row;
  });
}

export async function dlqCommand(args: Args, env: Record<string, string | undefined>): Promise<number> {
  const [sub, ...ids] = args.positionals;
  if (sub !== "list" && sub !== "show" && sub !== "replay") {
    throw new UsageError("kexo dlq list|show ID|replay (--all | ID…) [--to TOPIC] [--dry-run]");
  }
  const needBrokers = sub === "replay" && args.flags["dry-run"] !== true;
  const { config, journal } = openJournalFor(args, env, needBrokers);
  try {
    if (sub === "list") {
      const rows = select(journal, args).map(summary);
      if (args.flags.json) printJson(rows);
      else if (rows.length === 0) printLine("no dead letters");
      else {
        printLine(table(rows.map((r) => ({ ...r, error: r.error.length > 60 ? r.error.slice(0, 57) + "..." : r.error, replayed: r.replayedAt ? "yes" : "" })),
          ["id", "handler", "source", "reason", "attempts", "failedAt", "replayed", "error"]));
      }
      return 0;
    }
    if (sub === "show") {
      if (ids.length === 0) throw new UsageError("kexo dlq show ID: give a dead-letter id from kexo dlq list");
      const rows = byIds(journal, ids).map((r) => ({
        ...summary(r),
        key: r.key === null ? null : Buffer.from(r.key).toString("utf8"),
        value: r.value === null ? null : Buffer.from(r.value).toString("utf8"),
        headers: Object.fromEntries(Object.entries(decodeHeaders(r.headers)).map(([k, v]) => [k, v.toString("utf8")])),
      }));
      if (args.flags.json) printJson(rows.length === 1 ? rows[0] : rows);
      else for (const r of rows) printLine(JSON.stringify(r, null, 2));
      return 0;
    }
    if (!args.flags.all && ids.length === 0) throw new UsageError("kexo dlq replay: give --all or dead-letter ids");
    const rows = args.flags.all ? select(journal, args).filter((r) => r.replayed_at === null) : byIds(journal, ids);
    const to = args.flags.to as string | undefined;
    if (args.flags["dry-run"]) {
      for (const r of rows) printLine(`would replay ${r.seq} (${r.message_id}) to ${to ?? r.topic}`);
      printLine(`${rows.length} dead letter${rows.length === 1 ? "" : "s"} would be replayed`);
      return 0;
    }
    const log = createLogger({ level: config.logLevel === "info" ? "warn" : config.logLevel });
    const kafka = createKafka({ brokers: config.brokers, clientId: config.clientId, tls: config.tls, sasl: config.sasl }, log);
    const producer = kafka.producer({ allowAutoTopicCreation: true });
    await producer.connect();
    let done = 0;
    try {
      for (const r of rows) {
        const topic = to ?? r.topic;
        // The copy keeps its message's id (kexo-id wins over key and offset), so the ctx.tx and
        // ctx.step results the failed run recorded are reused, never applied twice; an id that
        // came from the offset would otherwise change with the replay's new offset.
        const headers = { "kexo-id": Buffer.from(r.message_id), ...decodeHeaders(r.headers) };
        await producer.send({
          topic,
          acks: -1,
          messages: [{ key: r.key === null ? null : Buffer.from(r.key), value: r.value === null ? null : Buffer.from(r.value), headers }],
        });
        journal.run("UPDATE kexo_dead_letters SET replayed_at = ?, replayed_to = ? WHERE seq = ?", new Date().toISOString(), topic, r.seq);
        done++;
        if (!args.flags.json && (done % 100 === 0 || done === rows.length)) process.stderr.write(`\rreplayed ${done}/${rows.length}`);
      }
    } finally {
      await producer.disconnect();
      if (!args.flags.json && rows.length > 0) process.stderr.write("\n");
    }
    if (args.flags.json) printJson({ replayed: done });
    else printLine(`replayed ${done} dead letter${done === 1 ? "" : "s"}`);
    return 0;
  } finally {
    await journal.close();
  }
}
