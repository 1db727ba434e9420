// A start that hangs or fails: a signal while handler files load or while a setup() runs stops
// kexo at once with exit 0 (SPEC: a signal before the group is joined exits 0), a top-level await
// that never settles is a config error naming its file, and a start that failed or was stopped
// leaves the journal clean, so the next start does not take it for a crash.
import { afterEach, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { tempDir } from "./support/tmp.ts";
import { BUN, ROOT, runArgs, WorkerProcess } from "./support/worker.ts";

const running: WorkerProcess[] = [];
afterEach(() => {
  for (const w of running.splice(0)) w.kill();
});

function handlerDir(body: string): string {
  const dir = tempDir();
  writeFileSync(join(dir, "h.ts"), `import { defineHandler } from "kexo";\n${body}`);
  return dir;
}

const HANGING_SETUP = handlerDir(`export default defineHandler({ topics: ["t"], setup: () => new Promise<void>(() => {}), handle: async () => {} });`);
const HANGING_LOAD = handlerDir(`await new Promise(() => {});\nexport default defineHandler({ topics: ["t"], handle: async () => {} });`);
const GOOD = handlerDir(`export default defineHandler({ topics: ["t"], handle: async () => {} });`);

function start(handlers: string, db: string, ...extra: string[]): WorkerProcess {
  const w = new WorkerProcess(runArgs("127.0.0.1:1", handlers, db, ...extra));
  running.push(w);
  return w;
}

const UNCLEAN = (l: { msg: string }) => l.msg.startsWith("kexo did not stop cleanly last time");

test("SIGTERM while a setup() never settles exits 0 at once, naming the setup; the next start finds the journal clean", async () => {
  const db = join(tempDir(), "j.db");
  const w = start(HANGING_SETUP, db);
  await w.waitForLog("starting", (l) => l.msg === "starting");
  await Bun.sleep(500);
  w.kill("SIGTERM");
  expect(await w.exited()).toBe(0);
  expect(w.find((l) => l.msg === "signal received while starting; nothing to drain")?.stopped).toContain(`${join(HANGING_SETUP, "h.ts")}'s setup() ran`);
  // The next start fails (it cannot listen there), but does not take the last one for a crash.
  const next = start(GOOD, db, "--http", "192.0.2.1:1");
  expect(await next.exited()).not.toBe(0);
  expect(next.find(UNCLEAN)).toBeUndefined();
});

test("a start that fails leaves a clean journal clean: no crash guard on the next start", async () => {
  const db = join(tempDir(), "j.db");
  // Cannot listen: the start fails (69) after the journal was opened and marked running.
  const failed = start(GOOD, db, "--http", "192.0.2.1:1");
  expect(await failed.exited()).toBe(69);
  const next = start(GOOD, db, "--http", "192.0.2.1:1");
  expect(await next.exited()).toBe(69);
  expect(next.find(UNCLEAN)).toBeUndefined();
});

test("SIGTERM while a handler file's top-level await never settles exits 0; check gives up naming the file (78)", async () => {
  const w = start(HANGING_LOAD, join(tempDir(), "j.db"));
  await Bun.sleep(1500);
  w.kill("SIGTERM");
  expect(await w.exited()).toBe(0);
  expect(w.find((l) => l.msg.startsWith("signal received while loading handlers"))).toBeDefined();

  const r = Bun.spawnSync([BUN, join(ROOT, "main.ts"), "check", "--handlers", HANGING_LOAD], { env: { ...process.env, KEXO_HANDLER_LOAD_TIMEOUT_MS: "500" }, stdin: "ignore" });
  expect(r.exitCode).toBe(78);
  expect(r.stderr.toString()).toContain(`${join(HANGING_LOAD, "h.ts")}: failed to load: did not finish loading within 0.5 s; look for a top-level await that never settles`);
});

test("a handler's stray exception or rejection is a JSON log line, not the end of kexo", async () => {
  const stray = handlerDir(`export default defineHandler({ topics: ["t"], handle: async () => {},
  async setup() {
    setTimeout(() => { throw new Error("stray timer"); }, 10);
    void Promise.reject(new Error("stray promise"));
    await new Promise((r) => setTimeout(r, 300));
  } });`);
  // The start goes on past them and fails where expected (cannot listen there: 69), not with 1.
  const w = start(stray, join(tempDir(), "j.db"), "--http", "192.0.2.1:1");
  expect(await w.exited()).toBe(69);
  expect(w.find((l) => l.msg.startsWith("uncaught exception"))?.error).toMatchObject({ message: "stray timer" });
  expect(w.find((l) => l.msg.startsWith("unhandled promise rejection"))?.error).toMatchObject({ message: "stray promise" });
  // Nothing in plain text but the exit message.
  expect(w.raw.filter((l) => !l.startsWith("{") && !l.startsWith("kexo: "))).toEqual([]);
});

test("SIGTERM while the start retries a libSQL server that does not answer: exit 0, no more tries", async () => {
  // Port 1 refuses at once: each try fails fast, and the start waits before the next.
  const w = new WorkerProcess(["run", "--brokers", "127.0.0.1:1", "--handlers", GOOD, "--db", "http://127.0.0.1:1", "--http", "127.0.0.1:0"]);
  running.push(w);
  await w.waitForLog("a retry", (l) => l.msg === "journal server unreachable at start; retrying");
  const at = Date.now();
  w.kill("SIGTERM");
  expect(await w.exited()).toBe(0);
  expect(Date.now() - at).toBeLessThan(5000);
  expect(w.find((l) => l.msg.startsWith("signal received while starting"))).toBeDefined();
}, 60_000);
