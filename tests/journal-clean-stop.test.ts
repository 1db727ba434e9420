// After a clean stop the journal is in its database file itself: a copy of kexo.db alone (a
// backup taken the usual way, without the -wal file beside it) holds every record and effect.
// Before, the file held only the schema's first page and everything else stayed in the WAL.
import { expect, test } from "bun:test";
import { copyFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { effectsHandler } from "./support/handlers.ts";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { countIn } from "./support/db.ts";
import { tempDir } from "./support/tmp.ts";
import { waitUntil } from "./support/wait.ts";
import { WorkerProcess, runArgs } from "./support/worker.ts";

const TOPIC = "cs-in";
let broker: TestBroker;
let dir: string;

withBroker({ [TOPIC]: 2 }, { "cs.ts": effectsHandler(TOPIC) }, (f) => ({ broker, dir } = f));

test("after SIGTERM and exit 0, kexo.db copied without its -wal holds the journal and the handlers' tables", async () => {
  const db = join(dir, "kexo.db");
  const w = new WorkerProcess(runArgs(broker.brokers, join(dir, "handlers"), db));
  await w.waitJoined();
  await broker.produce(TOPIC, Array.from({ length: 200 }, (_, n) => ({ value: JSON.stringify({ n }) })));
  await waitUntil("200 effects", () => countIn(db, "SELECT count(*) AS n FROM effects") >= 200 || undefined);
  w.kill("SIGTERM");
  expect(await w.exited()).toBe(0);

  const copy = join(tempDir(), "backup.db");
  copyFileSync(db, copy);
  expect(countIn(copy, "SELECT count(*) AS n FROM effects")).toBe(200);
  expect(countIn(copy, "SELECT sum(next_offset) AS n FROM kexo_progress")).toBe(200);
  // The WAL was emptied into the file (TRUNCATE leaves it at 0 bytes, or SQLite removed it).
  let wal = 0;
  try {
    wal = statSync(`${db}-wal`).size;
  } catch {}
  expect(wal).toBe(0);
}, 60_000);
