// The development broker: librdkafka's mock cluster (a Kafka-protocol broker from librdkafka's own
// test suite) loaded through bun:ffi. It runs in librdkafka's threads, so the JS event loop stays
// free, and kafkajs reaches it over real TCP sockets. Fault injection for tests lives here too.
import { CString, dlopen, FFIType, type Pointer, ptr } from "bun:ffi";
import type { EnsureTopics } from "../kafka/topics.ts";

export const ApiKey = {
  Produce: 0,
  Fetch: 1,
  ListOffsets: 2,
  Metadata: 3,
  OffsetCommit: 8,
  OffsetFetch: 9,
  FindCoordinator: 10,
  JoinGroup: 11,
  Heartbeat: 12,
  LeaveGroup: 13,
  SyncGroup: 14,
} as const;

export const KafkaErr = {
  LEADER_NOT_AVAILABLE: 5,
  NOT_LEADER_FOR_PARTITION: 6,
  REQUEST_TIMED_OUT: 7,
  COORDINATOR_NOT_AVAILABLE: 15,
  NOT_COORDINATOR: 16,
  ILLEGAL_GENERATION: 22,
  UNKNOWN_MEMBER_ID: 25,
  REBALANCE_IN_PROGRESS: 27,
} as const;

export interface MockCluster {
  readonly bootstrap: string;
  createTopic(name: string, partitions: number): void;
  setBrokerDown(brokerId: number): void;
  setBrokerUp(brokerId: number): void;
  setRtt(brokerId: number, ms: number): void;
  pushRequestErrors(apiKey: number, errorCodes: number[]): void;
  /** Drops the errors pushed for `apiKey` that no request consumed yet. */
  clearRequestErrors(apiKey: number): void;
  setPartitionLeader(topic: string, partition: number, brokerId: number): void;
  /**
   * Metadata answers `topic` with this error (0: none again), as a broker that does not host it
   * and may not create it answers UNKNOWN_TOPIC_OR_PARTITION (3).
   */
  setTopicError(topic: string, errorCode: number): void;
  setGroupCoordinator(groupId: string, brokerId: number): void;
  close(): void;
}

/** Topic creation for the worker (WorkerOptions.ensureTopics) through the mock API: never fails. */
export function mockEnsureTopics(cluster: MockCluster, partitions: number): EnsureTopics {
  return async (topics) => {
    for (const t of topics) cluster.createTopic(t, partitions);
    return new Map();
  };
}

const { ptr: P, cstring: S, i32, i16, u64, void: V } = FFIType;

function load() {
  try {
    return dlopen("librdkafka.so.1", {
      rd_kafka_conf_new: { args: [], returns: P },
      rd_kafka_conf_set: { args: [P, P, P, P, u64], returns: i32 },
      rd_kafka_new: { args: [i32, P, P, u64], returns: P },
      rd_kafka_destroy: { args: [P], returns: V },
      rd_kafka_err2name: { args: [i32], returns: S },
      rd_kafka_mock_cluster_new: { args: [P, i32], returns: P },
      rd_kafka_mock_cluster_destroy: { args: [P], returns: V },
      rd_kafka_mock_cluster_bootstraps: { args: [P], returns: S },
      rd_kafka_mock_topic_create: { args: [P, P, i32, i32], returns: i32 },
      rd_kafka_mock_broker_set_down: { args: [P, i32], returns: i32 },
      rd_kafka_mock_broker_set_up: { args: [P, i32], returns: i32 },
      rd_kafka_mock_broker_set_rtt: { args: [P, i32, i32], returns: i32 },
      rd_kafka_mock_push_request_errors_array: { args: [P, i16, u64, P], returns: V },
      rd_kafka_mock_clear_request_errors: { args: [P, i16], returns: V },
      rd_kafka_mock_partition_set_leader: { args: [P, P, i32, i32], returns: i32 },
      rd_kafka_mock_topic_set_error: { args: [P, P, i32], returns: V },
      rd_kafka_mock_coordinator_set: { args: [P, P, P, i32], returns: i32 },
    });
  } catch (err) {
    throw new Error(
      `the development broker needs librdkafka (librdkafka.so.1): ${(err as Error).message}; install it with \`apt-get install -y librdkafka1\``,
    );
  }
}

/** A NUL-terminated copy of `s`; the Buffer must stay referenced for the call's duration. */
const cstr = (s: string) => Buffer.from(s + "\0", "utf8");

export function createMockCluster(opts: { brokers?: number } = {}): MockCluster {
  const lib = load();
  const f = lib.symbols;
  const errstr = Buffer.alloc(512);
  const conf = f.rd_kafka_conf_new();
  // log_level 0: the mock's own chatter stays off stderr, which carries kexo's JSON lines.
  f.rd_kafka_conf_set(conf, ptr(cstr("log_level")), ptr(cstr("0")), ptr(errstr), errstr.length);
  const rk = f.rd_kafka_new(0, conf, ptr(errstr), errstr.length);
  if (!rk) throw new Error(`rd_kafka_new failed: ${errstr.toString("utf8").replace(/\0.*$/s, "")}`);
  const mc = f.rd_kafka_mock_cluster_new(rk, opts.brokers ?? 1) as Pointer | null;
  if (!mc) {
    f.rd_kafka_destroy(rk);
    throw new Error("rd_kafka_mock_cluster_new failed");
  }
  const bootstrap = String(f.rd_kafka_mock_cluster_bootstraps(mc));
  let closed = false;
  const check = (what: string, err: number) => {
    if (err !== 0) throw new Error(`${what} failed: ${String(f.rd_kafka_err2name(err))}`);
  };
  const live = (): Pointer => {
    if (closed) throw new Error("the development broker is closed");
    return mc;
  };
  return {
    bootstrap,
    createTopic(name, partitions) {
      const err = f.rd_kafka_mock_topic_create(live(), ptr(cstr(name)), partitions, 1);
      // Creating what exists is fine: callers ask for topics they need, not for new ones.
      if (err !== 36 /* TOPIC_ALREADY_EXISTS */) check(`create topic ${name}`, err);
    },
    setBrokerDown(id) {
      check(`broker ${id} down`, f.rd_kafka_mock_broker_set_down(live(), id));
    },
    setBrokerUp(id) {
      check(`broker ${id} up`, f.rd_kafka_mock_broker_set_up(live(), id));
    },
    setRtt(id, ms) {
      check(`broker ${id} rtt`, f.rd_kafka_mock_broker_set_rtt(live(), id, ms));
    },
    pushRequestErrors(apiKey, codes) {
      const arr = new Int32Array(codes);
      f.rd_kafka_mock_push_request_errors_array(live(), apiKey, codes.length, codes.length ? ptr(arr) : null);
    },
    clearRequestErrors(apiKey) {
      f.rd_kafka_mock_clear_request_errors(live(), apiKey);
    },
    setPartitionLeader(topic, partition, id) {
      check(`leader of ${topic}/${partition}`, f.rd_kafka_mock_partition_set_leader(live(), ptr(cstr(topic)), partition, id));
    },
    setTopicError(topic, errorCode) {
      f.rd_kafka_mock_topic_set_error(live(), ptr(cstr(topic)), errorCode);
    },
    setGroupCoordinator(groupId, id) {
      check(`coordinator of ${groupId}`, f.rd_kafka_mock_coordinator_set(live(), ptr(cstr("group")), ptr(cstr(groupId)), id));
    },
    close() {
      if (closed) return;
      closed = true;
      f.rd_kafka_mock_cluster_destroy(mc);
      f.rd_kafka_destroy(rk);
      lib.close();
    },
  };
}
