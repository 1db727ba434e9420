// One running instance per --client-id on a shared journal. Per-instance rows (the crash guard's
// run state, the consumers' member ids) are keyed by the client id, so two instances given the same
// one would hide each other's crashes and rejoin Kafka under each other's member ids.
//
// The lease is a kexo_meta row `lease@CLIENT_ID` holding the holder's token, host, pid and a beat
// counter, which the holder advances about once a second inside a group commit. Liveness is seen
// as the counter moving, never by comparing clocks of different hosts:
// - At start, a row of another token is watched for WATCH_MS: if its counter moves, that instance
//   runs and this one refuses to start (exit 78). If not, it is taken over. A row left by an earlier
//   run in this very process space (same host, boot and pid namespace, and its pid this one's or
//   no longer alive) is taken over at once. Containers sharing a host name have pid namespaces of
//   their own, so theirs are watched. A clean stop deletes the row, if it is still this holder's.
// - Every write of the row is a compare-and-set on the value last seen, so of two instances taking
//   it at once one wins, and a holder that was judged gone (its JS thread stalled past WATCH_MS)
//   learns at its next beat that it lost the row, and stops (exit 78) before its COMMIT.
import { randomUUID } from "node:crypto";
import { readFileSync, readlinkSync } from "node:fs";
import { hostname } from "node:os";
import { ExitCode, KexoError } from "../errors.ts";
import type { SqlConnection } from "./remote.ts";

/** How often the holder advances its counter. */
export const BEAT_MS = 1000;
/** How long a starting instance watches a row for its counter to move: the session timeout, so a holder stalled longer is out of its Kafka group too. */
export const WATCH_MS = 6000;

interface Holder {
  token: string;
  host: string;
  pid: number;
  /** Where `pid` means something: the boot and the pid namespace (Linux), else "". */
  space: string;
  beat: number;
}

function pidSpace(): string {
  try {
    return `${readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim()}/${readlinkSync("/proc/self/ns/pid")}`;
  } catch {
    return "";
  }
}

function parse(value: string | undefined): Holder | undefined {
  if (value === undefined) return undefined;
  try {
    const h = JSON.parse(value) as Holder;
    return typeof h?.token === "string" ? h : undefined;
  } catch {
    return undefined;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as { code?: string }).code === "EPERM";
  }
}

/** Blocks the JS thread: the journal opens before anything else runs. */
function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** What both refusals tell the operator to do. */
const DISTINCT_IDS =
  "Instances sharing a journal need distinct client ids (the default, kexo-HOSTNAME, is): set --client-id or KEXO_CLIENT_ID per instance";

export class InstanceLease {
  readonly #key: string;
  readonly #clientId: string;
  readonly #where: string;
  readonly #s: ReturnType<typeof statements>;
  #value: string;
  #holder: Holder;
  #lastBeat = performance.now();
  #released = false;
  #dropped = false;

  private constructor(conn: SqlConnection, key: string, clientId: string, where: string, holder: Holder) {
    this.#key = key;
    this.#clientId = clientId;
    this.#where = where;
    this.#s = statements(conn);
    this.#holder = holder;
    this.#value = JSON.stringify(holder);
  }

  /** Takes the row `key` for this process, or throws (exit 78) while another instance holds it. */
  static acquire(conn: SqlConnection, key: string, clientId: string, where: string, watchMs = WATCH_MS): InstanceLease {
    const mine: Holder = { token: randomUUID(), host: hostname(), pid: process.pid, space: pidSpace(), beat: 0 };
    const lease = new InstanceLease(conn, key, clientId, where, mine);
    let seen = lease.#read();
    const other = parse(seen);
    const earlierRunHere = other !== undefined && other.host === mine.host && other.space === mine.space &&
      (other.pid === mine.pid || !alive(other.pid));
    if (seen !== undefined && !earlierRunHere) {
      const until = performance.now() + watchMs;
      while (performance.now() < until) {
        sleepSync(Math.min(250, Math.max(1, until - performance.now())));
        const now = lease.#read();
        if (now !== seen) {
          if (now === undefined) break; // stopped cleanly meanwhile
          throw lease.#held(parse(now), `its lease moved while this one watched it for ${watchMs / 1000} s`);
        }
      }
      seen = lease.#read();
    }
    const took = seen === undefined ? lease.#s.insert.run(key, lease.#value) : lease.#s.update.run(lease.#value, key, seen);
    if (took.changes !== 1) throw lease.#held(parse(lease.#read()), "it took the lease at the same moment");
    return lease;
  }

  /** Something to write at the next commit: a beat is due, or the row goes (release()). The journal commits for it even when idle. */
  due(now = performance.now()): boolean {
    if (this.#released) return !this.#dropped;
    return now - this.#lastBeat >= BEAT_MS;
  }

  /**
   * Inside the open transaction, before its COMMIT: advances the counter, or after release()
   * deletes the row. Either only while the row is still this holder's; otherwise throws (exit 78),
   * and the transaction, with whatever it held, is not committed.
   */
  write(): void {
    if (this.#dropped) return;
    this.#lastBeat = performance.now();
    const next: Holder = { ...this.#holder, beat: this.#holder.beat + 1 };
    const value = JSON.stringify(next);
    const r = this.#released ? this.#s.delete.run(this.#key, this.#value) : this.#s.update.run(value, this.#key, this.#value);
    if (r.changes !== 1) {
      throw new KexoError(
        "lease_lost",
        `another kexo instance (${describe(parse(this.#read()))}) took over --client-id ${this.#clientId} on the shared journal ${this.#where}, ` +
          `having seen this one idle for ${WATCH_MS / 1000} s; this one stops with its open group unacknowledged (a restart finds out whether the other is still running). ${DISTINCT_IDS}`,
        // A stall, most likely, with a replacement started meanwhile: a restart either takes the
        // row back (the other is gone) or refuses with client_id_in_use (78).
        { exitCode: ExitCode.transient },
      );
    }
    if (this.#released) {
      this.#dropped = true;
      return;
    }
    this.#holder = next;
    this.#value = value;
  }

  /** A clean stop: no more beats; the next commit deletes the row (write()). */
  release(): void {
    this.#released = true;
  }

  /** The row's value now, whoever holds it. */
  #read(): string | undefined {
    return (this.#s.read.get(this.#key) as { value: string } | undefined)?.value;
  }

  #held(other: Holder | undefined, why: string): KexoError {
    return new KexoError(
      "client_id_in_use",
      `another kexo instance (${describe(other)}) runs with --client-id ${this.#clientId} on the shared journal ${this.#where}: ${why}. ${DISTINCT_IDS}`,
      { exitCode: ExitCode.config },
    );
  }
}

/** Every write of the row is a compare-and-set on the value last seen. */
function statements(conn: SqlConnection) {
  return {
    read: conn.prepare("SELECT value FROM kexo_meta WHERE key = ?"),
    insert: conn.prepare("INSERT INTO kexo_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING"),
    update: conn.prepare("UPDATE kexo_meta SET value = ? WHERE key = ? AND value = ?"),
    delete: conn.prepare("DELETE FROM kexo_meta WHERE key = ? AND value = ?"),
  };
}

function describe(h: Holder | undefined): string {
  return h ? `host ${h.host}, pid ${h.pid}` : "unknown";
}
