// Imported first by the compiled binary's entry, before the compiled-in handler modules run their
// top-level code: `kexo run` and `kexo dev` re-execute with the worker heap here, so that code runs
// once, in the final process (main.ts's own call is then a no-op: the variable is set).
import { parseCli } from "../cli/args.ts";
import { execWithWorkerHeap } from "./heap-sizing.ts";

try {
  const { command } = parseCli(process.argv.slice(2));
  if (command === "run" || command === "dev") execWithWorkerHeap();
} catch {
  // A usage error: main.ts reports it.
}
