// `kexo run` and `kexo dev`: load config and handlers, start the worker, drain on the first signal.
import { resolveConfig, saslWithoutTls, type Config } from "../config/config.ts";
import { ExitCode, KexoError, UsageError } from "../errors.ts";
import { EventBus } from "../events.ts";
import { bundledHandlers } from "../handlers/bundled.ts";
import { LOAD_TIMEOUT_MS, loadBundledHandlers, loadHandlers } from "../handlers/load.ts";
import { registerKexoModule } from "../handlers/register.ts";
import type { ResolvedHandler } from "../handlers/resolve.ts";
import { createKafka } from "../kafka/client.ts";
import { TopicPattern } from "../kafka/consumer.ts";
import { PROGRESS_TOPIC } from "../kafka/progress-log.ts";
import type { EnsureTopics } from "../kafka/topics.ts";
import type { LivenessOptions } from "../health/liveness.ts";
import { livenessFromEnv, loadTimeoutFromEnv } from "../health/options.ts";
import { createLogger, type Logger, redactUrl } from "../log.ts";
import { attachRegistry } from "../registry/attach.ts";
import { TIMED_OUT, within } from "../timeout.ts";
import { Worker } from "../worker.ts";
import type { Args } from "./args.ts";
import { printJsonError, printLine } from "./output.ts";

/** How long a stop may take past --shutdown-timeout (the journal's last COMMIT, leaving the groups). */
const STOP_GRACE_MS = 10_000;

/** worker.stop() threw (logged): exit 75, as after a crash. */
const STOP_FAILED = Symbol("stop failed");

export interface Lifecycle {
  /** Resolves with the signal's name on the first SIGTERM or SIGINT. */
  signalled: Promise<string>;
}

export async function loadPlan(args: Args, env: Record<string, string | undefined>, needBrokers: boolean) {
  const config = resolveConfig(args.flags, env, { needBrokers });
  registerKexoModule();
  // The compiled binary carries the repository's handlers/; --handlers DIR (or its env/file key)
  // still loads a directory at run time instead.
  const bundled = bundledHandlers();
  const compiledIn = !config.handlersGiven && bundled.length > 0;
  const handlers = compiledIn ? loadBundledHandlers(bundled) : await loadHandlers(config.handlers, loadTimeoutFromEnv(env, LOAD_TIMEOUT_MS));
  await attachRegistry(handlers, config.schemaRegistry);
  return { config, handlers, handlersFrom: compiledIn ? "the binary (compiled in)" : config.handlers };
}

function stringTopics(handlers: ResolvedHandler[]): string[] {
  return [...new Set(handlers.flatMap((h) => h.topics.filter((t): t is string => typeof t === "string")))];
}

export async function runCommand(args: Args, env: Record<string, string | undefined>, life: Lifecycle): Promise<number> {
  const dev = args.command === "dev";
  // A signal while the handler files load (a slow top-level await): nothing started, exit 0.
  const loading = loadPlan(args, env, !dev);
  const plan = await Promise.race([loading, life.signalled.then(() => undefined)]);
  if (!plan) {
    loading.catch(() => {});
    createLogger({ level: "info" }).info("signal received while loading handlers; nothing was started, exiting");
    return ExitCode.ok;
  }
  const { config, handlers } = plan;
  const liveness = livenessFromEnv(env);
  const log = createLogger({ level: config.logLevel });
  // A handler's stray timer or promise that throws would print plain text on stderr, or end the
  // process (Bun exits 1 on an uncaught exception) for a message that is done. Logged as JSON
  // instead; kexo's own records are in the journal, whatever happened around them.
  process.on("uncaughtException", (error) => log.error("uncaught exception (a timer or callback of a handler?); kexo carries on", { error }));
  process.on("unhandledRejection", (error) => log.error("unhandled promise rejection (a promise a handler did not await?); kexo carries on", { error }));
  let stopDev = () => {};
  let ensureTopics: EnsureTopics | undefined;
  if (dev) {
    if (typeof Bun === "undefined") {
      throw new UsageError("kexo dev needs Bun: its development broker loads librdkafka through bun:ffi. Under Deno run `kexo run --brokers host:port`, or use the compiled binary or `bun main.ts dev`");
    }
    const { createMockCluster, mockEnsureTopics } = await import("../dev/mock-cluster.ts");
    const cluster = createMockCluster();
    stopDev = () => cluster.close();
    for (const t of stringTopics(handlers)) cluster.createTopic(t, 4);
    cluster.createTopic(PROGRESS_TOPIC, 1);
    ensureTopics = mockEnsureTopics(cluster, 4);
    config.brokers = cluster.bootstrap.split(",");
    log.info("development broker started", { brokers: cluster.bootstrap, topics: stringTopics(handlers) });
  }
  try {
    return await runWorker({ ...config, liveness }, handlers, log, life, dev ? { ensureTopics, demo: args.flags.demo === true, args } : undefined);
  } finally {
    stopDev();
  }
}

/**
 * kexo dev: partitions of the handlers' groups on which the journal has progress already. The
 * development broker starts empty each time, its offsets from 0 again, so a journal kept from an
 * earlier run (the default kexo.db) takes the new messages below that progress for ones done.
 * Said at the start, not undone: the journal is the user's.
 */
function earlierProgress(worker: Worker, handlers: ResolvedHandler[]): number {
  let partitions = 0;
  for (const h of handlers) for (const next of worker.journal.progress(h.groupId).values()) if (next > 0n) partitions++;
  return partitions;
}

