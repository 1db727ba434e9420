// The test processes' abort guard (support/abort-guard.c): abort() in a thread other than the main
// one (as librdkafka's mock cluster thread calls it on a failed assertion) parks that thread and the
// process lives on; abort() in the main thread still ends the process. Run in a child process.
import { expect, test } from "bun:test";
import { join } from "node:path";

const script = (where: "thread" | "main") => `
import { dlopen } from "bun:ffi";
import { brokerThreadParked, installAbortGuard } from ${JSON.stringify(join(import.meta.dir, "..", "support", "abort-guard.ts"))};
installAbortGuard();
const abortHere = \`import { dlopen } from "bun:ffi"; dlopen("libc.so.6", { abort: { args: [], returns: "void" } }).symbols.abort();\`;
if (${JSON.stringify(where)} === "main") {
  dlopen("libc.so.6", { abort: { args: [], returns: "void" } }).symbols.abort();
} else {
  new Worker(URL.createObjectURL(new Blob([abortHere])));
  const until = Date.now() + 5000;
  while (!brokerThreadParked() && Date.now() < until) await Bun.sleep(20);
  console.log(brokerThreadParked() ? "parked, alive" : "not parked");
  process.exit(0);
}
`;

test.skipIf(process.platform !== "linux")("abort() in another thread parks it and the process lives on; in the main thread it still ends the process", () => {
  const thread = Bun.spawnSync([process.execPath, "-e", script("thread")], { stderr: "pipe" });
  expect(thread.stdout.toString().trim()).toBe("parked, alive");
  expect(thread.exitCode).toBe(0);
  expect(thread.stderr.toString()).toContain("failed an assertion and called abort()");
  const main = Bun.spawnSync([process.execPath, "-e", script("main")], { stderr: "pipe" });
  expect(main.signalCode ?? main.exitCode).toBeOneOf(["SIGABRT", 134]);
});
