// The development broker as a cluster that lets its clients create topics, as a managed Kafka with
// auto.create.topics.enable=false and CreateTopics allowed does. librdkafka's mock implements no
// CreateTopics and names a controller (0) that is none of its brokers, so kafkajs's admin cannot
// create topics on it. A TCP proxy in front of each mock broker passes every request through, and:
// - answers CreateTopics itself, through the mock's API (the topic's Metadata error cleared, then
//   created), or with the error a test asks for (an ACL's refusal);
// - adds CreateTopics to ApiVersions' answer, names one of the brokers the controller in Metadata,
//   and gives the proxies' addresses for the brokers' (Metadata, FindCoordinator), so that every
//   connection the client makes goes through a proxy;
// - leaves the topics a test made missing (setTopicError UNKNOWN_TOPIC_OR_PARTITION) out of a
//   Metadata answer for all topics, where the mock lists them with the error and Kafka does not
//   list a topic it does not have.
// Only the non-flexible versions kafkajs uses are rewritten (Metadata ≤ v8, FindCoordinator ≤ v2,
// ApiVersions ≤ v2, CreateTopics ≤ v3).
import { connect, createServer, type Server, type Socket } from "node:net";
import type { MockCluster } from "../../src/dev/mock-cluster.ts";

export interface CreatedTopic {
  topic: string;
  numPartitions: number;
  replicationFactor: number;
  configs: Record<string, string | null>;
}

export interface AdminProxy {
  /** Bootstrap list through the proxies. */
  readonly brokers: string;
  /** Every CreateTopics entry the proxies answered, in order, with its error code (0: created). */
  readonly requests: (CreatedTopic & { errorCode: number })[];
  /** Answer every CreateTopics entry with this error code (29: TOPIC_AUTHORIZATION_FAILED); undefined: create. */
  refuse(errorCode: number | undefined): void;
  /** A topic this proxy created counts as deleted: the next CreateTopics for it creates it again. */
  forget(topic: string): void;
  close(): Promise<void>;
}

const API = { Metadata: 3, FindCoordinator: 10, ApiVersions: 18, CreateTopics: 19 } as const;
const TOPIC_ALREADY_EXISTS = 36;
const UNKNOWN_TOPIC_OR_PARTITION = 3;

class Reader {
  pos: number;
  constructor(readonly buf: Buffer, pos: number) {
    this.pos = pos;
  }
  i8(): number {
    return this.buf.readInt8((this.pos += 1) - 1);
  }
  i16(): number {
    return this.buf.readInt16BE((this.pos += 2) - 2);
  }
  i32(): number {
    return this.buf.readInt32BE((this.pos += 4) - 4);
  }
  str(): string | null {
    const n = this.i16();
    if (n < 0) return null;
    return this.buf.toString("utf8", this.pos, (this.pos += n));
  }
}

class Writer {
  parts: Buffer[] = [];
  i8(v: number): this {
    const b = Buffer.alloc(1);
    b.writeInt8(v);
    return this.push(b);
  }
  i16(v: number): this {
    const b = Buffer.alloc(2);
    b.writeInt16BE(v);
    return this.push(b);
  }
  i32(v: number): this {
    const b = Buffer.alloc(4);
    b.writeInt32BE(v);
    return this.push(b);
  }
  str(s: string | null): this {
    if (s === null) return this.i16(-1);
    const b = Buffer.from(s, "utf8");
    return this.i16(b.length).push(b);
  }
  push(b: Buffer): this {
    this.parts.push(b);
    return this;
  }
  /** The frame: size, then the parts. */
  frame(): Buffer {
    const body = Buffer.concat(this.parts);
    const size = Buffer.alloc(4);
    size.writeInt32BE(body.length);
    return Buffer.concat([size, body]);
  }
}

/** Calls `each` with every whole frame (size prefix included) as bytes arrive. */
function frames(each: (frame: Buffer) => void): (chunk: Buffer) => void {
  let pending: Buffer = Buffer.alloc(0);
  return (chunk) => {
    pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
    while (pending.length >= 4) {
      const size = pending.readInt32BE(0);
      if (pending.length < 4 + size) break;
      each(pending.subarray(0, 4 + size));
      pending = pending.subarray(4 + size);
    }
  };
}