async function runWorker(
  config: Config & { liveness: LivenessOptions },
  handlers: ResolvedHandler[],
  log: Logger,
  life: Lifecycle,
  dev: { ensureTopics?: EnsureTopics; demo: boolean; args: Args } | undefined,
): Promise<number> {
  const bus = new EventBus();
  const exposed = saslWithoutTls(config);
  if (exposed) log.warn(exposed.msg, { mechanism: exposed.mechanism, detail: exposed.detail });
  log.info("starting", {
    handlers: handlers.map((h) => ({ name: h.name, group: h.groupId, topics: h.topics.map(String) })),
    db: redactUrl(config.db),
    schemaRegistry: config.schemaRegistry ? redactUrl(config.schemaRegistry.url) : undefined,
  });
  let signal: string | undefined;
  const abort = new AbortController();
  void life.signalled.then((s) => {
    signal = s;
    abort.abort();
  });
  const started = Worker.start({
    abort: abort.signal,
    handlers,
    kafka: { brokers: config.brokers, clientId: config.clientId, tls: config.tls, tlsFiles: config.tlsFiles, sasl: config.sasl },
    db: config.db,
    http: config.http,
    shutdownTimeoutMs: config.shutdownTimeoutMs,
    log,
    bus,
    ensureTopics: dev?.ensureTopics,
    liveness: config.liveness,
  });
  // A signal before the group is joined stops the start where it is (setup(), joining): exit 0.
  let worker: Worker;
  try {
    worker = await started;
  } catch (err) {
    // Stopped before the group was joined (SPEC: exit 0), even when the start failed meanwhile.
    if (!signal) throw err;
    const aborted = err instanceof KexoError && err.code === "start_aborted";
    log.info("signal received while starting; nothing to drain", { signal, ...(aborted ? { stopped: err.message } : { error: err }) });
    return ExitCode.ok;
  }
  if (signal) {
    log.info("signal received while starting; stopping", { signal });
    await worker.stop();
    return ExitCode.ok;
  }
  log.info("running", { handlers: handlers.length, http: worker.address });
  if (dev) {
    const partitions = earlierProgress(worker, handlers);
    if (partitions > 0) {
      const said = `the journal (${redactUrl(config.db)}) holds an earlier run's progress on ${partitions} partition(s): the development broker starts empty, ` +
        "so its new messages reuse those offsets and count as deduplicated. For a fresh start remove the journal file (and its -wal, -shm) or pass --db file:another.db";
      log.warn(said, { db: redactUrl(config.db), partitions });
      if (dev.demo && dev.args.flags.json !== true) printLine(`demo: note: ${said}`);
    }
  }
  const demoAbort = new AbortController();
  if (dev?.demo) {
    const { runDemo } = await import("../dev/demo.ts");
    const count = Number(dev.args.flags["demo-count"] ?? 1000);
    const json = dev.args.flags.json === true;
    // As the consumer matches its RegExps (TopicPattern): no g/y state, no internal or own dead-letter topics.
    const consumes = (topic: string) =>
      handlers.some((h) => h.topics.some((t) => (typeof t === "string" ? t === topic : new TopicPattern(t, (u) => h.deadLetterTopic(u)).test(topic))));
    void runDemo(createKafka({ brokers: config.brokers, clientId: "kexo-demo" }, log), bus, { count, json, out: printLine, consumes }, demoAbort.signal)
      .then((tally) => {
        // With --json, stdout carries JSON objects only.
        if (!demoAbort.signal.aborted && tally.expected > 0 && !json) {
          printLine(`demo: all messages handled; try: curl http://${worker.address?.replace("0.0.0.0", "127.0.0.1")}/metrics  (Ctrl-C to stop)`);
        }
      })
      .catch((err: unknown) => log.error("demo producer failed", { error: err }));
  }
  const outcome = await Promise.race([
    life.signalled.then((s) => ({ signal: s, error: undefined })),
    worker.failed.then((e) => ({ signal: undefined, error: e })),
  ]);
  demoAbort.abort();
  // A stop waits for the journal, which a ctx.tx body that ignores ctx.signal holds forever: past
  // the timeout and a grace, kexo exits anyway (75), as after a crash: the journal is consistent
  // and the next start redoes what was not committed.
  // A stop that throws (the journal failing at its last COMMIT, say) is said as such: it used to
  // read as a drain cut by the shutdown timeout, which had not run out.
  const stopped = () => within(worker.stop().catch((error: unknown) => {
    log.error("stopping failed; exiting without a clean stop, what did not finish is redone on the next start", { error });
    return STOP_FAILED;
  }), config.shutdownTimeoutMs + STOP_GRACE_MS);
  const giveUp = () => {
    log.error("shutdown did not finish: a handler still holds the journal (a ctx.tx body that ignores ctx.signal?); exiting without it, its messages are redone on the next start", {
      timeoutMs: config.shutdownTimeoutMs + STOP_GRACE_MS,
    });
    return ExitCode.transient;
  };
  if (outcome.error) {
    log.error("stopping after a fatal error", { error: outcome.error });
    if ((await stopped()) === TIMED_OUT) giveUp();
    // `dev --json`'s stdout is for scripts: they learn why too (stderr has the JSON log line).
    if (dev?.args.flags.json) printJsonError(outcome.error, "the worker failed");
    return outcome.error instanceof KexoError ? outcome.error.exitCode : ExitCode.transient;
  }
  log.info("signal received; draining", { signal: outcome.signal, timeoutMs: config.shutdownTimeoutMs });
  const clean = await stopped();
  if (clean === TIMED_OUT) return giveUp();
  if (clean === STOP_FAILED) return ExitCode.transient;
  log.info(clean ? "drained; exiting" : "shutdown timeout ran out; aborted handlers are redone on the next start", { clean });
  return clean ? ExitCode.ok : ExitCode.transient;
}
