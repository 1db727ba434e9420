// Every setting resolves flag > environment > config file > default, and every bad value is
// reported as `path: message`, the path naming the setting and, unless it was a flag, its source.
import { describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { type Config, resolveConfig, SETTINGS, type SettingName } from "../../src/config/config.ts";
import { configProblems } from "../support/problems.ts";
import { tempDir } from "../support/tmp.ts";

const dir = tempDir();
const pem = join(dir, "x.pem");
writeFileSync(pem, "-----BEGIN-----\n");

function configFile(values: Record<string, unknown>): string {
  const path = join(tempDir(), "kexo.json");
  writeFileSync(path, JSON.stringify(values));
  return path;
}

function problems(flags: Record<string, string | boolean>, env: Record<string, string> = {}, needBrokers = false): string[] {
  return configProblems(() => resolveConfig(flags, env, { needBrokers }));
}

/** For each setting: a distinct valid value as text, and how it reads back from the Config. */
const VALID: Record<SettingName, { values: [string, string, string]; read(c: Config): unknown; parsed?: (s: string) => unknown }> = {
  brokers: { values: ["f:1", "e:2", "c:3"], read: (c) => c.brokers, parsed: (s) => [s] },
  handlers: { values: ["./f", "./e", "./c"], read: (c) => c.handlers },
  db: { values: ["file:f.db", "file:e.db", "file:c.db"], read: (c) => c.db },
  http: { values: ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"], read: (c) => `${c.http.host}:${c.http.port}` },
  logLevel: { values: ["debug", "warn", "error"], read: (c) => c.logLevel },
  shutdownTimeout: { values: ["1", "2", "3"], read: (c) => c.shutdownTimeoutMs, parsed: Number },
  clientId: { values: ["f", "e", "c"], read: (c) => c.clientId },
  tls: { values: ["true", "false", "true"], read: (c) => c.tls, parsed: (s) => s === "true" },
  tlsCa: { values: [pem, pem, pem], read: (c) => c.tlsFiles?.ca },
  tlsCert: { values: [pem, pem, pem], read: (c) => c.tlsFiles?.cert },
  tlsKey: { values: [pem, pem, pem], read: (c) => c.tlsFiles?.key },
  saslMechanism: { values: ["plain", "scram-sha-256", "scram-sha-512"], read: (c) => c.sasl?.mechanism },
  saslUsername: { values: ["f", "e", "c"], read: (c) => c.sasl?.username },
  saslPassword: { values: ["f", "e", "c"], read: (c) => c.sasl?.password },
  schemaRegistry: { values: ["http://f:1", "http://e:2", "http://c:3"], read: (c) => c.schemaRegistry?.url },
  schemaRegistryUsername: { values: ["f", "e", "c"], read: (c) => c.schemaRegistry?.username },
  schemaRegistryPassword: { values: ["f", "e", "c"], read: (c) => c.schemaRegistry?.password },
};
/** What a setting needs beside it to be valid. */
const COMPANIONS: Partial<Record<SettingName, Record<string, string>>> = {
  tlsCert: { "tls-key": pem },
  tlsKey: { "tls-cert": pem },
  saslMechanism: { "sasl-username": "u", "sasl-password": "p" },
  saslUsername: { "sasl-mechanism": "plain", "sasl-password": "p" },
  saslPassword: { "sasl-mechanism": "plain", "sasl-username": "u" },
  schemaRegistryUsername: { "schema-registry": "http://r:1", "schema-registry-password": "p" },
  schemaRegistryPassword: { "schema-registry": "http://r:1", "schema-registry-username": "u" },
};

describe("precedence: flag > environment > config file > default", () => {
  test("the table covers every setting", () => {
    expect(Object.keys(VALID).sort()).toEqual(Object.keys(SETTINGS).sort());
  });

  for (const [name, s] of Object.entries(SETTINGS) as [SettingName, (typeof SETTINGS)[SettingName]][]) {
    test(`${s.flag} / ${s.env}`, () => {
      const { values, read, parsed = (x: string) => x } = VALID[name];
      const [fromFlag, fromEnv, fromFile] = values;
      const base = COMPANIONS[name] ?? {};
      const file = configFile({ ...base, [s.flag]: fromFile });
      // tls is a bare flag (--tls): it can only say true.
      const flag = name === "tls" ? true : fromFlag;
      const resolve = (flags: Record<string, string | boolean>, env: Record<string, string>) => read(resolveConfig({ config: file, ...flags }, env, { needBrokers: false }));
      expect(resolve({ [s.flag]: flag }, { [s.env]: fromEnv })).toEqual(parsed(String(flag)));
      expect(resolve({}, { [s.env]: fromEnv })).toEqual(parsed(fromEnv));
      expect(resolve({}, {})).toEqual(parsed(fromFile));
    });
  }

  test("defaults", () => {
    const c = resolveConfig({}, {}, { needBrokers: false });
    expect({ handlers: c.handlers, handlersGiven: c.handlersGiven, db: c.db, http: c.http, logLevel: c.logLevel, shutdownTimeoutMs: c.shutdownTimeoutMs, tls: c.tls })
      .toEqual({ handlers: "./handlers", handlersGiven: false, db: "file:kexo.db", http: { host: "0.0.0.0", port: 9464 }, logLevel: "info", shutdownTimeoutMs: 25000, tls: false });
    expect(c.clientId).toStartWith("kexo-");
    expect(c.sasl).toBeUndefined();
  });

  test("KEXO_CONFIG names the file; an empty environment value counts as unset", () => {
    const file = configFile({ db: "file:c.db", "client-id": "from-file" });
    const c = resolveConfig({}, { KEXO_CONFIG: file, KEXO_DB: "" }, { needBrokers: false });
    expect([c.db, c.clientId, c.configFile]).toEqual(["file:c.db", "from-file", file]);
  });

  test("a config file may list brokers as an array and give numbers and booleans as JSON", () => {
    const c = resolveConfig({ config: configFile({ brokers: ["a:1", "b:2"], "shutdown-timeout": 500, tls: true }) }, {}, { needBrokers: true });
    expect([c.brokers, c.shutdownTimeoutMs, c.tls]).toEqual([["a:1", "b:2"], 500, true]);
  });
});

describe("every problem as `path: message`", () => {
  const file = configFile({ "log-level": "loud" });
  test.each([
    [{ brokers: "a:1,b" }, {}, 'brokers: each broker must be host:port (got "b")'],
    [{ brokers: "kafka://alice:s3cret@host:9092" }, {}, "brokers: each broker must be host:port (a URL or user:password@ is not one)"],
    [{ db: "journal.db" }, {}, "db: must be file:PATH, libsql://HOST, http(s)://HOST or ws(s)://HOST (did you mean file:journal.db?)"],
    [{ brokers: " , " }, {}, "brokers: must list at least one host:port"],
    [{ handlers: "" }, {}, "handlers: must not be empty"],
    [{}, { KEXO_DB: "postgres://x" }, "db (KEXO_DB): must be file:PATH, libsql://HOST, http(s)://HOST or ws(s)://HOST"],
    [{ http: "localhost:99999" }, {}, "http: must be HOST:PORT with a port from 0 to 65535 (0 picks a free port)"],
    [{ config: file }, {}, `log-level (${file}): must be one of debug, info, warn, error, silent`],
    [{}, { KEXO_SHUTDOWN_TIMEOUT: "soon" }, "shutdown-timeout (KEXO_SHUTDOWN_TIMEOUT): must be a whole number of milliseconds"],
    [{ "shutdown-timeout": "3600001" }, {}, "shutdown-timeout: must be at most 3600000 (one hour)"],
    [{ "client-id": "" }, {}, "client-id: must not be empty"],
    [{}, { KEXO_TLS: "maybe" }, "tls (KEXO_TLS): must be true or false"],
    [{}, { KEXO_TLS_CA: "/nonexistent.pem" }, "tls-ca (KEXO_TLS_CA): cannot read /nonexistent.pem; give a readable PEM file"],
    [{ "tls-cert": pem }, {}, "tls-key: tls-cert and tls-key go together (a client certificate and its private key)"],
    [{ "sasl-mechanism": "gssapi", "sasl-username": "u", "sasl-password": "p" }, {}, "sasl-mechanism: must be plain, scram-sha-256 or scram-sha-512"],
    [{ "sasl-mechanism": "plain", "sasl-password": "p" }, {}, "sasl-username: required with sasl-mechanism plain"],
    [{ "sasl-mechanism": "plain", "sasl-username": "u" }, {}, "sasl-password: required with sasl-mechanism plain"],
    [{}, { KEXO_SASL_PASSWORD: "p" }, "sasl-mechanism: required when a SASL username or password is set"],
  ] as [Record<string, string>, Record<string, string>, string][])("%j %j → %s", (flags, env, expected) => {
    expect(problems(flags, env)).toEqual(expected ? [expected] : []);
  });

  test("brokers are required for run; unknown and misspelt file keys are named", () => {
    expect(problems({}, {}, true)).toEqual(["brokers: required: pass --brokers host:port[,host:port…] or set KEXO_BROKERS"]);
    const f = configFile({ broker: "a:1", frobnicate: 1 });
    const known = Object.values(SETTINGS).map((s) => s.flag).join(", ");
    expect(problems({ config: f })).toEqual([
      `broker (${f}): unknown key (did you mean "brokers"?); known keys: ${known}`,
      `frobnicate (${f}): unknown key; known keys: ${known}`,
    ]);
  });

  test("all problems at once, not the first only", () => {
    expect(problems({ http: "x", "client-id": "" }, { KEXO_LOG_LEVEL: "loud", KEXO_SASL_USERNAME: "u" }, true)).toHaveLength(5);
  });
});
