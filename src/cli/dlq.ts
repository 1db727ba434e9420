// `kexo dlq list|show|replay`: the dead letters kept in the journal. Replay re-publishes the
// original key, value and headers (plus kexo-id, the message's id, when it had none) to the source
// topic (or --to) and marks the record replayed; a dead letter was never completed, so the
// replayed copy is handled again, under the same id.
import { Kafka } from "kafkajs";
import type { Config } from "../config/config.ts";
import { errorMessage, ExitCode, KexoError, UsageError } from "../errors.ts";
import { decodeHeaders } from "../journal/journal.ts";
import { kafkaConfig, silenceTimeoutNegativeWarning } from "../kafka/client.ts";
import { createLogger } from "../log.ts";
import type { Args } from "./args.ts";
import { checkHandlerName, type JournalReader, openJournalFor } from "./journal-read.ts";
import { plural, printJson, printLine, table } from "./output.ts";
import { createPartitioner } from "../kafka/partitioner.ts";

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

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/** Bytes as text (invalid UTF-8 shown as U+FFFD; the base64 fields keep the bytes). */
function text(b: Uint8Array): string {
  return Buffer.from(b).toString("utf8");
}

/** Bytes for a person: the text when they are UTF-8, else `base64:…` with their length. */
function readable(b: Uint8Array): string {
  try {
    return strictUtf8.decode(b);
  } catch {
    return `(${plural(b.byteLength, "byte")}, not UTF-8) base64:${Buffer.from(b).toString("base64")}`;
  }
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

/** `since`: parseSince's answer, computed before the journal is opened (a bad value is a usage error). */
function select(journal: JournalReader, args: Args, since: string | undefined): DeadLetterRow[] {
  const where: string[] = [];
  const params: unknown[] = [];
  if (args.flags.handler) {
    where.push("handler = ?");
    params.push(args.flags.handler);
  }
  if (since !== undefined) {
    where.push("failed_at >= ?");
    params.push(since);
  }
  return journal.query<DeadLetterRow>(
    `SELECT * FROM kexo_dead_letters ${where.length ? `WHERE ${where.join(" AND ")}` : ""} ORDER BY seq`,
    ...params,
  );
}

function byIds(journal: JournalReader, ids: string[]): DeadLetterRow[] {
  return ids.map((id) => {
    const row = journal.query<DeadLetterRow>("SELECT * FROM kexo_dead_letters WHERE seq = ?", Number(id))[0];
    // As kexo inspect: with --json, `{"id":…,"found":false,"error":{…}}` (main.ts prints it).
    if (!row) {
      throw new UsageError(`no dead letter with id ${id} in journal ${journal.path}; see kexo dlq list`, { id: Number(id), found: false });
    }
    return row;
  });
}

/**
 * The replay's producer. A command, not a worker: shorter retries than the worker's client (it
 * gives up on a broker that does not answer after about 3 s), and kafkajs's own log lines (each
 * connection error with its stack) only with --log-level; the error this command reports names
 * the brokers and the cause.
 */
function replayProducer(config: Config) {
  const log = createLogger({ level: config.logLevel === "info" ? "silent" : config.logLevel });
  silenceTimeoutNegativeWarning();
  const settings = { brokers: config.brokers, clientId: config.clientId, tls: config.tls, tlsFiles: config.tlsFiles, sasl: config.sasl };
  const kafka = new Kafka({ ...kafkaConfig(settings, log), retry: { initialRetryTime: 100, maxRetryTime: 1000, retries: 5 } });
  return kafka.producer({ allowAutoTopicCreation: true, createPartitioner });
}

/** The root cause: kafkajs wraps it (KafkaJSNonRetriableError around the connection error). */
function causeOf(err: unknown): string {
  let e = err;
  while (e instanceof Error && e.cause instanceof Error && e.cause.message) e = e.cause;
  return errorMessage(e);
}

async function replay(journal: JournalReader, config: Config, args: Args, rows: DeadLetterRow[]): Promise<number> {
  const to = args.flags.to as string | undefined;
  if (args.flags["dry-run"]) {
    if (args.flags.json) {
      printJson({ dryRun: true, wouldReplay: rows.map((r) => ({ id: r.seq, messageId: r.message_id, to: to ?? r.topic })) });
      return 0;
    }
    for (const r of rows) printLine(`would replay ${r.seq} (${r.message_id}) to ${to ?? r.topic}`);
    printLine(`${plural(rows.length, "dead letter")} would be replayed`);
    return 0;
  }
  // Nothing to publish: no broker is needed for that.
  if (rows.length === 0) {
    if (args.flags.json) printJson({ replayed: 0 });
    else printLine("no dead letters to replay (none, or every one was replayed already; see kexo dlq list)");
    return 0;
  }
  const brokers = config.brokers.join(",");
  const producer = replayProducer(config);
  try {
    await producer.connect();
  } catch (err) {
    throw new KexoError(
      "broker_unavailable",
      `cannot connect to the broker${config.brokers.length === 1 ? "" : "s"} ${brokers} to replay ${plural(rows.length, "dead letter")}: ${causeOf(err)}; ` +
        "nothing was replayed: check --brokers (and TLS/SASL settings) and that the broker is up, then run the command again",
      { exitCode: ExitCode.unavailable, cause: err },
    );
  }
  let done = 0;
  try {
    for (const r of rows) {
      const topic = to ?? r.topic;
      // The copy keeps its message's id (kexo-id wins over key and offset), so the ctx.tx and
      // ctx.step results the failed run recorded are reused, never applied twice; an id that
      // came from the offset would otherwise change with the replay's new offset. Set after the
      // original headers: an original kexo-id that was empty (so not the id) must not stay.
      const headers = { ...decodeHeaders(r.headers), "kexo-id": Buffer.from(r.message_id) };
      try {
        await producer.send({
          topic,
          acks: -1,
          messages: [{ key: r.key === null ? null : Buffer.from(r.key), value: r.value === null ? null : Buffer.from(r.value), headers }],
        });
      } catch (err) {
        // Marked rows were published; this one and the rest were not (a later --all takes them).
        const left = rows.slice(done).map((x) => x.seq);
        throw new KexoError(
          "broker_unavailable",
          `cannot publish dead letter ${r.seq} (${r.message_id}) to ${topic} on ${brokers}: ${causeOf(err)}; ` +
            `replayed ${done} of ${rows.length}, not replayed: ${left.join(" ")}. Check the broker and the topic, then run ` +
            `${args.flags.all ? "kexo dlq replay --all" : `kexo dlq replay ${left.join(" ")}`} again`,
          { exitCode: ExitCode.unavailable, cause: err },
        );
      }
      journal.run("UPDATE kexo_dead_letters SET replayed_at = ?, replayed_to = ? WHERE seq = ?", new Date().toISOString(), topic, r.seq);
      done++;
      if (!args.flags.json && (done % 100 === 0 || done === rows.length)) process.stderr.write(`\rreplayed ${done}/${rows.length}`);
    }
  } finally {
    await producer.disconnect().catch(() => {});
    if (!args.flags.json && done > 0) process.stderr.write("\n");
  }
  if (args.flags.json) printJson({ replayed: done });
  else printLine(`replayed ${plural(done, "dead letter")}`);
  return 0;
}

export async function dlqCommand(args: Args, env: Record<string, string | undefined>): Promise<number> {
  // parseCli checked the subcommand, the ids and the flags, before anything is opened.
  const [sub, ...ids] = args.positionals;
  if (sub !== "list" && sub !== "show" && sub !== "replay") throw new UsageError("kexo dlq list|show ID|replay (--all | ID…) [--to TOPIC] [--dry-run]");
  const since = args.flags.since === undefined ? undefined : parseSince(String(args.flags.since));
  const publish = sub === "replay" && args.flags["dry-run"] !== true;
  const { config, journal } = openJournalFor(args, env, { needBrokers: publish, write: publish });
  try {
    checkHandlerName(journal, args.flags.handler as string | undefined);
    if (sub === "list") {
      const rows = select(journal, args, since).map(summary);
      if (args.flags.json) printJson(rows);
      else if (rows.length === 0) printLine("no dead letters");
      else {
        // "message id": the message's ctx.id, what kexo inspect takes.
        printLine(table(rows.map((r) => ({ ...r, "message id": r.messageId, error: r.error.length > 60 ? r.error.slice(0, 57) + "..." : r.error, replayed: r.replayedAt ? "yes" : "" })),
          ["id", "handler", "message id", "source", "reason", "attempts", "failedAt", "replayed", "error"]));
      }
      return 0;
    }
    if (sub === "show") {
      const r = byIds(journal, ids)[0]!;
      const headers = Object.entries(decodeHeaders(r.headers));
      const each = (v: Buffer | Buffer[], as: (b: Buffer) => string) => (Array.isArray(v) ? v.map(as) : as(v));
      if (args.flags.json) {
        // Text for reading, base64 for the exact bytes (keys, values and headers may be binary).
        printJson({
          ...summary(r),
          key: r.key === null ? null : text(r.key),
          value: r.value === null ? null : text(r.value),
          headers: Object.fromEntries(headers.map(([k, v]) => [k, each(v, text)])),
          keyBase64: r.key === null ? null : Buffer.from(r.key).toString("base64"),
          valueBase64: r.value === null ? null : Buffer.from(r.value).toString("base64"),
          headersBase64: Object.fromEntries(headers.map(([k, v]) => [k, each(v, (b) => b.toString("base64"))])),
        });
      } else {
        printLine(JSON.stringify({
          ...summary(r),
          key: r.key === null ? null : readable(r.key),
          value: r.value === null ? null : readable(r.value),
          headers: Object.fromEntries(headers.map(([k, v]) => [k, each(v, readable)])),
        }, null, 2));
      }
      return 0;
    }
    const rows = args.flags.all ? select(journal, args, since).filter((r) => r.replayed_at === null) : byIds(journal, ids);
    return await replay(journal, config, args, rows);
  } finally {
    await journal.close();
  }
}
