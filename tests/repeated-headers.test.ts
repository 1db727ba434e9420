// Kafka headers are a list and a name may repeat (tracing baggage, for one). The handler sees one
// value per name (the last), and everything that carries the original message on keeps every
// value: the dead letter on its topic, the journal's copy (`dlq show`), and `dlq replay`. An
// emitted record may repeat a name too. Binary keys and values come out of `dlq show` exactly.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { type TestBroker, withBroker } from "./support/broker.ts";
import { callsLog } from "./support/tmp.ts";
import { waitUntil } from "./support/wait.ts";
import { kexoAsync, WorkerProcess } from "./support/worker.ts";

let broker: TestBroker;
let dir: string;

const HANDLER = `
import { defineHandler, v } from "kexo";
import { appendFileSync } from "node:fs";

export default defineHandler({
  topics: ["rh-in"],
  schema: v.object({ n: v.number() }),
  async handle(p, ctx) {
    const h = ctx.message.headers;
    appendFileSync(process.env.CALLS_LOG!, JSON.stringify({ id: ctx.id, keys: Object.keys(h), trace: h.trace?.toString(), json: JSON.stringify(h) }) + "\\n");
    ctx.emit("rh-out", { key: "k" + p.n, value: { n: p.n }, headers: { trace: ["x", Buffer.from("y")], one: "1" } });
  },
});
`;

withBroker({ "rh-in": 1, "rh-in.dlq": 1, "rh-out": 1, "rh-copy": 1 }, { "rh.ts": HANDLER }, (f) => ({ broker, dir } = f));

const kexo = (...args: string[]) => kexoAsync(args, { cwd: dir });

const texts = (bs: Buffer[] | undefined) => bs?.map((b) => b.toString());

test("repeated header names: the handler sees the last value; dead letter, dlq show, replay and emit keep every value", async () => {
  const log = callsLog<{ id: string; keys: string[]; trace: string; json: string }>(dir);
  const db = ["--db", `file:${join(dir, "journal.db")}`];
  const w = new WorkerProcess(["run", "--brokers", broker.brokers, "--handlers", join(dir, "handlers"), ...db, "--http", "127.0.0.1:0"], { env: log.env });
  await w.waitJoined();
  const binaryKey = Buffer.from([0x00, 0xc3, 0x28]);
  await broker.produce("rh-in", [
    // Not UTF-8: poison, so a dead letter.
    { key: binaryKey, value: Buffer.from([0xff, 0xfe, 0x41]), headers: { trace: ["a", "b"], other: "o", bin: Buffer.from([0xff]) } },
    { key: "good", value: JSON.stringify({ n: 1 }), headers: { trace: ["c", "d"] } },
  ]);

  const [dead] = await broker.readAll("rh-in.dlq", 1);
  expect(dead?.key).toEqual(binaryKey);
  expect(texts(dead?.allHeaders.trace)).toEqual(["a", "b"]);
  expect(texts(dead?.allHeaders.other)).toEqual(["o"]);
  expect(dead?.allHeaders.bin).toEqual([Buffer.from([0xff])]);
  expect(texts(dead?.allHeaders["kexo-dlq-reason"])).toEqual(["poison"]);

  await waitUntil("the good message handled", () => log.calls().length >= 1 || undefined);
  const [call] = log.calls();
  expect([call?.keys, call?.trace, call?.json]).toEqual([["trace"], "d", JSON.stringify({ trace: Buffer.from("d") })]);
  const [out] = await broker.readAll("rh-out", 1);
  expect(texts(out?.allHeaders.trace)).toEqual(["x", "y"]);
  expect(texts(out?.allHeaders.one)).toEqual(["1"]);
  expect(out?.allHeaders["kexo-id"]?.length).toBe(1);

  await waitUntil("the dead letter journaled", async () => (await kexo("dlq", "list", ...db, "--json")).stdout.includes('"id":1') || undefined);
  const show = await kexo("dlq", "show", "1", ...db, "--json");
  expect(show.code).toBe(0);
  const shown = JSON.parse(show.stdout) as Record<string, unknown>;
  expect(shown.headers).toEqual({ trace: ["a", "b"], other: "o", bin: "\ufffd" });
  expect(shown.headersBase64).toEqual({ trace: ["YQ==", "Yg=="], other: "bw==", bin: "/w==" });
  expect([shown.keyBase64, shown.valueBase64]).toEqual([binaryKey.toString("base64"), "//5B"]);
  const human = await kexo("dlq", "show", "1", ...db);
  expect(human.stdout).toContain('"value": "(3 bytes, not UTF-8) base64://5B"');
  expect(human.stdout).toContain('"trace": [\n      "a",\n      "b"\n    ]');

  const replay = await kexo("dlq", "replay", "1", "--to", "rh-copy", "--brokers", broker.brokers, ...db);
  expect(replay.code).toBe(0);
  const [copy] = await broker.readAll("rh-copy", 1);
  expect([copy?.key, copy?.value]).toEqual([binaryKey, Buffer.from([0xff, 0xfe, 0x41])]);
  expect(texts(copy?.allHeaders.trace)).toEqual(["a", "b"]);
  expect(copy?.allHeaders.bin).toEqual([Buffer.from([0xff])]);

  w.kill("SIGTERM");
  expect(await w.exited()).toBe(0);
}, 120_000);
