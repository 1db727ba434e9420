// Makes the journal's COMMITs durable off the JS thread.
//
// The journal runs in WAL mode with synchronous = NORMAL: a COMMIT appends its frames to the WAL
// file without an fsync. The commit then survives a crash of the process, because the kernel
// holds the pages, but not a power loss. So the journal acknowledges a COMMIT only after this
// class has fsynced the WAL file. Acknowledging means hooks' committed(), which moves Kafka
// offsets, durable() waiters and journal.committed. The fsync runs on the thread pool while the
// JS thread goes on with the next transaction; with synchronous = FULL it ran inside COMMIT, on
// the JS thread.
//
// Invariants:
// - An acknowledgement registered with after() runs only once an fsync that started after the
//   call has finished. fsync flushes the file's pages whichever descriptor wrote them, so that
//   fsync covers every COMMIT made before after() was called.
// - Acknowledgements run in the order they were registered. One fsync covers every one that was
//   waiting when it started, so COMMITs that land while an fsync runs share the next one.
// - A failed fsync fails every acknowledgement waiting now and every later one. A failed fsync is
//   never retried: after a failure, Linux may report success on pages it already dropped.
// - The descriptor is opened at the first sync and kept: SQLite removes or replaces the WAL file
//   only when the last connection to the database closes, and the journal's connection stays open
//   until close().
import { closeSync, fsync, fsyncSync, openSync } from "node:fs";

interface Ack {
  run(): void;
  fail(err: Error): void;
}

export class WalSync {
  readonly path: string;
  #fd: number | undefined;
  /** Waiting for the next fsync. */
  #next: Ack[] = [];
  #running = false;
  #failed: Error | undefined;
  #onError: (err: unknown) => void = (err) => {
    throw err;
  };

  constructor(walPath: string) {
    this.path = walPath;
  }

  /** Where an acknowledgement that threw goes (the others still run). */
  onError(fn: (err: unknown) => void): void {
    this.#onError = fn;
  }

  /** An fsync is running or waiting to. */
  get busy(): boolean {
    return this.#running || this.#next.length > 0;
  }

  /** Runs `ack.run` once every COMMIT made before this call is on disk; `ack.fail` if that fails. */
  after(ack: Ack): void {
    if (this.#failed) return ack.fail(this.#failed);
    this.#next.push(ack);
    if (!this.#running) this.#start();
  }

  /** Syncs on the calling thread, for writes outside the group commit (the CLI's). */
  syncNow(): void {
    if (this.#failed) throw this.#failed;
    fsyncSync(this.#open());
  }

  close(): void {
    const fd = this.#fd;
    this.#fd = undefined;
    try {
      if (fd !== undefined) closeSync(fd);
    } catch {
      // Only a read-only descriptor for fsync: nothing is lost if closing it fails.
    }
  }

  #open(): number {
    return (this.#fd ??= openSync(this.path, "r"));
  }

  #start(): void {
    const batch = this.#next;
    this.#next = [];
    this.#running = true;
    let fd: number;
    try {
      fd = this.#open();
    } catch (err) {
      return this.#finish(batch, err);
    }
    fsync(fd, (err) => this.#finish(batch, err));
  }

  #finish(batch: Ack[], err: unknown): void {
    this.#running = false;
    if (err && !this.#failed) {
      const cause = err as NodeJS.ErrnoException;
      this.#failed = new Error(`fsync of ${this.path} failed: ${cause.code ?? cause.message}`, { cause });
    }
    const failed = this.#failed;
    for (const ack of failed ? [...batch, ...this.#next.splice(0)] : batch) {
      try {
        if (failed) ack.fail(failed);
        else ack.run();
      } catch (e) {
        this.#onError(e);
      }
    }
    if (this.#next.length > 0) this.#start();
  }
}
