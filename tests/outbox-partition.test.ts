// An outbox record naming a partition the topic does not have: kafkajs drops such records without
// a word, and the relay deleted the row as sent. Now it stays, with an error naming it and what to
// do (add partitions, or delete the row), never lost. The development broker cannot add
// partitions to a topic, so the test takes the other way out. kexo_outbox_pending shows the
// waiting rows meanwhile (it stayed at its last value, 0 here, while publishing failed).
import { expect, test } from "bun:test";
import Database from "libsql";
import { join } from "node:path";
import { withBroker, type TestBroker } from "./support/broker.ts";
import { waitUntil } from "./support/wait.ts";
import { runArgs, WorkerProcess } from "./support/worker.ts";

const HANDLER = `
import { defineHandler } from "kexo";
export default defineHandler({
  topics: ["emits"],
  async handle(value, ctx) {
    const v = String(value);
    ctx.emit("emitted", { value: v, ...(v === "p3" ? { partition: 3 } : {}) });
  },
});
`;

let broker: TestBroker;
let dir: string;
withBroker({ emits: 1, emitted: 1 }, { "emitter.ts": HANDLER }, (f) => ({ broker, dir } = f));

test("a record for a partition the topic lacks stays in the outbox, named in the log; the records after it go out once it is deleted", async () => {
  const db = join(dir, "j.db");
  const w = new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), db));
  try {
    const base = `http://${await w.httpAddress()}`;
    const pending = async () => {
      const line = (await (await fetch(`${base}/metrics`)).text()).split("\n").find((l) => l.startsWith("kexo_outbox_pending"));
      return Number(line?.split(" ").pop());
    };
    await w.waitJoined();
    await broker.produce("emits", [{ value: "first" }, { value: "p3" }, { value: "last" }]);
    await w.waitForLog("the relay names the record", (l) => String((l.error as { message?: string } | undefined)?.message ?? "").includes("names partition 3 of emitted"));
    const rows = () => {
      const c = new Database(db, { readonly: true });
      try {
        return (c.prepare("SELECT value FROM kexo_outbox ORDER BY seq").all() as { value: Buffer }[]).map((r) => Buffer.from(r.value).toString());
      } finally {
        c.close();
      }
    };
    // Not lost: it and the records after it wait (the relay keeps emit order).
    expect(rows()).toContain("p3");
    expect((await broker.readAll("emitted", 1)).map((r) => r.value?.toString())).toEqual(["first"]);
    // "p3" and "last" (and "first" if it was in the refused request: the relay resends it).
    await waitUntil("the gauge to show the waiting rows", async () => (await pending()) >= 2 || undefined, { timeoutMs: 15_000 });
    // The operator deletes the row, as the error says: the records after it go out.
    const c = new Database(db);
    c.exec("PRAGMA busy_timeout = 10000");
    c.prepare("DELETE FROM kexo_outbox WHERE CAST(value AS TEXT) = 'p3'").run();
    c.close();
    await waitUntil("the outbox drained", () => rows().length === 0 || undefined, { timeoutMs: 30_000 });
    expect((await broker.readAll("emitted", 2)).map((r) => r.value?.toString())).toEqual(["first", "last"]);
    await waitUntil("the gauge back at 0", async () => (await pending()) === 0 || undefined, { timeoutMs: 15_000 });
  } finally {
    w.kill();
  }
});
