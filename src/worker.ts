// The worker: opens the journal, runs handler setup, starts one consumer per handler and the HTTP
// endpoint, and drains them on stop. It never exits the process; main.ts does.
import { errorMessage, ExitCode, KexoError } from "./errors.ts";
import { EventBus } from "./events.ts";
import type { ResolvedHandler } from "./handlers/resolve.ts";
import type { Hono } from "hono";
import { createApp } from "./http/app.ts";
import { type HttpServer, serve } from "./http/serve.ts";
import { createKafka, type KafkaSettings } from "./kafka/client.ts";
import { type ConsumerOptions, HandlerConsumer } from "./kafka/consumer.ts";
import { PROGRESS_TOPIC, ProgressLog } from "./kafka/progress-log.ts";
import { isMissingTopic } from "./kafka/produce-errors.ts";
import { Publisher } from "./kafka/publisher.ts";
import { type EnsureTopics, TopicCreator } from "./kafka/topics.ts";
import { CrashGuard } from "./processing/crash-guard.ts";
import { Journal } from "./journal/journal.ts";
import { type Logger, redactUrl } from "./log.ts";
import { isRemoteUrl } from "./journal/remote.ts";
import { Liveness, type LivenessOptions } from "./health/liveness.ts";
import { createMetrics, type Metrics } from "./metrics/metrics.ts";
import { startGcPacer } from "./memory/gc-pacer.ts";
import { OutboxRelay } from "./outbox/relay.ts";

export interface WorkerOptions {
  handlers: ResolvedHandler[];
  kafka: KafkaSettings;
  db: string;
  http?: { host: string; port: number };
  shutdownTimeoutMs: number;
  log: Logger;
  consumer?: Partial<ConsumerOptions>;
  /**
   * Creates missing topics kexo writes to (dead letters, outbox, __kexo_progress): the development
   * broker's mock API. Absent: CreateTopics on the cluster (kafka/topics.ts).
   */
  ensureTopics?: EnsureTopics;
  bus?: EventBus;
  /** Poll and handler time-to-live, broker grace (see health/liveness.ts). */
  liveness?: Partial<LivenessOptions>;
  /** Aborted by a signal before the start finished: the start stops where it is and throws start_aborted. */
  abort?: AbortSignal;
}

/**
 * A libSQL server that does not answer at the start (a sidecar started beside it, a server
 * restarting) is asked again, with growing waits, for this long; then exit 69.
 */
const JOURNAL_START_RETRY_MS = 15_000;

/** Journal.open, with bounded retries while a libSQL server cannot be reached. */
async function openJournal(opts: WorkerOptions, bus: EventBus): Promise<Journal> {
  const deadline = Date.now() + JOURNAL_START_RETRY_MS;
  for (let wait = 250, tries = 1; ; wait = Math.min(wait * 2, 2000), tries++) {
    try {
      return Journal.open({ url: opts.db, bus, worker: true, instance: opts.kafka.clientId });
    } catch (err) {
      // The open blocks the thread (a remote one waits on its connection thread): signals that
      // came meanwhile are handled first, so that a stop asked during it is seen below.
      await new Promise((r) => setImmediate(r));
      // Only a server that did not answer; one that refused (its auth token, the client id's
      // lease) answers the same the next time.
      const unreachable = isRemoteUrl(opts.db) && err instanceof KexoError && err.code === "journal_unavailable" &&
        !/\b40[13]\b|unauthori[sz]ed|forbidden/i.test(err.message);
      if (!unreachable || Date.now() + wait > deadline || opts.abort?.aborted) throw err;
      opts.log.warn("journal server unreachable at start; retrying", { db: redactUrl(opts.db), try: tries, nextTryInMs: wait, error: err.message });
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(t);
          opts.abort?.removeEventListener("abort", done);
          resolve();
        };
        const t = setTimeout(done, wait);
        opts.abort?.addEventListener("abort", done, { once: true });
      });
      if (opts.abort?.aborted) throw err;
    }
  }
}

