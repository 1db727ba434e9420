// A real HTTP schema registry for tests (Bun.serve), speaking the Confluent REST endpoints that
// @kafkajs/confluent-schema-registry calls, behind basic auth. It can be stopped and started again
// on the same port, to play a registry outage.
export interface RegistrySchema {
  schema: string;
  /** Absent for Avro, as the real registry answers. */
  schemaType?: "AVRO" | "PROTOBUF" | "JSON";
  references?: { name: string; subject: string; version: number }[];
}

export interface TestRegistry {
  /** http://127.0.0.1:PORT (no credentials). */
  url: string;
  username: string;
  password: string;
  /** Registers directly (no HTTP); returns the schema id, reused for an identical schema. */
  register(subject: string, schema: RegistrySchema): number;
  /** Requests answered so far, as "METHOD /path" (auth failures included). */
  requests: string[];
  /** Stops listening: connections are refused until start(). */
  stop(): Promise<void>;
  start(): void;
}

const JSON_TYPE = { "content-type": "application/vnd.schemaregistry.v1+json" };

export function startRegistry(opts: { username?: string; password?: string } = {}): TestRegistry {
  const username = opts.username ?? "registry-user";
  const password = opts.password ?? "s3cret:pass";
  const expected = `Basic ${Buffer.from(`${username}:${password}`).toString("base64")}`;
  const byId = new Map<number, RegistrySchema>();
  const subjects = new Map<string, number[]>();
  const configs = new Map<string, string>();
  const requests: string[] = [];
  let nextId = 1;

  const reply = (body: unknown, status = 200) => new Response(JSON.stringify(body), { status, headers: JSON_TYPE });
  const notFound = (code: number, message: string) => reply({ error_code: code, message }, 404);

  function register(subject: string, schema: RegistrySchema): number {
    let id = [...byId].find(([, s]) => s.schema === schema.schema && (s.schemaType ?? "AVRO") === (schema.schemaType ?? "AVRO"))?.[0];
    if (id === undefined) byId.set((id = nextId++), schema);
    const versions = subjects.get(subject) ?? [];
    if (!versions.includes(id)) versions.push(id);
    subjects.set(subject, versions);
    return id;
  }

  function version(subject: string, v: string): Response {
    const versions = subjects.get(subject);
    if (!versions) return notFound(40401, `Subject '${subject}' not found.`);
    const n = v === "latest" ? versions.length : Number(v);
    const id = versions[n - 1];
    if (id === undefined) return notFound(40402, `Version ${v} not found.`);
    return reply({ subject, version: n, id, ...byId.get(id) });
  }

  async function handle(req: Request): Promise<Response> {
    const url = new URL(req.url);
    const path = decodeURIComponent(url.pathname);
    requests.push(`${req.method} ${path}`);
    if (req.headers.get("authorization") !== expected) return reply({ error_code: 401, message: "Unauthorized" }, 401);
    let m: RegExpMatchArray | null;
    if (req.method === "GET" && (m = path.match(/^\/schemas\/ids\/(\d+)$/))) {
      const s = byId.get(Number(m[1]));
      return s ? reply(s) : notFound(40403, `Schema ${m[1]} not found`);
    }
    if (req.method === "GET" && path === "/subjects") return reply([...subjects.keys()]);
    if ((m = path.match(/^\/config\/(.+)$/))) {
      if (req.method === "PUT") {
        const body = (await req.json()) as { compatibility: string };
        configs.set(m[1]!, body.compatibility);
        return reply(body);
      }
      const c = configs.get(m[1]!);
      return c ? reply({ compatibilityLevel: c }) : notFound(40401, `Subject '${m[1]}' not found.`);
    }
    if (req.method === "POST" && (m = path.match(/^\/subjects\/(.+)\/versions$/))) {
      const body = (await req.json()) as RegistrySchema;
      return reply({ id: register(m[1]!, { schema: body.schema, schemaType: body.schemaType, references: body.references }) });
    }
    if (req.method === "GET" && (m = path.match(/^\/subjects\/(.+)\/versions\/([^/]+)$/))) return version(m[1]!, m[2]!);
    if (req.method === "POST" && (m = path.match(/^\/subjects\/([^/]+)$/))) {
      const body = (await req.json()) as RegistrySchema;
      const versions = subjects.get(m[1]!) ?? [];
      const n = versions.findIndex((id) => byId.get(id)?.schema === body.schema);
      if (n < 0) return notFound(40403, "Schema not found");
      return reply({ subject: m[1], version: n + 1, id: versions[n], ...byId.get(versions[n]!) });
    }
    return notFound(404, `no route ${req.method} ${path}`);
  }

  let server = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: handle });
  const port = server.port;
  return {
    url: `http://127.0.0.1:${port}`,
    username,
    password,
    register,
    requests,
    async stop() {
      await server.stop(true);
    },
    start() {
      server = Bun.serve({ hostname: "127.0.0.1", port, fetch: handle });
    },
  };
}
