// The test processes' abort guard (support/abort-guard.c): abort() in one of librdkafka's threads
// (named "rdk:…", as the mock cluster's is) parks that thread and the process lives on; abort() in
// the main thread, or in any other thread, still ends the process. Each case in a child process.
import { expect, test } from "bun:test";
import { join } from "node:path";

const libc = `dlopen("libc.so.6", { abort: { args: [], returns: "void" }, prctl: { args: ["int", "ptr", "u64", "u64", "u64"], returns: "int" } }).symbols`;

const script = (where: "main" | "rdk" | "other") => `
import { dlopen } from "bun:ffi";
import { brokerThreadParked, installAbortGuard } from ${JSON.stringify(join(import.meta.dir, "..", "support", "abort-guard.ts"))};
installAbortGuard();
const where = ${JSON.stringify(where)};
if (where === "main") ${libc}.abort();
const inThread = \`import { dlopen, ptr } from "bun:ffi";
  const c = ${libc.replaceAll("`", "\\`")};
  // PR_SET_NAME (15): the thread's name, as librdkafka names its own.
  if (${JSON.stringify(where)} === "rdk") c.prctl(15, ptr(Buffer.from("rdk:test\\\\0")), 0, 0, 0);
  c.abort();\`;
new Worker(URL.createObjectURL(new Blob([inThread])));
const until = Date.now() + 5000;
while (!brokerThreadParked() && Date.now() < until) await Bun.sleep(20);
console.log(brokerThreadParked() ? "parked, alive" : "not parked");
process.exit(0);
`;

const run = (where: "main" | "rdk" | "other") => Bun.spawnSync([process.execPath, "-e", script(where)], { stderr: "pipe" });

test.skipIf(process.platform !== "linux")("abort() in a librdkafka thread parks it and the process lives on; in the main thread or another thread it still ends the process", () => {
  const rdk = run("rdk");
  expect(rdk.stdout.toString().trim()).toBe("parked, alive");
  expect(rdk.exitCode).toBe(0);
  expect(rdk.stderr.toString()).toContain("failed an assertion and called abort()");
  for (const where of ["main", "other"] as const) {
    const r = run(where);
    const ended = r.signalCode ?? r.exitCode;
    expect({ where, aborted: ended === "SIGABRT" || ended === 134 }).toEqual({ where, aborted: true });
  }
});
