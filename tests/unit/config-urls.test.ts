// URL-like and numeric settings that the parsers downstream would crash on, or take for something
// else, are config problems (`path: message`, exit 78) naming the value: the schema registry URL,
// broker ports and hosts, the HTTP host, and the journal URL (ws(s):// accepted, as
// @libsql/client connects to it and the README documents it).
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { resolveConfig } from "../../src/config/config.ts";
import { configProblems } from "../support/problems.ts";
import { tempDir } from "../support/tmp.ts";
import { BUN, ROOT } from "../support/worker.ts";

function problems(flags: Record<string, string>, env: Record<string, string> = {}): string[] {
  return configProblems(() => resolveConfig(flags, env, { needBrokers: false }));
}

describe("bad values are problems, not crashes", () => {
  test.each([
    [{ "schema-registry": "notaurl" }, {}, 'schema-registry: must be a URL like http://host:8081; "notaurl" is not one'],
    [{}, { KEXO_SCHEMA_REGISTRY: "notaurl" }, 'schema-registry (KEXO_SCHEMA_REGISTRY): must be a URL like http://host:8081; "notaurl" is not one'],
    // No value echoed that may hold a password.
    [{ "schema-registry": "u:hunter2@registry:8081" }, {}, "schema-registry: must be a URL like http://host:8081; the value given is not one"],
    [{ "schema-registry": "ftp://registry" }, {}, "schema-registry: must be an http:// or https:// URL"],
    [{ brokers: "kafka:99999" }, {}, "brokers: kafka:99999: port 99999 is out of range (1 to 65535)"],
    [{ brokers: "a:1,kafka:0" }, {}, "brokers: kafka:0: port 0 is out of range (1 to 65535)"],
    [{ brokers: "999.1.1.1:9092" }, {}, "brokers: 999.1.1.1:9092: 999.1.1.1 is not an IP address or host name"],
    [{ http: "999.999.1.1:80" }, {}, "http: 999.999.1.1 is not an IP address or host name; use e.g. 0.0.0.0:9464 (every interface) or 127.0.0.1:9464"],
    [{ http: "bad host:80" }, {}, "http: bad host is not an IP address or host name; use e.g. 0.0.0.0:9464 (every interface) or 127.0.0.1:9464"],
    [{ db: "libsql://" }, {}, 'db: "libsql://" is not a URL with a host; expected e.g. libsql://HOST[:PORT]'],
    [{ db: "libsql://?authToken=sekrit" }, {}, 'db: "libsql://?authToken=[redacted]" is not a URL with a host; expected e.g. libsql://HOST[:PORT]'],
  ] as [Record<string, string>, Record<string, string>, string][])("%j %j → %s", (flags, env, expected) => {
    expect(problems(flags, env)).toEqual([expected]);
  });

  test.each([
    [{ db: "ws://journal:8080" }],
    [{ db: "wss://my-db.turso.io" }],
    [{ db: "libsql://journal:8080?tls=0" }],
    [{ db: "https://my-db.turso.io" }],
    [{ brokers: "kafka-1.internal:9092,10.0.0.7:9093,my_broker:1,b:65535" }],
    [{ http: "[::1]:0" }],
    [{ http: ":9464" }],
    [{ http: "localhost:9464" }],
    [{ "schema-registry": "https://registry.internal:8081/prefix" }],
  ] as [Record<string, string>][])("%j is valid", (flags) => {
    expect(problems(flags)).toEqual([]);
  });

  test("through main.ts: exit 78 in the config-error style, no stack", () => {
    const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("KEXO_")));
    const r = Bun.spawnSync([BUN, join(ROOT, "main.ts"), "check", "--handlers", tempDir(), "--http", "999.999.1.1:80"], {
      cwd: tempDir(),
      env: { ...clean, KEXO_SCHEMA_REGISTRY: "notaurl", KEXO_BROKERS: "kafka:99999" },
      stdin: "ignore",
    });
    const stderr = r.stderr.toString();
    expect(r.exitCode).toBe(78);
    expect(stderr).toStartWith("kexo: invalid configuration:\n");
    expect(stderr).toContain('  schema-registry (KEXO_SCHEMA_REGISTRY): must be a URL like http://host:8081; "notaurl" is not one\n');
    expect(stderr).toContain("  brokers (KEXO_BROKERS): kafka:99999: port 99999 is out of range (1 to 65535)\n");
    expect(stderr).toContain("  http: 999.999.1.1 is not an IP address or host name");
    expect(stderr).not.toMatch(/^\s+at /m);
  });
});
