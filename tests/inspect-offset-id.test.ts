// `kexo inspect` given the offset form of an id (kafka-unique-id-TOPIC-PARTITION-GROUP-OFFSET, the
// SPEC's default format) for a handler whose messages are recorded under their business key:
// it shows the record of the message at that offset. It used to answer "completed (recorded by
// partition progress; no result)" for every offset below the progress, a dead letter included.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { countIn } from "./support/db.ts";
import { waitUntil } from "./support/wait.ts";
import { kexoAsync, WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "io-in";
const GROUP = "kexo-io-io-in";
let broker: TestBroker;
let dir: string;

const HANDLER = `
import { defineHandler, v, PermanentError } from "kexo";
export default defineHandler({
  topics: ["${TOPIC}"],
  schema: v.object({ id: v.string() }),
  key: (p) => p.id,
  async handle(p) {
    if (p.id === "o-bad") throw new PermanentError("refused");
    return { receipt: "r-" + p.id };
  },
});
`;

// A second handler of the same topic, without a key: its offsets are covered by progress, and the
// keyed handler's records at the same offsets are not its own.
const PLAIN = `
import { defineHandler } from "kexo";
export default defineHandler({ topics: ["${TOPIC}"], async handle() {} });
`;

withBroker({ [TOPIC]: 1 }, { "io.ts": HANDLER, "plain.ts": PLAIN }, (f) => ({ broker, dir } = f));

test("an offset-form id of a keyed handler's message shows that message's record, under its business key", async () => {
  const db = join(dir, "journal.db");
  const w = new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), db));
  await w.waitJoined(2);
  await broker.produce(TOPIC, [{ value: JSON.stringify({ id: "o-1" }) }, { value: JSON.stringify({ id: "o-bad" }) }]);
  await waitUntil("both recorded", () => countIn(db, "SELECT count(*) AS n FROM kexo_messages") >= 2 || undefined);
  await waitUntil("plain's progress past both", () => countIn(db, "SELECT count(*) AS n FROM kexo_progress WHERE group_id = 'kexo-plain-io-in' AND next_offset >= 2") >= 1 || undefined);
  w.kill("SIGTERM");
  expect(await w.exited()).toBe(0);

  const bad = await kexoAsync(["inspect", `kafka-unique-id-${TOPIC}-0-${GROUP}-1`, "--db", `file:${db}`]);
  expect(bad.code).toBe(0);
  expect(bad.stdout).toContain(`kafka-unique-id-${TOPIC}-0-${GROUP}-1 is the message at ${TOPIC}/0@1, recorded under its id o-bad`);
  expect(bad.stdout).toMatch(/status\s+dead_lettered/);
  expect(bad.stdout).not.toContain("partition progress");

  // The other handler's offset-form id: its own answer (progress), not the keyed handler's dead letter.
  const plain = await kexoAsync(["inspect", `kafka-unique-id-${TOPIC}-0-kexo-plain-io-in-1`, "--db", `file:${db}`]);
  expect(plain.code).toBe(0);
  expect(plain.stdout).toContain("completed (recorded by partition progress; no result)");
  expect(plain.stdout).not.toContain("o-bad");

  const ok = await kexoAsync(["inspect", `kafka-unique-id-${TOPIC}-0-${GROUP}-0`, "--db", `file:${db}`, "--json"]);
  expect(ok.code).toBe(0);
  const entry = JSON.parse(ok.stdout) as { id: string; askedFor: string; status: string; result: unknown };
  expect(entry).toMatchObject({ id: "o-1", askedFor: `kafka-unique-id-${TOPIC}-0-${GROUP}-0`, status: "completed", result: { receipt: "r-o-1" } });
}, 60_000);