export async function startAdminProxy(cluster: MockCluster): Promise<AdminProxy> {
  const upstreams = cluster.bootstrap.split(",");
  const servers: Server[] = [];
  const sockets = new Set<Socket>();
  /** Upstream "host:port" → the proxy's port. */
  const proxyPort = new Map<string, number>();
  const requests: (CreatedTopic & { errorCode: number })[] = [];
  const made = new Set<string>();
  let refusal: number | undefined;

  const createTopics = (version: number, r: Reader): Buffer[] => {
    const out: Buffer[] = [];
    const w = new Writer();
    const entries: { topic: string; errorCode: number }[] = [];
    const n = r.i32();
    for (let i = 0; i < n; i++) {
      const topic = r.str()!;
      const numPartitions = r.i32();
      const replicationFactor = r.i16();
      const assignments = r.i32();
      for (let a = 0; a < Math.max(0, assignments); a++) {
        r.i32();
        const ids = r.i32();
        for (let b = 0; b < Math.max(0, ids); b++) r.i32();
      }
      const configs: Record<string, string | null> = {};
      const nc = r.i32();
      for (let c = 0; c < Math.max(0, nc); c++) configs[r.str()!] = r.str();
      let errorCode = refusal ?? 0;
      if (errorCode === 0 && made.has(topic)) errorCode = TOPIC_ALREADY_EXISTS;
      if (errorCode === 0) {
        cluster.setTopicError(topic, 0);
        cluster.createTopic(topic, numPartitions > 0 ? numPartitions : 4);
        made.add(topic);
      }
      requests.push({ topic, numPartitions, replicationFactor, configs, errorCode });
      entries.push({ topic, errorCode });
    }
    if (version >= 2) w.i32(0);
    w.i32(entries.length);
    for (const e of entries) {
      w.str(e.topic).i16(e.errorCode);
      if (version >= 1) w.str(null);
    }
    out.push(...w.parts);
    return out;
  };

  /** A response of `apiKey`/`version` from upstream, rewritten where it names brokers or versions. */
  const rewrite = (apiKey: number, version: number, all: boolean, frame: Buffer): Buffer => {
    const r = new Reader(frame, 8);
    const w = new Writer().push(frame.subarray(4, 8));
    if (apiKey === API.ApiVersions && version <= 2) {
      const error = r.i16();
      const n = r.i32();
      const keys: [number, number, number][] = [];
      for (let i = 0; i < n; i++) keys.push([r.i16(), r.i16(), r.i16()]);
      if (!keys.some(([k]) => k === API.CreateTopics)) keys.push([API.CreateTopics, 0, 3]);
      w.i16(error).i32(keys.length);
      for (const [k, min, max] of keys) w.i16(k).i16(min).i16(max);
      return w.push(frame.subarray(r.pos)).frame();
    }
    if (apiKey === API.Metadata && version <= 8) {
      if (version >= 3) w.i32(r.i32());
      const n = r.i32();
      w.i32(n);
      const ids: number[] = [];
      for (let i = 0; i < n; i++) {
        const id = r.i32();
        const host = r.str()!;
        const port = r.i32();
        ids.push(id);
        const mine = proxyPort.get(`${host}:${port}`);
        w.i32(id).str(mine ? "127.0.0.1" : host).i32(mine ?? port);
        if (version >= 1) w.str(r.str());
      }
      if (version >= 2) w.str(r.str());
      if (version >= 1) {
        const controller = r.i32();
        w.i32(ids.includes(controller) || ids.length === 0 ? controller : Math.min(...ids));
      }
      if (!all) return w.push(frame.subarray(r.pos)).frame();
      const topics = r.i32();
      const kept: Buffer[] = [];
      for (let i = 0; i < topics; i++) {
        const start = r.pos;
        const error = r.i16();
        r.str();
        if (version >= 1) r.i8();
        const partitions = r.i32();
        for (let p = 0; p < partitions; p++) {
          r.i16();
          r.i32();
          r.i32();
          if (version >= 7) r.i32();
          for (let list = 0; list < (version >= 5 ? 3 : 2); list++) {
            const n = r.i32();
            r.pos += 4 * Math.max(0, n);
          }
        }
        if (version >= 8) r.i32();
        if (error !== UNKNOWN_TOPIC_OR_PARTITION) kept.push(frame.subarray(start, r.pos));
      }
      w.i32(kept.length);
      for (const k of kept) w.push(k);
      return w.push(frame.subarray(r.pos)).frame();
    }
    if (apiKey === API.FindCoordinator && version <= 2) {
      if (version >= 1) w.i32(r.i32());
      w.i16(r.i16());
      if (version >= 1) w.str(r.str());
      const id = r.i32();
      const host = r.str()!;
      const port = r.i32();
      const mine = proxyPort.get(`${host}:${port}`);
      w.i32(id).str(mine ? "127.0.0.1" : host).i32(mine ?? port);
      return w.push(frame.subarray(r.pos)).frame();
    }
    return frame;
  };

  const serve = (upstream: string) =>
    createServer((client) => {
      const [host, port] = [upstream.slice(0, upstream.lastIndexOf(":")), Number(upstream.slice(upstream.lastIndexOf(":") + 1))];
      const server = connect(port, host);
      sockets.add(client);
      sockets.add(server);
      const asked = new Map<number, { apiKey: number; version: number; all: boolean }>();
      const end = () => {
        client.destroy();
        server.destroy();
        sockets.delete(client);
        sockets.delete(server);
      };
      client.on("error", end).on("close", end);
      server.on("error", end).on("close", end);
      client.on("data", frames((frame) => {
        const apiKey = frame.readInt16BE(4);
        const version = frame.readInt16BE(6);
        const correlationId = frame.readInt32BE(8);
        if (apiKey === API.CreateTopics && version <= 3) {
          const r = new Reader(frame, 12);
          r.str(); // client id
          const w = new Writer().i32(correlationId);
          for (const p of createTopics(version, r)) w.push(p);
          client.write(w.frame());
          return;
        }
        let all = false;
        if (apiKey === API.Metadata) {
          const r = new Reader(frame, 12);
          r.str(); // client id
          // v0: an empty list asks for every topic; v1 on: a null one (-1).
          all = r.i32() <= 0;
        }
        asked.set(correlationId, { apiKey, version, all });
        server.write(frame);
      }));
      server.on("data", frames((frame) => {
        const correlationId = frame.readInt32BE(4);
        const req = asked.get(correlationId);
        asked.delete(correlationId);
        client.write(req ? rewrite(req.apiKey, req.version, req.all, frame) : frame);
      }));
    });

  for (const upstream of upstreams) {
    const server = serve(upstream);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    servers.push(server);
    const address = server.address();
    if (typeof address !== "object" || !address) throw new Error("admin proxy: no address");
    proxyPort.set(upstream, address.port);
  }
  return {
    brokers: [...proxyPort.values()].map((p) => `127.0.0.1:${p}`).join(","),
    requests,
    refuse(errorCode) {
      refusal = errorCode;
    },
    forget(topic) {
      made.delete(topic);
    },
    async close() {
      for (const s of sockets) s.destroy();
      await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
    },
  };
}
