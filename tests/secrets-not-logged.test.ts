// Secrets never reach the output: with SASL credentials and a journal token given by flag, by
// environment and by config file, at debug level, through a failed broker connection, `kexo check`
// (text and --json) and a config error, the password and the token appear nowhere in stdout/stderr.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { startBroker, type TestBroker } from "./support/broker.ts";
import { tempDir } from "./support/tmp.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const PASSWORD = "pw-7f3a91c2-do-not-log";
const TOKEN = "tok-51be0d7e-do-not-log";
let broker: TestBroker;
let dir: string;
let handlers: string;

beforeAll(async () => {
  // The development broker speaks no SASL: the connection fails after the SASL handshake starts.
  broker = await startBroker({ "secret-in": 1 });
  dir = tempDir();
  handlers = join(dir, "handlers");
  await Bun.write(join(handlers, "h.ts"), `import { defineHandler } from "kexo";\nexport default defineHandler({ topics: ["secret-in"], handle: async () => {} });\n`);
});

afterAll(async () => {
  await broker?.close();
});

async function output(args: string[], env: Record<string, string> = {}): Promise<{ code: number; text: string }> {
  const w = new WorkerProcess(args, { env: { KEXO_LOG_LEVEL: "debug", ...env }, cwd: dir });
  const code = await w.exited();
  await Bun.sleep(100);
  return { code, text: `${w.stdout}\n${w.raw.join("\n")}` };
}

test.each([
  ["flags", ["--sasl-mechanism", "scram-sha-256", "--sasl-username", "bob", "--sasl-password", PASSWORD], {}],
  ["environment", [], { KEXO_SASL_MECHANISM: "plain", KEXO_SASL_USERNAME: "bob", KEXO_SASL_PASSWORD: PASSWORD }],
] as const)("SASL password from %s: not in the output of a run that fails to connect", async (_from, flags, env) => {
  const r = await output(runArgs(broker.brokers, handlers, join(dir, "j.db"), ...flags), env);
  expect(r.code).toBe(69);
  // The SASL path ran: kafkajs connected with the credentials and checked the broker's SASL support.
  expect(r.text).toContain('"sasl":true');
  expect(r.text).toContain("Verified support for SaslAuthenticate");
  expect(r.text).not.toContain(PASSWORD);
}, 60_000);

test("kexo check, text and --json, with credentials from a config file and a journal token", async () => {
  const config = join(dir, "kexo.json");
  writeFileSync(config, JSON.stringify({ "sasl-mechanism": "scram-sha-512", "sasl-username": "bob", "sasl-password": PASSWORD }));
  const db = `libsql://journal.example.io?authToken=${TOKEN}`;
  for (const args of [["check"], ["check", "--json"]]) {
    const r = await output([...args, "--handlers", handlers, "--config", config, "--db", db]);
    expect(r.code).toBe(0);
    expect(r.text).toContain("journal.example.io");
    expect(r.text).not.toContain(PASSWORD);
    expect(r.text).not.toContain(TOKEN);
  }
}, 30_000);

test("a config error next to the credentials does not echo them", async () => {
  const r = await output(["check", "--handlers", handlers, "--sasl-mechanism", "kerberos", "--sasl-username", "bob"], { KEXO_SASL_PASSWORD: PASSWORD });
  expect(r.code).toBe(78);
  expect(r.text).toContain("sasl-mechanism: must be plain, scram-sha-256 or scram-sha-512");
  expect(r.text).not.toContain(PASSWORD);
}, 30_000);
