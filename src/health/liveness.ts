// Liveness and broker reachability from time-to-live, fed only by the event bus.
//
// - Handler TTL: one attempt of `handle` running longer than handlerTtlMs is stuck.
// - Poll TTL: a joined consumer with no handler attempt running must show activity (a fetch, a
//   batch, a handled message or a retry) at least every pollTtlMs, or its loop is stalled. Retry
//   backoff sleeps are bounded by retry.maxDelayMs, so pollTtlMs must exceed it (default 60 s
//   against a default maxDelayMs of 30 s).
// - Broker grace: a joined consumer with no answer from the broker (fetch, heartbeat, commit) for
//   brokerGraceMs is not ready; shorter outages don't flap readiness.
import type { Attempt, EventBus } from "../events.ts";

export interface LivenessOptions {
  pollTtlMs: number;
  handlerTtlMs: number;
  brokerGraceMs: number;
}

export const DEFAULT_LIVENESS: LivenessOptions = { pollTtlMs: 60_000, handlerTtlMs: 300_000, brokerGraceMs: 15_000 };

export interface Finding {
  handler: string;
  reason: string;
}

interface HandlerState {
  joined: boolean;
  lastActivity: number;
  lastContact: number;
  /**
   * Running attempts (message.started's object) and when each started, in parallel arrays. An
   * attempt keeps its index in `slot`, so finishing one is a swap with the last: no map keyed by
   * a new object per message (≈ 0.4 µs a message with a Map, bench/stages.ts noop).
   */
  running: Attempt[];
  since: number[];
}

/** Buses with a Liveness: attempts carry one `slot`, so one Liveness per bus. */
const watched = new WeakSet<EventBus>();

export class Liveness {
  readonly options: LivenessOptions;
  #now: () => number;
  #handlers = new Map<string, HandlerState>();
  #lastName: string | undefined;
  #lastState: HandlerState | undefined;
  #off: (() => void)[];
  #bus: EventBus;

  constructor(bus: EventBus, options: Partial<LivenessOptions> = {}, now: () => number = Date.now) {
    if (watched.has(bus)) throw new Error("a Liveness already listens on this event bus; attempts carry one slot, so one per bus");
    watched.add(bus);
    this.#bus = bus;
    this.options = { ...DEFAULT_LIVENESS, ...options };
    this.#now = now;
    const active = (h: string) => (this.#state(h).lastActivity = now());
    const contact = (h: string) => {
      const s = this.#state(h);
      s.lastActivity = s.lastContact = now();
    };
    const leave = (h: string) => (this.#state(h).joined = false);
    this.#off = [
      bus.on("consumer.joined", (e) => {
        contact(e.handler);
        this.#state(e.handler).joined = true;
      }),
      bus.on("consumer.rebalancing", (e) => leave(e.handler)),
      bus.on("consumer.crashed", (e) => leave(e.handler)),
      bus.on("consumer.stopped", (e) => leave(e.handler)),
      bus.on("consumer.polled", (e) => contact(e.handler)),
      bus.on("consumer.fetched", (e) => contact(e.handler)),
      bus.on("consumer.heartbeat", (e) => void (this.#state(e.handler).lastContact = now())),
      bus.on("consumer.committed", (e) => void (this.#state(e.handler).lastContact = now())),
      bus.on("message.handled", (e) => active(e.handler)),
      bus.on("message.started", (e) => {
        const s = this.#state(e.handler);
        const t = now();
        s.lastActivity = t;
        e.slot = s.running.length;
        s.running.push(e);
        s.since.push(t);
      }),
      bus.on("message.finished", (e) => {
        const s = this.#state(e.handler);
        s.lastActivity = now();
        const i = e.slot;
        if (i === undefined || s.running[i] !== e) return;
        const last = s.running.length - 1;
        if (i !== last) {
          const moved = s.running[last]!;
          s.running[i] = moved;
          s.since[i] = s.since[last]!;
          moved.slot = i;
        }
        s.running.pop();
        s.since.pop();
        e.slot = -1;
      }),
    ];
  }

  /** Handlers whose loop or handler is stuck past its TTL (empty: alive). */
  stalls(): Finding[] {
    const now = this.#now();
    const out: Finding[] = [];
    for (const [handler, s] of this.#handlers) {
      for (let i = 0; i < s.running.length; i++) {
        const since = s.since[i]!;
        const id = s.running[i]!.id;
        if (now - since > this.options.handlerTtlMs) {
          out.push({ handler, reason: `handler ${handler}: message ${id} has been in handle() for ${now - since} ms, past the handler TTL of ${this.options.handlerTtlMs} ms` });
          break;
        }
      }
      if (s.joined && s.running.length === 0 && now - s.lastActivity > this.options.pollTtlMs) {
        out.push({ handler, reason: `handler ${handler}: consumer loop quiet for ${now - s.lastActivity} ms, past the poll TTL of ${this.options.pollTtlMs} ms` });
      }
    }
    return out;
  }

  /** Joined handlers that have not heard from the broker for longer than the grace. */
  unreachable(): Finding[] {
    const now = this.#now();
    const out: Finding[] = [];
    for (const [handler, s] of this.#handlers) {
      if (s.joined && now - s.lastContact > this.options.brokerGraceMs) {
        out.push({ handler, reason: `handler ${handler}: no answer from the broker for ${now - s.lastContact} ms (grace ${this.options.brokerGraceMs} ms)` });
      }
    }
    return out;
  }

  close(): void {
    watched.delete(this.#bus);
    for (const off of this.#off) off();
  }

  #state(handler: string): HandlerState {
    // Called three times per message, nearly always for the same handler.
    if (this.#lastName === handler) return this.#lastState!;
    let s = this.#handlers.get(handler);
    if (!s) {
      const t = this.#now();
      this.#handlers.set(handler, (s = { joined: false, lastActivity: t, lastContact: t, running: [], since: [] }));
    }
    this.#lastName = handler;
    this.#lastState = s;
    return s;
  }
}
