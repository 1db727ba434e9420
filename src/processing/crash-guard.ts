// After an unclean stop (SIGKILL, out of memory, a native crash, process.exit() in a handler), a
// message that kills the process would kill it again at every start and hold its partition up for
// good. The guard makes such a message end up dead-lettered, without blaming any other.
//
// - Tracked: the first TRACKED_PER_PARTITION messages per partition that reach their handler
//   journal each attempt as failed before it starts, COMMITted (not fsynced: a dead process's writes
//   stay in the page cache), and put the count right when it ends. The completions of the messages
//   before them are in that COMMIT too. So if the process dies again, the next start knows which
//   messages were running: those whose count is still there.
// - Alone: a message whose delivery had failed attempts journaled at an unclean start runs with no
//   other guarded attempt beside it, and its attempt is also counted as not survived (deaths) until
//   it ends. Only such deaths, where nothing else ran, can dead-letter it (executor).
// - Every other message takes the shared side of the same lock: it never runs beside one alone.
// Each unclean run commits the tracked messages' progress one by one, so a run that dies before
// its tracked budget reaches the killer still starts the next one closer to it.
import { PerPartition } from "../kafka/per-partition.ts";

/** How a message's attempts run under the guard. */
export type Care = "alone" | "tracked" | "shared";

interface Waiter {
  alone: boolean;
  grant(): void;
}

export class CrashGuard {
  static readonly TRACKED_PER_PARTITION = 1000;
  #tracked = new PerPartition<{ n: number }>();
  /** Attempts running on the shared side. */
  #running = 0;
  /** An attempt runs alone. */
  #alone = false;
  #waiting: Waiter[] = [];

  /**
   * Call once per message that reaches its handler. `kept`: the journal held failed attempts of
   * this delivery when it was first delivered to this process.
   */
  care(handler: string, topic: string, partition: number, kept: boolean): Care {
    if (kept) return "alone";
    const t = this.#tracked.get(handler, topic, partition) ?? this.#tracked.add(handler, topic, partition, { n: 0 });
    if (t.n >= CrashGuard.TRACKED_PER_PARTITION) return "shared";
    t.n++;
    return "tracked";
  }

  /**
   * Resolves with the release once the attempt may run (alone: when nothing else guarded runs;
   * shared: when nothing runs alone, first come first served), or undefined when `signal` aborted first.
   */
  enter(alone: boolean, signal: AbortSignal): Promise<(() => void) | undefined> {
    return new Promise((resolve) => {
      if (signal.aborted) return resolve(undefined);
      let released = false;
      const release = () => {
        if (released) return;
        released = true;
        if (alone) this.#alone = false;
        else this.#running--;
        this.#pump();
      };
      const waiter: Waiter = {
        alone,
        grant: () => {
          signal.removeEventListener("abort", onAbort);
          resolve(release);
        },
      };
      const onAbort = () => {
        const i = this.#waiting.indexOf(waiter);
        if (i < 0) return;
        this.#waiting.splice(i, 1);
        resolve(undefined);
        this.#pump();
      };
      signal.addEventListener("abort", onAbort, { once: true });
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
