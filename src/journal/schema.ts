// The journal's tables. Names start with kexo_ so they never meet a handler's own tables.
// Bump SCHEMA_VERSION and add a migration step when a released table changes.

export const SCHEMA_VERSION = 2;

export const SCHEMA = `
CREATE TABLE IF NOT EXISTS kexo_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;

-- One row per handled message, keyed by the dedup id (ctx.id). status: completed | dead_lettered.
-- 'completed' deduplicates. A dead letter was never completed: its replay (another offset, same id
-- through the kexo-id header) runs again; only a redelivery of the very offset it came from is done.
CREATE TABLE IF NOT EXISTS kexo_messages (
  handler TEXT NOT NULL,
  id TEXT NOT NULL,
  status TEXT NOT NULL,
  topic TEXT NOT NULL,
  partition INTEGER NOT NULL,
  "offset" INTEGER NOT NULL,
  attempts INTEGER NOT NULL,
  result TEXT,
  error TEXT,
  finished_at INTEGER NOT NULL,
  PRIMARY KEY (handler, id)
) WITHOUT ROWID;

-- Recorded ctx.step and ctx.tx results; a recorded one never runs again.
CREATE TABLE IF NOT EXISTS kexo_steps (
  handler TEXT NOT NULL,
  id TEXT NOT NULL,
  name TEXT NOT NULL,
  result TEXT NOT NULL,
  recorded_at INTEGER NOT NULL,
  PRIMARY KEY (handler, id, name)
) WITHOUT ROWID;

-- Per partition: every offset below next_offset is done (completed, deduplicated or dead-lettered).
-- The source of truth for where a partition resumes; Kafka's committed offset follows it.
CREATE TABLE IF NOT EXISTS kexo_progress (
  group_id TEXT NOT NULL,
  topic TEXT NOT NULL,
  partition INTEGER NOT NULL,
  next_offset INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  PRIMARY KEY (group_id, topic, partition)
) WITHOUT ROWID;

-- Per handler and partition: no offset at or above next_offset was ever started, so no record can
-- exist for such an offset's default dedup id, and the executor skips its lookups. Written in the
-- same transaction as (or before) any record of a message it covers. (Schema version 2.)
CREATE TABLE IF NOT EXISTS kexo_started (
  handler TEXT NOT NULL,
  topic TEXT NOT NULL,
  partition INTEGER NOT NULL,
  next_offset INTEGER NOT NULL,
  PRIMARY KEY (handler, topic, partition)
) WITHOUT ROWID;

-- Messages recorded by ctx.emit, written in the same transaction as the completion.
CREATE TABLE IF NOT EXISTS kexo_outbox (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  handler TEXT NOT NULL,
  message_id TEXT NOT NULL,
  topic TEXT NOT NULL,
  key BLOB,
  value BLOB,
  headers TEXT NOT NULL,
  partition INTEGER,
  created_at INTEGER NOT NULL
);

-- Every dead letter kexo wrote, for kexo dlq list/show/replay.
CREATE TABLE IF NOT EXISTS kexo_dead_letters (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  handler TEXT NOT NULL,
  group_id TEXT NOT NULL,
  message_id TEXT NOT NULL,
  topic TEXT NOT NULL,
  partition INTEGER NOT NULL,
  "offset" INTEGER NOT NULL,
  key BLOB,
  value BLOB,
  headers TEXT NOT NULL,
  reason TEXT NOT NULL,
  error TEXT NOT NULL,
  error_type TEXT NOT NULL,
  attempts INTEGER NOT NULL,
  failed_at TEXT NOT NULL,
  dlq_topic TEXT NOT NULL,
  replayed_at TEXT,
  replayed_to TEXT
);
CREATE INDEX IF NOT EXISTS kexo_dead_letters_handler ON kexo_dead_letters (handler, seq);

-- Failed attempts of a delivery that is still being retried, so that a restart (which delivers
-- the same offset again) goes on counting: retry.attempts counts every attempt, across restarts.
-- Keyed by delivery, not by id: a replay or another copy of the same id starts at 1. Deleted
-- once the message is done; rows left behind (the partition moved away) go after 7 days.
-- After an unclean stop, an attempt is counted here before its handler starts and put right when it
-- ends (see processing/crash-guard.ts). deaths: how many of the attempts were run alone and not
-- survived by the process. dead_letter: set once the handler gave up (JSON: reason, error, …), so
-- that a restart only writes the dead letter and never runs the handler again. next_try_at: when
-- the next attempt is due (ms since epoch) after the last failure, so that a restart or a new owner
-- waits the rest of the backoff; null when no wait is known (an attempt claimed before it ran).
-- (The three added to older journals by ADDED_COLUMNS, with no version bump: kexo versions without
-- them still work on the table, only ignoring the columns.)
CREATE TABLE IF NOT EXISTS kexo_retries (
  handler TEXT NOT NULL,
  topic TEXT NOT NULL,
  partition INTEGER NOT NULL,
  "offset" INTEGER NOT NULL,
  id TEXT NOT NULL,
  attempts INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  deaths INTEGER NOT NULL DEFAULT 0,
  dead_letter TEXT,
  next_try_at INTEGER,
  PRIMARY KEY (handler, topic, partition, "offset")
) WITHOUT ROWID;
`;

/** Columns added after a table first shipped: [table, column, definition]. */
export const ADDED_COLUMNS: readonly (readonly [string, string, string])[] = [
  ["kexo_retries", "deaths", "INTEGER NOT NULL DEFAULT 0"],
  ["kexo_retries", "dead_letter", "TEXT"],
  ["kexo_retries", "next_try_at", "INTEGER"],
];
