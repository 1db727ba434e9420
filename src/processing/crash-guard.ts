// After an unclean stop (SIGKILL, out of memory, a native crash, process.exit() in a handler), a
// message that kills the process would kill it again at every start and hold its partition up for
// good. The guard makes such a message end up dead-lettered, without blaming any other.
//
// - Tracked: the first TRACKED_PER_PARTITION messages per partition that reach their handler
//   journal each attempt as failed before it starts, COMMITted (not fsynced: a dead process's writes
//   stay in the page cache), and put the count right when it ends (Journal.claimAttempt). The
//   completions of the messages before them are in that COMMIT too. So if the process dies again,
//   the next start knows which messages were running: those whose count is still there.
// - Alone: a delivery that had failed attempts journaled at an unclean start runs with no other
//   message of any handler beside it, from before its decode until its outcome is COMMITted, and
//   its attempt is also counted as not survived (deaths) until it ends. Only such deaths can
//   dead-letter a message as ProcessDied (executor), so what merely ran beside a killer never is.
// - Every other message takes the shared side of the same lock, from before its decode to its end.
// - The drain (SIGTERM) ends every wait for the lock at once: the waiting messages end unfinished,
//   as if never fetched, and the drain waits only for the handlers that run (executor.ts, `drain`).
// Each unclean run commits the tracked messages' progress one by one, so a run that dies before
// its tracked budget reaches the killer still starts the next one closer to it.
// Not covered: a kill scheduled by a handler to happen after it returned (it lands on whatever
// runs then), and a message that kills the process before its handler (in decode or key()).
import { PerPartition } from "../kafka/per-partition.ts";

interface Waiter {
  alone: boolean;
  grant(): void;
}

export class CrashGuard {
  static readonly TRACKED_PER_PARTITION = 1000;
  #tracked = new PerPartition<{ n: number }>();
  /** Holders of the shared side. */
  #running = 0;
  /** An alone holder runs. */
  #alone = false;
  #waiting: Waiter[] = [];
  readonly #leaveShared = () => {
    this.#running--;
    this.#pump();
  };

  /** Whether this message, about to run its handler, is tracked (call once per such message). */
  track(handler: string, topic: string, partition: number): boolean {
    const t = this.#tracked.get(handler, topic, partition) ?? this.#tracked.add(handler, topic, partition, { n: 0 });
    if (t.n >= CrashGuard.TRACKED_PER_PARTITION) return false;
    t.n++;
    return true;
  }

  /**
   * The release, at once when nothing stands in the way (the common case: shared, nothing alone),
   * else a promise of it: alone waits until no one holds the lock, shared until nothing alone holds
   * or waits before it (first come, first served). Undefined when `signal` or `drain` aborted first
   * (`drain`: the drain began, which ends waits without cutting a running handler; see executor.ts).
   */
  enter(alone: boolean, signal: AbortSignal, drain?: AbortSignal): (() => void) | Promise<(() => void) | undefined> {
    if (!alone && !this.#alone && this.#waiting.length === 0) {
      this.#running++;
      return this.#leaveShared;
    }
    return new Promise((resolve) => {
      if (signal.aborted || drain?.aborted) return resolve(undefined);
      let released = false;
      const release = () => {
        if (released) return;
        released = true;
        if (alone) {
          this.#alone = false;
          this.#pump();
        } else this.#leaveShared();
      };
      const unlisten = () => {
        signal.removeEventListener("abort", onAbort);
        drain?.removeEventListener("abort", onAbort);
      };
      const waiter: Waiter = {
        alone,
        grant: () => {
          unlisten();
          resolve(release);
        },
      };
      const onAbort = () => {
        unlisten();
        const i = this.#waiting.indexOf(waiter);
        if (i < 0) return;
        this.#waiting.splice(i, 1);
        resolve(undefined);
        this.#pump();
      };
      signal.addEventListener("abort", onAbort, { once: true });
      drain?.addEventListener("abort", onAbort, { once: true });
      this.#waiting.push(waiter);
      this.#pump();
    });
  }

  #pump(): void {
    while (this.#waiting.length > 0 && !this.#alone) {
      const next = this.#waiting[0]!;
      if (next.alone) {
        if (this.#running > 0) return;
        this.#alone = true;
      } else this.#running++;
      this.#waiting.shift();
      next.grant();
    }
  }
}
