// Edges of the command line: with --json an error is one JSON object on stdout, whatever command
// failed and wherever; an empty flag value is a usage error (64) naming the flag, a blank value
// from the environment or a config file a config error (78) naming the setting and its source,
// an empty variable is unset; --log-level takes any case; each command has its own --help; SASL
// without TLS is a warning at start, never with the password.
import { describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { resolveConfig } from "../../src/config/config.ts";
import { configProblems } from "../support/problems.ts";
import { tempDir } from "../support/tmp.ts";
import { kexoAsync, kexoSync, WorkerProcess } from "../support/worker.ts";

const kexo = (args: string[], env: Record<string, string> = {}, cwd = tempDir()) => kexoSync(args, { cwd, env });

/** The one JSON object on stdout (fails when there is more, or none). */
function oneJson(stdout: string): Record<string, unknown> {
  const lines = stdout.trimEnd().split("\n");
  expect(lines).toHaveLength(1);
  return JSON.parse(lines[0]!) as Record<string, unknown>;
}

const handlers = tempDir();
writeFileSync(join(handlers, "h.ts"), `import { defineHandler } from "kexo";\nexport default defineHandler({ topics: ["t"], handle: async () => {} });\n`);

describe("--json: an error is one JSON object on stdout, with the same exit code", () => {
  const missingDb = () => `file:${join(tempDir(), "none.db")}`;
  test.each([
    ["a bad dead-letter id", ["dlq", "show", "NOPE", "--json"], 64, "usage", 'dead-letter id "NOPE" is not a number'],
    ["a line that does not parse", ["check", "--json", "--frob"], 64, "usage", "unknown flag --frob; run kexo help"],
    ["a misspelt flag", ["check", "--json", "--handler-dir", "x"], 64, "usage", "unknown flag --handler-dir (did you mean --handlers?)"],
    ["a missing argument", ["inspect", "--json"], 64, "usage", "kexo inspect ID: give the message's dedup id"],
    ["a missing journal (inspect)", ["inspect", "ID", "--json", "--db", "MISSING"], 69, "journal_not_found", "no journal at "],
    ["a missing journal (dlq list)", ["dlq", "list", "--json", "--db", "MISSING"], 69, "journal_not_found", "no journal at "],
  ] as [string, string[], number, string, string][])("%s", (_what, args, exitCode, code, message) => {
    const r = kexo(args.map((a) => (a === "MISSING" ? missingDb() : a)));
    expect(r.code).toBe(exitCode);
    expect(oneJson(r.stdout)).toEqual({ error: { exitCode, code, message: expect.stringContaining(message) } });
    // The human line stays on stderr.
    expect(r.stderr).toStartWith("kexo: ");
  });

  test("kexo check --json with bad config: every problem as {path, message}", () => {
    const r = kexo(["check", "--json", "--handlers", handlers, "--log-level", "loud"], { KEXO_SHUTDOWN_TIMEOUT: "soon" });
    expect(r.code).toBe(78);
    const out = oneJson(r.stdout) as { error: { exitCode: number; code: string; problems: unknown[] } };
    expect(out.error).toMatchObject({ exitCode: 78, code: "invalid_config" });
    expect(out.error.problems).toEqual([
      { path: "log-level", message: "must be one of debug, info, warn, error, silent" },
      { path: "shutdown-timeout (KEXO_SHUTDOWN_TIMEOUT)", message: "must be a whole number of milliseconds" },
    ]);
    expect(r.stderr).toContain("kexo: invalid configuration:\n  log-level: must be one of");
  });

  test("kexo dev --json that fails after it started: the error object is the last stdout line", async () => {
    // A handler that makes the journal's connection read-only: the next group commit fails, kexo stops (75).
    const dir = tempDir();
    writeFileSync(join(dir, "breaks.ts"), `import { defineHandler } from "kexo";
export default defineHandler({ topics: ["orders"], handle: async (_m, ctx) => { await ctx.tx((db) => db.execute("PRAGMA query_only = 1")); } });
`);
    const r = await kexoAsync(["dev", "--json", "--demo", "--demo-count", "5", "--handlers", dir, "--db", `file:${join(dir, "j.db")}`, "--http", "127.0.0.1:0"], { cwd: dir });
    expect(r.code).toBe(75);
    const last = JSON.parse(r.stdout.trimEnd().split("\n").at(-1)!) as { error: Record<string, unknown> };
    expect(last.error).toMatchObject({ exitCode: 75, code: "journal_commit_failed" });
    expect(String(last.error.message)).toMatch(/readonly|read-only|query_only/i);
  }, 60_000);

  test("without --json, stdout stays empty", () => {
    const r = kexo(["dlq", "show", "NOPE"]);
    expect([r.code, r.stdout]).toEqual([64, ""]);
  });
});

describe("empty values", () => {
  test.each([
    [["check", "--config", ""], "--config"],
    [["check", "--client-id", "  "], "--client-id"],
    [["check", "--brokers", ""], "--brokers"],
    [["check", "--handlers", ""], "--handlers"],
    [["check", "--db", ""], "--db"],
    [["check", "--http", ""], "--http"],
    [["check", "--log-level", ""], "--log-level"],
    [["dlq", "replay", "1", "--to", ""], "--to"],
    [["inspect", "x", "--handler", ""], "--handler"],
  ] as [string[], string][])("an empty flag value: %j is 64 naming %s", (args, flag) => {
    const r = kexo(args);
    expect(r.code).toBe(64);
    expect(r.stderr).toContain(`${flag} was given an empty value; give one, or leave the flag out`);
  });

  test("an empty argument is a usage error", () => {
    const r = kexo(["inspect", ""]);
    expect([r.code, r.stderr]).toEqual([64, expect.stringContaining("kexo inspect: an argument is empty")]);
  });

  test("an empty variable is unset: KEXO_CONFIG='' reads no file", () => {
    const r = kexo(["check", "--json", "--handlers", handlers], { KEXO_CONFIG: "", KEXO_CLIENT_ID: "" });
    expect(r.code).toBe(0);
    const { config } = oneJson(r.stdout) as { config: { configFile?: string; clientId: string } };
    expect([config.configFile, config.clientId]).toEqual([undefined, expect.stringMatching(/^kexo-/)]);
  });

  test("a blank client id from the environment or a file is 78 naming it and its source", () => {
    const env = kexo(["check", "--handlers", handlers], { KEXO_CLIENT_ID: "   " });
    expect(env.code).toBe(78);
    expect(env.stderr).toContain("client-id (KEXO_CLIENT_ID): must not be blank (only whitespace)");
    const file = join(tempDir(), "kexo.json");
    writeFileSync(file, JSON.stringify({ "client-id": "" }));
    const fromFile = kexo(["check", "--handlers", handlers, "--config", file]);
    expect(fromFile.code).toBe(78);
    expect(fromFile.stderr).toContain(`client-id (${file}): must not be empty`);
  });

  test("blank strings in a config file: each setting named once", () => {
    const file = join(tempDir(), "kexo.json");
    writeFileSync(file, JSON.stringify({
      handlers: " ",
      "tls-ca": "",
      "sasl-mechanism": "plain",
      "sasl-username": "",
      "sasl-password": " ",
      "schema-registry": "http://r:8081",
      "schema-registry-username": "",
      "schema-registry-password": "p",
    }));
    expect(configProblems(() => resolveConfig({ config: file }, {}, { needBrokers: false }))).toEqual([
      `handlers (${file}): must not be blank (only whitespace)`,
      `tls-ca (${file}): must not be empty`,
      `sasl-username (${file}): must not be empty`,
      `sasl-password (${file}): must not be blank (only whitespace)`,
      `schema-registry-username (${file}): must not be empty`,
    ]);
  });
});

describe("--log-level", () => {
  test("any case is accepted, as lower case", () => {
    for (const [flags, env, level] of [[["--log-level", "INFO"], {}, "info"], [[], { KEXO_LOG_LEVEL: "Debug" }, "debug"]] as const) {
      const r = kexo(["check", "--json", "--handlers", handlers, ...flags], env);
      expect(r.code).toBe(0);
      expect((oneJson(r.stdout) as { config: { logLevel: string } }).config.logLevel).toBe(level);
    }
  });

  test("an unknown level: 78 with the allowed ones and the likely meant one", () => {
    const r = kexo(["check", "--handlers", handlers, "--log-level", "WARNING"]);
    expect(r.code).toBe(78);
    expect(r.stderr).toContain('log-level: must be one of debug, info, warn, error, silent (did you mean "warn"?)');
  });
});

describe("each command's --help", () => {
  test.each([
    [["dlq", "--help"], ["kexo dlq list [--handler H]", "kexo dlq show ID", "kexo dlq replay (--all", "--to TOPIC", "--dry-run", "--db URL"], ["--demo", "kexo inspect"]],
    [["dlq", "replay", "-h"], ["kexo dlq replay (--all", "--to TOPIC", "--brokers"], ["kexo dlq list"]],
    [["run", "--help"], ["kexo run [flags]", "--brokers host:port", "--shutdown-timeout MS"], ["kexo dlq", "--json"]],
    [["inspect", "--help"], ["kexo inspect ID [--handler H] [--json]", "--handler H", "--db URL"], ["--brokers", "kexo run"]],
    [["check", "--help"], ["kexo check [flags] [--json]", "--json", "--handlers DIR"], ["kexo dlq", "--demo"]],
    [["dev", "--help"], ["kexo dev [flags] [--demo]", "--demo-count N", "--handlers DIR"], ["--brokers host:port", "kexo dlq"]],
    [["help", "inspect"], ["kexo inspect ID"], ["kexo run"]],
  ] as [string[], string[], string[]][])("kexo %j", (args, has, hasNot) => {
    const r = kexo(args);
    expect([r.code, r.stderr]).toEqual([0, ""]);
    expect(r.stdout).toStartWith("Usage:\n");
    for (const s of has) expect(r.stdout).toContain(s);
    for (const s of hasNot) expect(r.stdout).not.toContain(s);
  });

  test("kexo help TOPIC for a command that does not exist is a usage error (64), with the nearest command", () => {
    const r = kexo(["help", "chek"]);
    expect(r.code).toBe(64);
    expect(r.stderr).toContain('kexo help: unknown command "chek" (did you mean check?)');
    expect(r.stdout).toBe("");
  });

  test("kexo --help and kexo help: the general help", () => {
    for (const args of [["--help"], ["help"], ["frob", "--help"]]) {
      const r = kexo(args);
      expect(r.code).toBe(0);
      expect(r.stdout).toStartWith("kexo — exactly-once Kafka handlers\n");
      for (const s of ["kexo run", "kexo dev", "kexo check", "kexo dlq replay", "kexo inspect ID", "--sasl-password P"]) expect(r.stdout).toContain(s);
    }
  });
});

describe("SASL without TLS", () => {
  const PASSWORD = "pw-0c1d-not-in-logs";
  const sasl = { KEXO_SASL_MECHANISM: "plain", KEXO_SASL_USERNAME: "bob", KEXO_SASL_PASSWORD: PASSWORD };

  test("kexo run logs one warn line at start saying what to do, without the password", async () => {
    const w = new WorkerProcess(["run", "--brokers", "127.0.0.1:1", "--handlers", handlers, "--db", `file:${join(tempDir(), "j.db")}`, "--http", "127.0.0.1:0"], {
      env: { ...sasl, KEXO_LOG_LEVEL: "debug" },
      cwd: tempDir(),
    });
    try {
      const line = await w.waitForLog("the SASL warning", (l) => l.msg === "SASL credentials sent without TLS");
      expect(line).toMatchObject({ level: "warn", mechanism: "plain", detail: expect.stringContaining("set KEXO_TLS=true") });
      await w.waitForLog("starting", (l) => l.msg === "starting");
      expect(w.lines.filter((l) => l.msg === "SASL credentials sent without TLS")).toHaveLength(1);
      expect(w.raw.join("\n")).not.toContain(PASSWORD);
    } finally {
      w.kill();
      await w.exited();
    }
  }, 30_000);

  test("no warning with TLS", async () => {
    const w = new WorkerProcess(["run", "--brokers", "127.0.0.1:1", "--handlers", handlers, "--db", `file:${join(tempDir(), "j.db")}`, "--http", "127.0.0.1:0", "--tls"], {
      env: sasl,
      cwd: tempDir(),
    });
    try {
      await w.waitForLog("starting", (l) => l.msg === "starting");
      expect(w.find((l) => l.msg === "SASL credentials sent without TLS")).toBeUndefined();
    } finally {
      w.kill();
      await w.exited();
    }
  }, 30_000);
});