/** A setup() still running after this long is logged, then again at each multiple. */
const SETUP_WARN_MS = 10_000;

/** Event-loop liveness: a tick that stops for this long means the process is stalled. */
const LOOP_TTL_MS = 10_000;

export class Worker {
  readonly bus: EventBus;
  readonly journal: Journal;
  readonly consumers: HandlerConsumer[] = [];
  readonly metrics: Metrics;
  #liveness: Liveness;
  /** Resolves with the error that makes the worker unable to go on (exit 75 / 70). */
  readonly failed: Promise<KexoError>;
  #opts: WorkerOptions;
  #http: HttpServer | undefined;
  #app: Hono | undefined;
  #publisher: Publisher | undefined;
  #progressLog: ProgressLog | undefined;
  #relay: OutboxRelay | undefined;
  #draining = false;
  #lastTick = Date.now();
  #ticker: ReturnType<typeof setInterval>;
  #fail!: (err: KexoError) => void;
  #lastError: string | undefined;
  #stopGcPacer: () => void;

  private constructor(opts: WorkerOptions, journal: Journal, bus: EventBus) {
    this.#opts = opts;
    this.journal = journal;
    this.bus = bus;
    this.metrics = createMetrics(bus);
    this.#liveness = new Liveness(bus, opts.liveness);
    this.failed = new Promise((resolve) => (this.#fail = resolve));
    this.#ticker = setInterval(() => (this.#lastTick = Date.now()), 1000);
    this.#stopGcPacer = startGcPacer(bus);
    bus.on("worker.error", ({ error }) => {
      this.#lastError = errorMessage(error);
      if (error instanceof KexoError && error.exitCode !== ExitCode.bug) this.#fail(error);
      else this.#fail(new KexoError("worker_failed", `worker failed: ${this.#lastError}`, { exitCode: ExitCode.transient, cause: error }));
    });
  }

  /** The HTTP endpoints, also without --http (tests call `app.request()`). */
  get app(): Hono {
    return this.#app!;
  }

  get address(): string | undefined {
    return this.#http?.address;
  }

  static async start(opts: WorkerOptions): Promise<Worker> {
    const bus = opts.bus ?? new EventBus();
    const journal = await openJournal(opts, bus);
    if (journal.uncleanStart) {
      opts.log.warn("kexo did not stop cleanly last time (killed or crashed): the first messages of each partition journal each attempt " +
        "before it starts, and messages that were running then run alone, so that one the process does not survive is dead-lettered " +
        "after retry.attempts tries", { db: journal.path });
    }
    const worker = new Worker(opts, journal, bus);
    try {
      await worker.#setupHandlers();
      worker.#startHttp();
      await worker.#untilAborted(worker.#startConsumers(), "while joining the consumer groups");
    } catch (err) {
      await worker.#abandon();
      throw err;
    }
    return worker;
  }

  /** `work`, unless a signal comes first (WorkerOptions.abort): then start_aborted, exit 0. */
  #untilAborted<T>(work: Promise<T>, when: string): Promise<T> {
    const abort = this.#opts.abort;
    if (!abort) return work;
    return new Promise<T>((resolve, reject) => {
      const stop = () => reject(new KexoError("start_aborted", `stopped by a signal ${when}`, { exitCode: ExitCode.ok }));
      if (abort.aborted) return stop();
      abort.addEventListener("abort", stop, { once: true });
      work.then(resolve, reject).finally(() => abort.removeEventListener("abort", stop));
    });
  }

  /**
   * A start that failed or was stopped leaves the journal as it found it: clean when it was (the
   * next start need not guard against a crash that never happened), else still marked unclean
   * for the crash guard. Consumers that started stop as in a drain.
   */
  async #abandon(): Promise<void> {
    this.#draining = true;
    await Promise.all(this.consumers.map((c) => c.stop(this.#opts.shutdownTimeoutMs).catch(() => false)));
    if (!this.journal.uncleanStart) this.journal.markStopped();
    await this.#progressLog?.stop().catch(() => {});
    await this.#close();
  }

  async #setupHandlers(): Promise<void> {
    for (const h of this.#opts.handlers) {
      if (!h.def.setup) continue;
      const started = Date.now();
      const slow = setInterval(() => {
        this.#opts.log.warn("handler setup() still running", { handler: h.name, file: h.file, seconds: Math.round((Date.now() - started) / 1000) });
      }, SETUP_WARN_MS);
      try {
        await this.#untilAborted(Promise.resolve(h.def.setup(this.journal.handlerDb)), `while ${h.file}'s setup() ran`);
      } catch (err) {
        if (err instanceof KexoError && err.code === "start_aborted") throw err;
        throw new KexoError("handler_setup_failed", `${h.file}: setup: ${errorMessage(err)}; fix the handler's setup(db)`, {
          exitCode: ExitCode.config,
          cause: err,
        });
      } finally {
        clearInterval(slow);
      }
    }
    this.journal.endSetup();
  }

  #startHttp(): void {
    const http = this.#opts.http;
    const app = (this.#app = createApp({
      live: () => {
        const quiet = Date.now() - this.#lastTick;
        if (quiet > LOOP_TTL_MS) return { ok: false, reason: `event loop stalled for ${quiet} ms` };
        // A consumer blocked on a failing dead-letter write is waiting on the broker, not stuck:
        // readiness reports it; restarting the process would not help.
        const blocked = new Set(this.consumers.filter((c) => c.status().blocked).map((c) => c.handler.name));
        const stalls = this.#liveness.stalls().filter((s) => !blocked.has(s.handler));
        return stalls.length > 0 ? { ok: false, reason: stalls.map((s) => s.reason).join("; ") } : { ok: true };
      },
      ready: () => {
        const reasons: string[] = [];
        if (this.#draining) reasons.push("draining");
        for (const c of this.consumers) {
          const s = c.status();
          if (s.blocked) reasons.push(`${s.handler}: blocked: ${s.blocked}`);
          else if (!s.joined) reasons.push(`${s.handler}: not joined to group ${s.group}`);
        }
        if (this.consumers.length < this.#opts.handlers.length) reasons.push("starting");
        if (!this.#draining) reasons.push(...this.#liveness.unreachable().map((f) => f.reason));
        return { ok: reasons.length === 0, reasons };
      },
      status: () => this.#status(),
      metrics: () => this.metrics.render(),
    }));
    if (!http) return;
    try {
      this.#http = serve(app, http.host, http.port);
    } catch (err) {
      throw new KexoError("http_unavailable", `cannot listen on ${http.host}:${http.port}: ${(err as Error).message.replace(/[.?!]?\s*$/, "")}; pick another --http address`, {
        exitCode: ExitCode.unavailable,
        cause: err,
      });
    }
    this.#opts.log.info("http listening", { address: this.#http.address });
  }

  #status() {
    const lags = new Map(this.metrics.lag.snapshot().map((l) => [`${l.group}\0${l.topic}\0${l.partition}`, l.lag.toString()]));
    const handlers = this.consumers.map((c) => {
      const s = c.status();
      return { ...s, partitions: s.partitions.map((p) => ({ ...p, lag: lags.get(`${s.group}\0${p.topic}\0${p.partition}`) })) };
    });
    return { handlers, inflight: handlers.reduce((n, h) => n + h.inflight, 0), lastError: this.#lastError };
  }

  async #startConsumers(): Promise<void> {
    const { log } = this.#opts;
    const kafka = createKafka(this.#opts.kafka, log);
    // Its own client, with few retries: a broker that cannot be reached fails the start below, with
    // kexo's retries, not twice.
    const ensureTopics = this.#opts.ensureTopics ??
      new TopicCreator(createKafka(this.#opts.kafka, log, { initialRetryTime: 100, maxRetryTime: 1000, retries: 2 }), log, [PROGRESS_TOPIC]).ensure;
    this.#publisher = new Publisher(kafka, ensureTopics);
    const dlqTopics = new Set<string>();
    for (const h of this.#opts.handlers) {
      for (const t of h.topics) {
        if (typeof t !== "string") continue;
        const d = h.deadLetterTopic(t);
        if (d) dlqTopics.add(d);
      }
    }
    // Failures are logged there; a dead letter that finds its topic still missing says so again.
    const missing = await ensureTopics([PROGRESS_TOPIC, ...dlqTopics]);
    // Publishes what a crash left in the outbox at once, then each journal commit's rows.
    this.#relay = new OutboxRelay({
      kafka, journal: this.journal, bus: this.bus, log, ensureTopics,
      exceptHandlers: this.#opts.handlers.filter((h) => h.kafkaTransactions).map((h) => h.name),
    });
    this.#relay.start();
    const progressLog = (this.#progressLog = new ProgressLog(kafka, log, this.#opts.kafka.clientId));
    const unavailable = (what: string, err: unknown) =>
      new KexoError(
        "broker_unavailable",
        `${what} on ${this.#opts.kafka.brokers.join(",")}: ${(err as Error).message}; check --brokers and that the broker is up`,
        { exitCode: ExitCode.unavailable, cause: err },
      );
    const progressMissing = (err: unknown) => {
      const why = missing.get(PROGRESS_TOPIC);
      return new KexoError(
        "topic_missing",
        `topic ${PROGRESS_TOPIC} does not exist${why ? ` and kexo could not create it (${why})` : " and the broker did not create it"}: ` +
          `create it (1 partition is enough; cleanup.policy=compact), or allow kexo's principal to create topics (CreateTopics), ` +
          `or the broker to (auto.create.topics.enable=true). kexo hands each partition's progress to its next owner through it; ${errorMessage(err)}`,
        { exitCode: ExitCode.unavailable, cause: err },
      );
    };
    const starts: Promise<void>[] = [
      progressLog.start().catch((err: unknown) =>
        Promise.reject(isMissingTopic(err) ? progressMissing(err) : unavailable(`cannot read ${PROGRESS_TOPIC}`, err))
      ),
    ];
    // One for all handlers: a message that kills the process kills every handler's attempts.
    const guard = this.journal.uncleanStart ? new CrashGuard() : undefined;
    for (const h of this.#opts.handlers) {
      const consumer = new HandlerConsumer(
        h,
        { kafka, journal: this.journal, bus: this.bus, log, dlq: this.#publisher, progressLog, clientId: this.#opts.kafka.clientId, guard },
        this.#opts.consumer,
      );
      this.consumers.push(consumer);
      starts.push(consumer.start().catch((err: unknown) => Promise.reject(unavailable(`handler ${h.name}: cannot join group ${h.groupId}`, err))));
    }
    await Promise.all(starts);
  }

  /** Drains: returns true when every in-flight message finished within the shutdown timeout. */
  async stop(): Promise<boolean> {
    if (this.#draining) return false;
    this.#draining = true;
    this.#opts.log.info("draining", { timeoutMs: this.#opts.shutdownTimeoutMs });
    const results = await Promise.all(this.consumers.map((c) => c.stop(this.#opts.shutdownTimeoutMs)));
    // A start that failed leaves the journal as it found it (#abandon).
    this.journal.markStopped();
    await this.#progressLog?.stop();
    await this.#close();
    return results.every(Boolean);
  }

  async #close(): Promise<void> {
    this.#draining = true;
    clearInterval(this.#ticker);
    this.#stopGcPacer();
    await this.#relay?.stop(Math.min(5000, this.#opts.shutdownTimeoutMs));
    this.#liveness.close();
    this.metrics.close();
    await this.#publisher?.close();
    await this.#http?.close().catch(() => {});
    await this.journal.close();
  }
}
