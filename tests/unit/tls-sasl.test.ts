// TLS and SASL settings map onto kafkajs's `ssl` and `sasl`: flags, environment and config file
// reach the same options, TLS files are read at start, and bad combinations are config errors.
import { describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { resolveConfig } from "../../src/config/config.ts";
import { kafkaConfig, sslOptions } from "../../src/kafka/client.ts";
import { createLogger, redactUrl } from "../../src/log.ts";
import { configProblems as problems } from "../support/problems.ts";
import { tempDir } from "../support/tmp.ts";

const resolve = (flags: Record<string, string | boolean>, env: Record<string, string> = {}) => resolveConfig(flags, env, { needBrokers: false });

describe("TLS", () => {
  const dir = tempDir();
  const pem = (name: string) => {
    const path = join(dir, name);
    writeFileSync(path, `-----BEGIN ${name}-----\n`);
    return path;
  };
  const ca = pem("ca.pem");
  const cert = pem("cert.pem");
  const key = pem("key.pem");

  test("off by default; --tls or KEXO_TLS=true uses the system's CAs", () => {
    expect(sslOptions(resolve({}))).toBeUndefined();
    expect(sslOptions(resolve({ tls: true }))).toBe(true);
    expect(sslOptions(resolve({}, { KEXO_TLS: "true" }))).toBe(true);
    expect(sslOptions(resolve({}, { KEXO_TLS: "0" }))).toBeUndefined();
  });

  test("CA, certificate and key files imply TLS and reach kafkajs as PEM text", () => {
    const config = resolve({ "tls-ca": ca }, { KEXO_TLS_CERT: cert, KEXO_TLS_KEY: key });
    expect(config.tls).toBe(true);
    expect(sslOptions(config)).toEqual({ ca: ["-----BEGIN ca.pem-----\n"], cert: "-----BEGIN cert.pem-----\n", key: "-----BEGIN key.pem-----\n" });
  });

  test("unreadable files, a certificate without its key, and files with tls off are reported", () => {
    expect(problems(() => resolve({ "tls-ca": join(dir, "missing.pem"), "tls-cert": cert }))).toEqual([
      `tls-ca: cannot read ${join(dir, "missing.pem")}; give a readable PEM file`,
      "tls-key: tls-cert and tls-key go together (a client certificate and its private key)",
    ]);
    expect(problems(() => resolve({ "tls-ca": ca }, { KEXO_TLS: "false" }))).toEqual(["tls (KEXO_TLS): is false, but TLS files are given; drop one or the other"]);
    expect(problems(() => resolve({}, { KEXO_TLS: "maybe" }))).toEqual(["tls (KEXO_TLS): must be true or false"]);
  });
});

describe("SASL", () => {
  test.each(["plain", "scram-sha-256", "scram-sha-512", "SCRAM-SHA-512"])("mechanism %s maps to kafkajs's sasl option", (mechanism) => {
    const config = resolve({ "sasl-mechanism": mechanism, "sasl-username": "bob", tls: true }, { KEXO_SASL_PASSWORD: "pw" });
    const kafkajs = kafkaConfig({ ...config, brokers: ["b:9093"] }, createLogger({ level: "silent" }));
    expect(kafkajs.sasl).toEqual({ mechanism: mechanism.toLowerCase() as "plain", username: "bob", password: "pw" });
    expect(kafkajs.ssl).toBe(true);
  });

  test("an unknown mechanism, or one without username and password, is reported", () => {
    expect(problems(() => resolve({ "sasl-mechanism": "gssapi", "sasl-username": "u", "sasl-password": "p" }))).toEqual([
      "sasl-mechanism: must be plain, scram-sha-256 or scram-sha-512",
    ]);
    expect(problems(() => resolve({}, { KEXO_SASL_MECHANISM: "plain" }))).toEqual([
      "sasl-username: required with sasl-mechanism plain",
      "sasl-password: required with sasl-mechanism plain",
    ]);
  });
});

test("redactUrl hides tokens and passwords in journal URLs", () => {
  expect(redactUrl("libsql://db.example.io?authToken=abc.def&tls=1")).toBe("libsql://db.example.io?authToken=[redacted]&tls=1");
  expect(redactUrl("https://user:pw@host:8080/x")).toBe("https://user:[redacted]@host:8080/x");
  expect(redactUrl("file:kexo.db")).toBe("file:kexo.db");
});
