// Runs kexo as a real child process (bun main.ts …, or the compiled binary) and watches its JSON
// log lines, so tests can wait for a moment and SIGKILL it there.
import { join } from "node:path";
import { waitUntil } from "./wait.ts";

export const ROOT = join(import.meta.dir, "..", "..");
export const BUN = process.execPath;

/**
 * `kexo run` against `brokers` with the handlers in `handlers`, the journal file `db`, and HTTP on a
 * free port; `extra` flags go last.
 */
export function runArgs(brokers: string, handlers: string, db: string, ...extra: string[]): string[] {
  return ["run", "--brokers", brokers, "--handlers", handlers, "--db", `file:${db}`, "--http", "127.0.0.1:0", ...extra];
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** The environment a CLI run sees: this process's without KEXO_* settings, plus `env`. */
function cliEnv(env: Record<string, string>): Record<string, string | undefined> {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("KEXO_")));
  return { ...clean, ...env };
}

/** One short kexo command (`bun main.ts ARGS`) run to its end, in `cwd`, without the caller's KEXO_* environment. */
export function kexoSync(args: string[], opts: { cwd?: string; env?: Record<string, string> } = {}): CliResult {
  const r = Bun.spawnSync([BUN, join(ROOT, "main.ts"), ...args], { cwd: opts.cwd ?? ROOT, env: cliEnv(opts.env ?? {}), stdin: "ignore" });
  return { code: r.exitCode, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

/** kexoSync without blocking this process (a command that talks to the test's broker must not stop it). */
export async function kexoAsync(args: string[], opts: { cwd?: string; env?: Record<string, string> } = {}): Promise<CliResult> {
  const p = Bun.spawn([BUN, join(ROOT, "main.ts"), ...args], { cwd: opts.cwd ?? ROOT, env: cliEnv(opts.env ?? {}), stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  return { code, stdout, stderr };
}

export interface LogLine {
  level: string;
  msg: string;
  [k: string]: unknown;
}

/**
 * Workers started and not yet exited. A test that fails midway (a timeout, a failed expect) skips
 * its own kills: its workers would run on, through the rest of the suite and past it.
 */
const alive = new Set<WorkerProcess>();

/** SIGKILLs every worker still running (each test file's end, tests/support/preload.ts); returns how many. */
export function killLeftovers(): number {
  const n = alive.size;
  for (const w of alive) w.kill("SIGKILL");
  alive.clear();
  return n;
}

// Plain bun scripts that start workers (bench/) do get an exit event; bun test does not.
process.on("exit", () => void killLeftovers());

export function warnKilled(n: number): void {
  if (n > 0) console.warn(`tests: killed ${n} kexo worker(s) the file's tests left running (a test failed before its own kills?)`);
}

export class WorkerProcess {
  readonly proc: Bun.Subprocess<"ignore", "pipe", "pipe">;
  readonly lines: LogLine[] = [];
  readonly raw: string[] = [];
  stdout = "";
  #exit: Promise<number>;
  #watches = new Map<(l: LogLine) => boolean, (l: LogLine) => void>();

  constructor(args: string[], opts: { env?: Record<string, string>; cwd?: string; cmd?: string[] } = {}) {
    const cmd = opts.cmd ?? [BUN, join(ROOT, "main.ts")];
    this.proc = Bun.spawn([...cmd, ...args], {
      cwd: opts.cwd ?? ROOT,
      env: { ...process.env, ...opts.env },
      stdin: "ignore",
      stdout: "pipe",
      stderr: "pipe",
    });
    void this.#read(this.proc.stderr, (line) => {
      this.raw.push(line);
      let parsed: LogLine;
      try {
        parsed = JSON.parse(line) as LogLine;
      } catch {
        return; // not JSON: kept in raw only
      } finally {
        if (process.env.KEXO_TEST_VERBOSE) process.stderr.write(`[worker ${this.proc.pid}] ${line}\n`);
      }
      this.lines.push(parsed);
      for (const [pred, act] of this.#watches) if (pred(parsed)) {
        this.#watches.delete(pred);
        act(parsed);
      }
    });
    void this.#read(this.proc.stdout, (line) => (this.stdout += line + "\n"));
    this.#exit = this.proc.exited.then((code) => {
      // An exit as after a crash or a bug: its last errors say why, where a failed
      // expect(code).toBe(0) alone would not (a CI log has no worker lines otherwise).
      if ((code === 1 || code === 70 || code === 75) && !process.env.KEXO_TEST_VERBOSE) {
        const last = this.lines.filter((l) => l.level === "error" || l.level === "fatal").slice(-5);
        for (const l of last) process.stderr.write(`[worker ${this.proc.pid} exited ${code}] ${JSON.stringify(l).slice(0, 1500)}\n`);
      }
      return code;
    });
    alive.add(this);
    void this.#exit.then(() => alive.delete(this));
  }

  async #read(stream: ReadableStream<Uint8Array>, onLine: (line: string) => void) {
    const decoder = new TextDecoder();
    let buf = "";
    for await (const chunk of stream) {
      buf += decoder.decode(chunk, { stream: true });
      let i: number;
      while ((i = buf.indexOf("\n")) >= 0) {
        onLine(buf.slice(0, i));
        buf = buf.slice(i + 1);
      }
    }
    if (buf) onLine(buf);
  }

  /** Runs `act` as soon as the first line matching `pred` is read (not polled): for tight windows. */
  onLog(pred: (l: LogLine) => boolean, act: (l: LogLine) => void): void {
    this.#watches.set(pred, act);
  }

  find(pred: (l: LogLine) => boolean): LogLine | undefined {
    return this.lines.find(pred);
  }

  waitForLog(what: string, pred: (l: LogLine) => boolean, timeoutMs = 30_000): Promise<LogLine> {
    return waitUntil(what, () => {
      const hit = this.lines.find(pred);
      if (hit) return hit;
      if (this.proc.exitCode !== null) throw new Error(`worker exited with ${this.proc.exitCode}: ${this.raw.slice(-5).join("\n")}`);
      return undefined;
    }, { timeoutMs });
  }

  /** The HTTP address from the `http listening` log line, with 0.0.0.0 made reachable. */
  async httpAddress(): Promise<string> {
    const l = await this.waitForLog("http listening", (l) => l.msg === "http listening");
    return String(l.address).replace("0.0.0.0", "127.0.0.1");
  }

  waitJoined(count = 1, timeoutMs = 40_000): Promise<unknown> {
    return waitUntil(`${count} group join(s)`, () => {
      if (this.proc.exitCode !== null) throw new Error(`worker exited with ${this.proc.exitCode}: ${this.raw.slice(-5).join("\n")}`);
      return this.lines.filter((l) => l.msg === "joined group").length >= count || undefined;
    }, { timeoutMs });
  }

  kill(signal: NodeJS.Signals | number = "SIGKILL"): void {
    this.proc.kill(signal);
    // Dying, if not yet reaped: not a worker left running (a SIGTERM'd one may still hang).
    if (signal === "SIGKILL" || signal === 9) alive.delete(this);
  }

  exited(): Promise<number> {
    return this.#exit;
  }
}
