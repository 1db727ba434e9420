// What a message waiting for its next try remembers while its partition lets go of the fetch.
// A partition pauses instead of sleeping inside its batch (kafkajs fetches the next round only when
// every batch of the last one returned), so the message is fetched anew and picks up here.
//
// In memory: the journal keeps the count too (kexo_retries), so that after a restart the next
// run of the message goes on from it (see executeOnce).
import type { DeadLetterInfo } from "./dead-letter.ts";

/** Why the handler gave up; the rest of the dead letter's headers come from the message. */
export interface PendingDeadLetter extends Pick<DeadLetterInfo, "reason" | "error" | "errorType" | "stack" | "attempts" | "failedAt"> {
  id: string;
  /** Dead-letter writes tried so far. */
  tries: number;
  /** How much the dead letter was cut after the broker refused it as too large (smallerDeadLetter's step). */
  smaller?: number;
  /** The journal holds it (kexo_retries.dead_letter): a restart writes it without running the handler. */
  journaled?: boolean;
  /** A write not acknowledged when the partition let go: the next run waits for it, not a new one. */
  writing?: Promise<void>;
}

export interface Pending {
  /** The attempt the next run is. */
  attempt: number;
  /** Not to be run again before this time (ms since epoch). */
  notBefore: number;
  /** Set once the handler gave up and only the dead-letter write is left to do. */
  deadLetter?: PendingDeadLetter;
  /** The /readyz reason this message set, cleared once it is done. */
  blocked?: boolean;
  /**
   * Waiting the rest of a journaled backoff with no attempt run here yet, after an unclean start:
   * its next run still runs alone (see crash-guard.ts).
   */
  alone?: boolean;
}

const at = (topic: string, partition: number, offset: string) => `${topic}/${partition}@${offset}`;

export class RetryBook {
  #pending = new Map<string, Pending>();

  get(topic: string, partition: number, offset: string): Pending | undefined {
    // Asked for every message; almost always empty, so no key string is built then.
    if (this.#pending.size === 0) return undefined;
    return this.#pending.get(at(topic, partition, offset));
  }

  set(topic: string, partition: number, offset: string, p: Pending): void {
    this.#pending.set(at(topic, partition, offset), p);
  }

  delete(topic: string, partition: number, offset: string): void {
    this.#pending.delete(at(topic, partition, offset));
  }

  /** Forgets a partition's entries (it went to another member, which starts the count anew). */
  forgetPartition(topic: string, partition: number): void {
    const prefix = `${topic}/${partition}@`;
    for (const k of this.#pending.keys()) if (k.startsWith(prefix)) this.#pending.delete(k);
  }

  get size(): number {
    return this.#pending.size;
  }
}
