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
  /** Running attempts (message.started's object) → when they started. */
  attempts: Map<Attempt, number>;
}

export class Liveness {
  readonly options: LivenessOptions;
  #now: () => number;
  #handlers = new Map<string, HandlerState>();
  #lastName: string | undefined;
  #lastState: HandlerState | undefined;
  #off: (() => void)[];

  constructor(bus: EventBus, options: Partial<LivenessOptions> = {}, now: () => number = Date.now) {
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
        active(e.handler);
        this.#state(e.handler).attempts.set(e, now());
      }),
      bus.on("message.finished", (e) => {
        active(e.handler);
        this.#state(e.handler).attempts.delete(e);
      }),
    ];
  }

  /** Handlers whose loop or handler is stuck past its TTL (empty: alive). */
  stalls(): Finding[] {
    const now = this.#now();
    const out: Finding[] = [];
    for (const [handler, s] of this.#handlers) {
      for (const [{ id }, since] of s.attempts) {
        if (now - since > this.options.handlerTtlMs) {
          out.push({ handler, reason: `handler ${handler}: message ${id} has been in handle() for ${now - since} ms, past the handler TTL of ${this.options.handlerTtlMs} ms` });
          break;
        }
      }
      if (s.joined && s.attempts.size === 0 && now - s.lastActivity > this.options.pollTtlMs) {
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
    for (const off of this.#off) off();
  }

  #state(handler: string): HandlerState {
    // Called three times per message, nearly always for the same handler.
    if (this.#lastName === handler) return this.#lastState!;
    let s = this.#handlers.get(handler);
    if (!s) {
      const t = this.#now();
      this.#handlers.set(handler, (s = { joined: false, lastActivity: t, lastContact: t, attempts: new Map() }));
    }
    this.#lastName = handler;
    this.#lastState = s;
    return s;
  }
}
