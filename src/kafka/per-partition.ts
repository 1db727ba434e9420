// A table of per-partition entries for code that runs once per message.

/**
 * Entries per handler, topic and partition, found without building a key per message: the last
 * handler and topic's partition array is kept (partitions interleave; handler and topic rarely do).
 */
export class PerPartition<T> {
  #byName = new Map<string, T[]>();
  #all: T[] = [];
  #handler: string | undefined;
  #topic: string | undefined;
  #last: T[] | undefined;

  get(handler: string, topic: string, partition: number): T | undefined {
    return this.#parts(handler, topic)[partition];
  }

  /** Only where get() found none. */
  add(handler: string, topic: string, partition: number, entry: T): T {
    this.#parts(handler, topic)[partition] = entry;
    this.#all.push(entry);
    return entry;
  }

  values(): readonly T[] {
    return this.#all;
  }

  #parts(handler: string, topic: string): T[] {
    let parts = this.#last;
    if (parts === undefined || this.#topic !== topic || this.#handler !== handler) {
      const key = `${handler}\0${topic}`;
      parts = this.#byName.get(key);
      if (!parts) this.#byName.set(key, (parts = []));
      this.#handler = handler;
      this.#topic = topic;
      this.#last = parts;
    }
    return parts;
  }

  clear(): void {
    this.#byName.clear();
    this.#all = [];
    this.#last = this.#handler = this.#topic = undefined;
  }
}
