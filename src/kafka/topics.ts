// Topics kexo writes to besides the handlers' input: each handler's dead-letter topics, the
// outbox's topics and __kexo_progress (progress-log.ts). Managed clusters mostly run with
// auto.create.topics.enable=false (Amazon MSK's and Confluent Cloud's default), so a produce or a
// subscription to a topic nobody made fails. kexo asks for the missing ones with CreateTopics, as a
// broker's auto-creation would have made them (the broker's default partitions and replication;
// __kexo_progress compacted), where the principal may create topics. Where it may not, the topic is
// named with the broker's answer, and the write or subscription that needs it says what to do.
import type { Admin, Kafka } from "kafkajs";
import { errorMessage } from "../errors.ts";
import type { Logger } from "../log.ts";

/**
 * Creates missing topics; resolves with the topics it could not create and why (empty: all exist).
 * `recheck`: a write just found them missing, so what this process knew of them (listed or created
 * earlier; an operator may have deleted one since) is asked again.
 */
export type EnsureTopics = (topics: string[], recheck?: boolean) => Promise<Map<string, string>>;

/** A failed attempt is not repeated for this long (each write that needs the topic would ask). */
const RETRY_AFTER_MS = 30_000;

export class TopicCreator {
  #kafka: Kafka;
  #log: Logger;
  #compacted: ReadonlySet<string>;
  /** Topics known to exist: listed, or created by this process. */
  #known = new Set<string>();
  /** Topics that could not be created: why, and when it was last tried. */
  #failed = new Map<string, { why: string; at: number }>();

  constructor(kafka: Kafka, log: Logger, compacted: Iterable<string> = []) {
    this.#kafka = kafka;
    this.#log = log.child({ component: "topics" });
    this.#compacted = new Set(compacted);
  }

  /** One ask at a time: a burst of dead letters to one missing topic opens one admin client, not one each. */
  #queue: Promise<unknown> = Promise.resolve();

  /** See EnsureTopics. Never throws: a broker that cannot be asked is a failure for every topic asked. */
  readonly ensure: EnsureTopics = (topics, recheck = false) => {
    const run = this.#queue.then(() => this.#ensure(topics, recheck));
    this.#queue = run.catch(() => {});
    return run;
  };

  async #ensure(topics: string[], recheck: boolean): Promise<Map<string, string>> {
    if (recheck) for (const t of topics) this.#known.delete(t);
    const failures = new Map<string, string>();
    const now = Date.now();
    const ask: string[] = [];
    for (const t of new Set(topics)) {
      if (this.#known.has(t)) continue;
      const failed = this.#failed.get(t);
      if (failed && now - failed.at < RETRY_AFTER_MS) failures.set(t, failed.why);
      else ask.push(t);
    }
    if (ask.length === 0) return failures;
    const admin = this.#kafka.admin();
    try {
      await admin.connect();
      const missing = await this.#missing(admin, ask);
      if (missing.length > 0) {
        for (const [t, why] of await this.#create(admin, missing)) failures.set(t, why);
      }
    } catch (err) {
      // Not connected: said once, for every topic asked.
      const topics = ask.filter((t) => !this.#known.has(t));
      for (const t of topics) this.#fail(t, errorMessage(err), failures, false);
      this.#log.warn("could not ask the cluster whether the topics kexo writes to exist", { topics, error: err });
    } finally {
      await admin.disconnect().catch(() => {});
    }
    return failures;
  }

  /** Of `topics`, those the cluster does not list (all of them if it will not list its topics). */
  async #missing(admin: Admin, topics: string[]): Promise<string[]> {
    let listed: Set<string>;
    try {
      listed = new Set(await admin.listTopics());
    } catch (err) {
      this.#log.debug("could not list the cluster's topics; asking to create every topic kexo needs", { error: err });
      return topics;
    }
    const missing: string[] = [];
    for (const t of topics) {
      if (listed.has(t)) this.#known.add(t);
      else missing.push(t);
    }
    return missing;
  }

  /** CreateTopics for `topics`; the failures, by topic. A topic that exists already is no failure. */
  async #create(admin: Admin, topics: string[]): Promise<Map<string, string>> {
    const failures = new Map<string, string>();
    try {
      await admin.createTopics({
        waitForLeaders: true,
        timeout: 15_000,
        // numPartitions and replicationFactor left out: -1, the broker's defaults (Kafka ≥ 2.4).
        topics: topics.map((topic) => ({
          topic,
          configEntries: this.#compacted.has(topic) ? [{ name: "cleanup.policy", value: "compact" }] : undefined,
        })),
      });
    } catch (err) {
      // Per-topic errors come as an aggregate (kafkajs's retrier wraps it: its cause); anything
      // else (no controller, not allowed to ask at all, a timeout) fails every topic asked.
      const perTopic = perTopicErrors(err);
      if (Array.isArray(perTopic)) {
        for (const e of perTopic as { topic?: string; type?: string; message?: string }[]) {
          if (e.type === "TOPIC_ALREADY_EXISTS" || !e.topic) continue;
          this.#fail(e.topic, `${e.type ?? "error"}: ${e.message ?? ""}`, failures);
        }
      } else {
        for (const t of topics) this.#fail(t, errorMessage(err), failures);
      }
    }
    const created = topics.filter((t) => !failures.has(t));
    for (const t of created) {
      this.#known.add(t);
      this.#failed.delete(t);
    }
    if (created.length > 0) this.#log.info("created missing topics", { topics: created, compacted: created.filter((t) => this.#compacted.has(t)) });
    return failures;
  }

  #fail(topic: string, why: string, failures: Map<string, string>, say = true): void {
    const before = this.#failed.get(topic);
    this.#failed.set(topic, { why, at: Date.now() });
    failures.set(topic, why);
    if (say && before?.why !== why) {
      this.#log.warn(
        "a topic kexo writes to does not exist and kexo could not create it; unless the broker creates topics itself " +
          "(auto.create.topics.enable=true), create it or allow kexo's principal to create topics (CreateTopics)",
        { topic, error: why },
      );
    }
  }
}

/** The per-topic errors of a failed CreateTopics, from kafkajs's aggregate error or one that wraps it. */
function perTopicErrors(err: unknown, depth = 0): unknown[] | undefined {
  if (depth > 3 || typeof err !== "object" || err === null) return undefined;
  const { errors, cause } = err as { errors?: unknown; cause?: unknown };
  return Array.isArray(errors) ? errors : perTopicErrors(cause, depth + 1);
}
