// `kexo dev --demo` with handlers of one's own: the demo produces only to the example topics a
// handler consumes. With none (here a handler of "greetings"), it says so once and produces
// nothing (it used to produce to orders and payments anyway and print its progress every second,
// never done). With --json, stdout carries JSON objects only.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { tempDir } from "./support/tmp.ts";
import { waitUntil } from "./support/wait.ts";
import { WorkerProcess } from "./support/worker.ts";

const GREET = `import { defineHandler } from "kexo";
export default defineHandler({ topics: ["greetings"], async handle() {} });
`;

test.each([false, true])("dev --demo with handlers that consume none of the demo's topics says so once (--json: %p)", async (json) => {
  const dir = tempDir();
  await Bun.write(join(dir, "handlers", "greet.ts"), GREET);
  const dev = new WorkerProcess(["dev", "--demo", "--handlers", join(dir, "handlers"), "--db", `file:${join(dir, "kexo.db")}`, "--http", "127.0.0.1:0", ...(json ? ["--json"] : [])], { cwd: dir });
  await waitUntil("the demo's answer", () => dev.stdout.includes("none of these handlers consumes") || undefined, { timeoutMs: 30_000 });
  await Bun.sleep(2500);
  dev.kill("SIGTERM");
  expect(await dev.exited()).toBe(0);
  const lines = dev.stdout.split("\n").filter((l) => l.trim() !== "");
  expect(lines.length).toBe(1);
  if (json) expect(JSON.parse(lines[0]!)).toMatchObject({ demo: "skipped" });
  else expect(lines[0]).toStartWith("demo: the demo's sample messages go to orders and payments");
}, 60_000);

test("dev --demo --json with the example handlers: every stdout line is a JSON object, to the last", async () => {
  const dir = tempDir();
  const handlers = join(import.meta.dir, "..", "handlers");
  const dev = new WorkerProcess(["dev", "--demo", "--demo-count", "50", "--json", "--handlers", handlers, "--db", `file:${join(dir, "kexo.db")}`, "--http", "127.0.0.1:0"], { cwd: dir });
  await waitUntil("the demo done", () => dev.stdout.includes('"demo":"done"') || undefined, { timeoutMs: 60_000 });
  await Bun.sleep(500);
  dev.kill("SIGTERM");
  expect(await dev.exited()).toBe(0);
  const lines = dev.stdout.split("\n").filter((l) => l.trim() !== "");
  for (const l of lines) expect(() => JSON.parse(l)).not.toThrow();
  expect(JSON.parse(lines.at(-1)!)).toMatchObject({ demo: "done", processed: 100 });
}, 90_000);
