// The compiled binary extracts libSQL's embedded native addon to $TMPDIR before loading it; when
// that directory is missing or not writable, the load fails with a bare dlopen error. This turns
// that error into one that says what to do.
import { ExitCode, KexoError } from "../errors.ts";

export function explainAddonLoadFailure(err: unknown): KexoError | undefined {
  const message = err instanceof Error ? err.message : "";
  if (!/\$bunfs\/.*\.node: cannot open shared object file/.test(message)) return undefined;
  const tmp = process.env.TMPDIR || "/tmp";
  return new KexoError(
    "journal_engine_unavailable",
    `cannot load libSQL's native addon: the binary extracts it to TMPDIR (${tmp}), which is missing or not writable (${message}); set TMPDIR to a writable directory (in a container with a read-only root filesystem, mount a tmpfs at /tmp)`,
    { exitCode: ExitCode.unavailable, cause: err },
  );
}
