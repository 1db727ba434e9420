// kexo's entry point and its only exit: parses the command line, runs one command, maps errors to
// exit codes. First SIGTERM/SIGINT asks for a drain; a second one exits at once (130/143).
import { helpText, jsonRequested, parseCli } from "./src/cli/args.ts";
import { printJson, printJsonError, printLine } from "./src/cli/output.ts";
import { ConfigError, errorMessage, errorStack, ExitCode, KexoError } from "./src/errors.ts";
import { explainAddonLoadFailure } from "./src/journal/native-addon.ts";
import { VERSION } from "./src/version.ts";

const exitFor = { SIGINT: 130, SIGTERM: 143 } as const;

async function main(argv: string[]): Promise<number> {
  const args = parseCli(argv);
  const env = process.env as Record<string, string | undefined>;
  switch (args.command) {
    case "help":
      process.stdout.write(helpText(args.positionals, args.flags.help !== true));
      return ExitCode.ok;
    case "version":
      if (args.flags.json) printJson({ version: VERSION });
      else printLine(`kexo ${VERSION}`);
      return ExitCode.ok;
    case "check": {
      const { checkCommand } = await import("./src/cli/check.ts");
      return checkCommand(args, env);
    }
    case "dlq": {
      const { dlqCommand } = await import("./src/cli/dlq.ts");
      return dlqCommand(args, env);
    }
    case "inspect": {
      const { inspectCommand } = await import("./src/cli/inspect.ts");
      return inspectCommand(args, env);
    }
    case "run":
    case "dev": {
      (await import("./src/memory/heap-sizing.ts")).execWithWorkerHeap();
      const { runCommand } = await import("./src/cli/run.ts");
      let first: { sig: string; at: number } | undefined;
      const signalled = new Promise<string>((resolve) => {
        for (const sig of ["SIGTERM", "SIGINT"] as const) {
          process.on(sig, () => {
            // The same signal again at once is the same request, sent twice: to the process group
            // and by a parent that forwards it (GNU timeout, npm, a shell). Only a later one, or
            // another signal, means "exit now".
            if (first?.sig === sig && performance.now() - first.at < REPEAT_MS) return;
            if (first) {
              process.stderr.write(JSON.stringify({ time: new Date().toISOString(), level: "warn", msg: "second signal; exiting now", signal: sig }) + "\n");
              process.exit(exitFor[sig]);
            }
            first = { sig, at: performance.now() };
            resolve(sig);
          });
        }
      });
      return runCommand(args, env, { signalled });
    }
  }
}

/** A repeat of the first stop signal within this long counts as the same request (see above). */
const REPEAT_MS = 250;

/**
 * The one place an error becomes an exit code. stderr gets the human text; with --json, stdout
 * also gets exactly one object (printJsonError).
 */
function report(err: unknown, json: boolean): number {
  const known = err instanceof KexoError;
  const exitCode = known ? err.exitCode : ExitCode.bug;
  const bug = "unexpected error (a bug; please report it)";
  if (err instanceof ConfigError) {
    process.stderr.write(`kexo: invalid configuration:\n${err.problems.map((p) => `  ${p.path}: ${p.message}`).join("\n")}\n`);
  } else if (known) {
    process.stderr.write(`kexo: ${err.message}\n`);
  } else {
    process.stderr.write(`kexo: ${bug}: ${errorStack(err) ?? errorMessage(err)}\n`);
  }
  if (json) printJsonError(err, bug);
  return exitCode;
}

const argv = process.argv.slice(2);
let code: number;
try {
  code = await main(argv);
} catch (err) {
  code = report(explainAddonLoadFailure(err) ?? err, jsonRequested(argv));
}
process.exit(code);
