// `kexo check` loads config and handlers without touching the network and prints the plan: each
// handler's topics, group, ordering, concurrency, retry and dead-letter topics, as a table or as
// JSON (--json); the repository's handlers/ are the default when no --handlers is given. SASL
// without TLS is a warning in the plan, as at start, never with the password.
import { expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { tempDir } from "./support/tmp.ts";
import { BUN, ROOT } from "./support/worker.ts";

function check(args: string[], cwd = ROOT, extraEnv: Record<string, string> = {}) {
  const env = { ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("KEXO_"))), ...extraEnv };
  const r = Bun.spawnSync([BUN, join(ROOT, "main.ts"), "check", ...args], { cwd, env, stdin: "ignore" });
  return { code: r.exitCode, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

const dir = tempDir();
writeFileSync(
  join(dir, "audit.ts"),
  `import { defineHandler } from "kexo";
export default defineHandler({ topics: ["a", "b"], order: "topic", deadLetter: false, concurrency: 1, handle: async () => {} });`,
);
writeFileSync(
  join(dir, "ledger.ts"),
  `import { defineHandler, v } from "kexo";
export default defineHandler({ name: "book", groupId: "ledger-g", topics: [/^ledger\\..+/], order: "key", schema: v.object({}), key: () => "k",
  retry: { attempts: 3, initialDelayMs: 10, maxDelayMs: 100 }, deadLetter: "ledger-dead", handle: async () => {} });`,
);
writeFileSync(join(dir, "notes.md"), "not a handler");

test("the table: one row per handler with its plan; no network needed", () => {
  // Brokers that don't exist: check never connects.
  const r = check(["--handlers", dir, "--brokers", "192.0.2.1:9092", "--db", "file:/nonexistent/dir/j.db", "--http", "127.0.0.1:0"]);
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
  const lines = r.stdout.trimEnd().split("\n");
  expect(lines[0]).toBe("config ok: brokers 192.0.2.1:9092 · db file:/nonexistent/dir/j.db · http 127.0.0.1:0");
  expect(lines[1]).toBe(`2 handlers from ${dir}:`);
  expect(lines[3]!.split(/\s{2,}/)).toEqual(["HANDLER", "TOPICS", "GROUP", "ORDER", "FORMAT", "CONCURRENCY", "RETRY", "DEAD LETTERS"]);
  expect(lines[4]!.split(/\s{2,}/)).toEqual(["audit", "a,b", "kexo-audit-a-b", "topic", "raw", "1", "5× 200–30000 ms", "off (retry forever)"]);
  expect(lines[5]!.split(/\s{2,}/)).toEqual(["book", "/^ledger\\..+/", "ledger-g", "key", "json", "16", "3× 10–100 ms", "ledger-dead"]);
  expect(lines).toHaveLength(6);
});

test("--json: the same plan and the resolved config, for scripts", () => {
  const r = check(["--json", "--handlers", dir]);
  expect(r.code).toBe(0);
  const out = JSON.parse(r.stdout);
  expect(out.ok).toBe(true);
  expect(out.handlersFrom).toBe(dir);
  expect(out.config).toMatchObject({ handlers: dir, db: "file:kexo.db", http: { host: "0.0.0.0", port: 9464 }, logLevel: "info", tls: false });
  expect(out.handlers).toEqual([
    {
      name: "audit", file: join(dir, "audit.ts"), topics: ["a", "b"], group: "kexo-audit-a-b", order: "topic", format: "raw", concurrency: 1, kafkaTransactions: false,
      retry: { attempts: 5, initialDelayMs: 200, maxDelayMs: 30000 }, deadLetter: [false, false], schema: false, key: false,
    },
    {
      name: "book", file: join(dir, "ledger.ts"), topics: ["/^ledger\\..+/"], group: "ledger-g", order: "key", format: "json", concurrency: 16, kafkaTransactions: false,
      retry: { attempts: 3, initialDelayMs: 10, maxDelayMs: 100 }, deadLetter: ["ledger-dead"], schema: true, key: true,
    },
  ]);
});

test("default: the repository's handlers/, with their default dead-letter topics", () => {
  const out = JSON.parse(check(["--json"]).stdout);
  expect(out.handlersFrom).toBe("./handlers");
  expect(out.handlers.map((h: { name: string; deadLetter: string[] }) => [h.name, h.deadLetter])).toEqual([
    ["orders", ["orders.dlq"]],
    ["payments", ["payments.dlq"]],
  ]);
});

test("SASL without TLS: a warning in the plan (text and --json), never the password; none with TLS", () => {
  const PASSWORD = "pw-9e2b-not-printed";
  const sasl = { KEXO_SASL_MECHANISM: "scram-sha-256", KEXO_SASL_USERNAME: "bob", KEXO_SASL_PASSWORD: PASSWORD };
  const text = check(["--handlers", dir], ROOT, sasl);
  expect(text.code).toBe(0);
  const lines = text.stdout.split("\n");
  expect(lines[1]).toStartWith("warning: SASL credentials sent without TLS (sasl-mechanism scram-sha-256): ");
  expect(lines[1]).toContain("set KEXO_TLS=true");
  expect(lines[2]).toBe(`2 handlers from ${dir}:`);
  const json = check(["--json", "--handlers", dir], ROOT, sasl);
  expect(JSON.parse(json.stdout).warnings).toEqual([lines[1]!.slice("warning: ".length)]);
  expect(text.stdout + text.stderr + json.stdout + json.stderr).not.toContain(PASSWORD);
  const tls = check(["--json", "--handlers", dir, "--tls"], ROOT, sasl);
  expect(JSON.parse(tls.stdout).warnings).toEqual([]);
});
