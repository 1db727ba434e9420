// Bad config and bad handler files never start a worker: exit 78 with every problem printed as
// `path: message`, naming the field, the file and where a value came from. Precedence is
// flag > environment > config file > default.
import { describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { tempDir } from "./support/tmp.ts";
import { kexoSync, ROOT, runArgs } from "./support/worker.ts";

const kexo = (args: string[], env: Record<string, string> = {}, cwd = ROOT) => kexoSync(args, { cwd, env });

function handlerDir(files: Record<string, string>): string {
  const dir = tempDir();
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  return dir;
}

const GOOD = `import { defineHandler, v } from "kexo";
export default defineHandler({ topics: ["t"], schema: v.object({ a: v.string() }), handle: async () => {} });`;

describe("invalid handler files", () => {
  test("each problem names its file and field; exit 78", () => {
    const dir = handlerDir({
      "no-topics.ts": `import { defineHandler } from "kexo";\nexport default defineHandler({ topics: [], handle: async () => {} });`,
      "bad-retry.ts": `import { defineHandler } from "kexo";\nexport default defineHandler({ topics: ["a"], retry: { attempts: 0 }, concurrency: 1.5, handle: async () => {} } as never);`,
      "not-handler.ts": `export default { topics: ["x"] };`,
      "no-default.ts": `export const x = 1;`,
      "throws.ts": `throw new Error("boom at import");`,
      "regex-topic.ts": `import { defineHandler } from "kexo";\nexport default defineHandler({ topics: [/a.*/], order: "topic", handle: async () => {} });`,
      "good.ts": GOOD,
      "dup.ts": `import { defineHandler } from "kexo";\nexport default defineHandler({ name: "good", topics: ["t2"], handle: async () => {} });`,
      // Misspelt options would fall back to their defaults: deadletter: false would dead-letter.
      "typos.ts": `import { defineHandler } from "kexo";\nexport default defineHandler({ topics: ["ty", ""], deadletter: false, concurency: 4, retries: {}, retry: { attempt: 3 }, handle: async () => {} } as never);`,
      "no-handle.ts": `import { defineHandler } from "kexo";\nexport default defineHandler({ topics: ["nh"] } as never);`,
      "dlq-loop.ts": `import { defineHandler } from "kexo";\nexport default defineHandler({ topics: ["loop"], deadLetter: "loop", handle: async () => {} });`,
      "dlq-regex-loop.ts": `import { defineHandler } from "kexo";\nexport default defineHandler({ topics: [/^orders/], deadLetter: "orders-dead", handle: async () => {} });`,
      "limits.ts": `import { defineHandler } from "kexo";\nexport default defineHandler({ topics: ["bad topic!"], deadLetter: "x".repeat(250), retry: { maxDelayMs: 1e12 }, handle: async () => {} });`,
      "async-schema.ts": `import { defineHandler, v } from "kexo";\nexport default defineHandler({ topics: ["as"], schema: v.pipeAsync(v.object({ i: v.number() }), v.checkAsync(async () => true)), handle: async () => {} });`,
      "syntax.ts": `import { defineHandler } from "kexo";\nexport default defineHandler({ topics: ["s"], handle: async () => { return; }, ;\n});`,
      // One error alone: Bun puts its position on the error itself, not in a list.
      "syntax-one.ts": `import { defineHandler } from "kexo";\nconst x = ;\nexport default defineHandler({ topics: ["s1"], handle: async () => {} });`,
    });
    const r = kexo(["check", "--handlers", dir]);
    expect(r.code).toBe(78);
    const f = (name: string) => join(dir, name);
    expect(r.stderr).toContain(`${f("no-topics.ts")}: topics: must name at least one topic`);
    expect(r.stderr).toContain(`${f("bad-retry.ts")}: retry.attempts: must be at least 1`);
    expect(r.stderr).toContain(`${f("bad-retry.ts")}: concurrency: must be an integer`);
    expect(r.stderr).toContain(`${f("not-handler.ts")}: default export is not a handler`);
    expect(r.stderr).toContain(`${f("no-default.ts")}: has no default export`);
    expect(r.stderr).toContain(`${f("throws.ts")}: failed to load: boom at import`);
    expect(r.stderr).toContain(`${f("regex-topic.ts")}: topics: a RegExp topic can not be used with order: "topic"`);
    expect(r.stderr).toContain(`${f("good.ts")}: name: "good" is also the name of ${f("dup.ts")}`);
    expect(r.stderr).toContain(`${f("typos.ts")}: deadletter: unknown handler option (did you mean "deadLetter"?)`);
    expect(r.stderr).toContain(`${f("typos.ts")}: concurency: unknown handler option (did you mean "concurrency"?)`);
    expect(r.stderr).toContain(`${f("typos.ts")}: retries: unknown handler option (did you mean "retry"?)`);
    expect(r.stderr).toContain(`${f("typos.ts")}: retry.attempt: unknown retry option (did you mean "attempts"?)`);
    expect(r.stderr).toContain(`${f("typos.ts")}: topics.1: must not be empty`);
    expect(r.stderr).toContain(`${f("no-handle.ts")}: handle: is required`);
    expect(r.stderr).toContain(`${f("dlq-loop.ts")}: deadLetter: "loop" is also a topic this handler consumes (loop)`);
    expect(r.stderr).toContain(`${f("dlq-regex-loop.ts")}: deadLetter: "orders-dead" is also a topic this handler consumes (/^orders/)`);
    expect(r.stderr).toContain(`${f("async-schema.ts")}: schema: is an async valibot schema`);
    expect(r.stderr).toContain(`${f("limits.ts")}: topics.0: a Kafka topic name holds only letters, digits`);
    expect(r.stderr).toContain(`${f("limits.ts")}: deadLetter: must be at most 249 characters`);
    expect(r.stderr).toContain(`${f("limits.ts")}: retry.maxDelayMs: must be at most 2147483647 ms`);
    // Bun's parse errors, each with its line and column, not only their count.
    expect(r.stderr).toMatch(new RegExp(`${f("syntax.ts")}: failed to load: .*line 2, column \\d+`));
    expect(r.stderr).toContain(`${f("syntax-one.ts")}: failed to load: Unexpected ; (line 2, column 11)`);
  });

  test("a handler name from a file name with characters other than A-Za-z0-9._- (or too long) names the file; exit 78", () => {
    const long = "x".repeat(201);
    const handler = (topic: string, options = "") => `import { defineHandler } from "kexo";\nexport default defineHandler({ topics: ["${topic}"], ${options} handle: async () => {} });`;
    const dir = handlerDir({
      "my handler.ts": handler("a"),
      "ordérs.ts": handler("b"),
      [`${long}.ts`]: handler("c"),
      // An explicit name is the handler's name: the file's does not matter then.
      "named one.ts": handler("d", 'name: "named",'),
      "ok.v2_x-y.ts": handler("e"),
      // The name option is held to the same characters; a groupId is any group Kafka takes.
      "options.ts": handler("f", 'name: "bad name", groupId: "g:1",'),
      "long-name.ts": handler("g", `name: "${long}",`),
    });
    const r = kexo(["check", "--handlers", dir]);
    expect(r.code).toBe(78);
    const f = (name: string) => join(dir, name);
    const rule = "which must be 1 to 200 characters, each a letter, digit, '.', '_' or '-': it becomes a metric label";
    expect(r.stderr).toContain(`${f("my handler.ts")}: the file name gives the handler the name "my handler", ${rule}`);
    expect(r.stderr).toContain("Rename the file (e.g. my_handler.ts), or set the handler's name option");
    expect(r.stderr).toContain(`${f("ordérs.ts")}: the file name gives the handler the name "ordérs", ${rule}`);
    expect(r.stderr).toContain("Rename the file (e.g. orders.ts)");
    expect(r.stderr).toContain(`${f(`${long}.ts`)}: the file name gives the handler the name "${long}", ${rule}`);
    expect(r.stderr).toContain(`${f("options.ts")}: name: must be 1 to 200 characters, each a letter, digit, '.', '_' or '-'`);
    expect(r.stderr).not.toContain(`${f("options.ts")}: groupId`);
    expect(r.stderr).toContain(`${f("long-name.ts")}: name: must be 1 to 200 characters`);
    expect(r.stderr).not.toContain(f("named one.ts"));
    expect(r.stderr).not.toContain(f("ok.v2_x-y.ts"));
  });

  test("a missing or empty handlers directory is a config error", () => {
    expect(kexo(["check", "--handlers", "/nonexistent/kexo"]).stderr).toContain("handlers: /nonexistent/kexo is not a directory");
    const r = kexo(["check", "--handlers", tempDir()]);
    expect(r.code).toBe(78);
    expect(r.stderr).toContain("holds no *.ts or *.js handler files");
  });

  test("a failing setup(db) names the file; exit 78", () => {
    const dir = handlerDir({
      "bad-setup.ts": `import { defineHandler } from "kexo";\nexport default defineHandler({ topics: ["t"], setup: async (db) => { await db.execute("CREATE TABLE oops (") }, handle: async () => {} });`,
    });
    const r = kexo(runArgs("127.0.0.1:1", dir, join(tempDir(), "j.db")));
    expect(r.code).toBe(78);
    expect(r.stderr).toContain(`${join(dir, "bad-setup.ts")}: setup:`);
  });
});

describe("invalid config", () => {
  const dir = handlerDir({ "good.ts": GOOD });

  test("run without brokers", () => {
    const r = kexo(["run", "--handlers", dir]);
    expect(r.code).toBe(78);
    expect(r.stderr).toContain("brokers: required");
  });

  test("every bad value is reported with its source", () => {
    const config = join(tempDir(), "kexo.json");
    writeFileSync(config, JSON.stringify({ "log-level": "loud", frobnicate: 1 }));
    const r = kexo(["check", "--handlers", dir, "--config", config, "--http", "nope", "--brokers", "a:1,b"], {
      KEXO_SHUTDOWN_TIMEOUT: "soon",
      KEXO_DB: "postgres://x",
      KEXO_SASL_USERNAME: "u",
    });
    expect(r.code).toBe(78);
    expect(r.stderr).toContain("http: must be HOST:PORT");
    expect(r.stderr).toContain("brokers: each broker must be host:port");
    expect(r.stderr).toContain("shutdown-timeout (KEXO_SHUTDOWN_TIMEOUT): must be a whole number of milliseconds");
    expect(r.stderr).toContain("db (KEXO_DB): must be file:PATH");
    expect(r.stderr).toContain(`log-level (${config}): must be one of debug, info, warn, error, silent`);
    expect(r.stderr).toContain(`frobnicate (${config}): unknown key`);
    expect(r.stderr).toContain("sasl-mechanism: required when a SASL username or password is set");
  });

  test("an unreadable or non-JSON config file", () => {
    expect(kexo(["check", "--handlers", dir, "--config", "/nonexistent.json"]).stderr).toContain("config: cannot read /nonexistent.json: ENOENT");
    const bad = join(tempDir(), "bad.json");
    writeFileSync(bad, "{ nope");
    const r = kexo(["check", "--handlers", dir, "--config", bad]);
    expect(r.code).toBe(78);
    expect(r.stderr).toContain(`config: ${bad} is not valid JSON at line 1, column 3`);
  });

  test("usage errors exit 64", () => {
    expect(kexo(["frob"]).code).toBe(64);
    expect(kexo(["check", "--no-such-flag"]).code).toBe(64);
  });

  test("precedence: flag > env > config file > default, and secrets are redacted", () => {
    const config = join(tempDir(), "kexo.json");
    writeFileSync(config, JSON.stringify({ brokers: ["file:1"], db: "file:from-file.db", http: "127.0.0.1:1111", "client-id": "from-file", "sasl-mechanism": "plain", "sasl-username": "u", "sasl-password": "hunter2" }));
    const r = kexo(["check", "--json", "--handlers", dir, "--config", config, "--http", "127.0.0.1:2222"], { KEXO_HTTP: "127.0.0.1:3333", KEXO_DB: "file:from-env.db" });
    expect(r.code).toBe(0);
    expect(r.stdout).not.toContain("hunter2");
    const out = JSON.parse(r.stdout);
    expect(out.config.http).toEqual({ host: "127.0.0.1", port: 2222 });
    expect(out.config.db).toBe("file:from-env.db");
    expect(out.config.brokers).toEqual(["file:1"]);
    expect(out.config.clientId).toBe("from-file");
    expect(out.config.shutdownTimeoutMs).toBe(25000);
    expect(out.handlers[0]).toMatchObject({ name: "good", topics: ["t"], group: "kexo-good-t", order: "partition", deadLetter: ["t.dlq"] });
  });
});

describe("schema registry config", () => {
  const avro = `import { defineHandler } from "kexo";\nexport default defineHandler({ topics: ["t"], format: "avro", handle: async () => {} });`;

  test("a registry format without a registry, a bad format, and raw with a schema name the file and field", () => {
    const dir = handlerDir({
      "avro.ts": avro,
      "xml.ts": `import { defineHandler } from "kexo";\nexport default defineHandler({ topics: ["t2"], format: "xml", handle: async () => {} } as never);`,
      "raw.ts": `import { defineHandler, v } from "kexo";\nexport default defineHandler({ topics: ["t3"], format: "raw", schema: v.string(), handle: async () => {} } as never);`,
    });
    const r = kexo(["check", "--handlers", dir]);
    expect(r.code).toBe(78);
    expect(r.stderr).toContain(`${join(dir, "xml.ts")}: format: must be "json", "avro", "protobuf", "json-schema", "raw"`);
    expect(r.stderr).toContain(`${join(dir, "raw.ts")}: format: "raw" hands the handler the value's bytes`);
    const alone = handlerDir({ "avro.ts": avro });
    const a = kexo(["check", "--handlers", alone]);
    expect(a.code).toBe(78);
    expect(a.stderr).toContain(`${join(alone, "avro.ts")}: format: "avro" values are decoded through a schema registry: pass --schema-registry URL`);
  });

  test("credentials go in their own settings, in pairs, and are redacted", () => {
    const dir = handlerDir({ "avro.ts": avro });
    const inUrl = kexo(["check", "--handlers", dir, "--schema-registry", "http://u:hunter2@registry:8081"]);
    expect(inUrl.code).toBe(78);
    expect(inUrl.stderr).toContain("schema-registry: must not carry credentials");
    const half = kexo(["check", "--handlers", dir], { KEXO_SCHEMA_REGISTRY: "http://registry:8081", KEXO_SCHEMA_REGISTRY_USERNAME: "u" });
    expect(half.code).toBe(78);
    expect(half.stderr).toContain("schema-registry-password: required");
    const ok = kexo(["check", "--json", "--handlers", dir], {
      KEXO_SCHEMA_REGISTRY: "http://registry:8081",
      KEXO_SCHEMA_REGISTRY_USERNAME: "u",
      KEXO_SCHEMA_REGISTRY_PASSWORD: "hunter2",
    });
    expect(ok.code).toBe(0);
    expect(ok.stdout).not.toContain("hunter2");
    const out = JSON.parse(ok.stdout);
    expect(out.config.schemaRegistry).toEqual({ url: "http://registry:8081", username: "u", password: "[redacted]" });
    expect(out.handlers[0]).toMatchObject({ name: "avro", format: "avro" });
  });
});
