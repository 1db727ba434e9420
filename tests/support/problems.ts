// The `path: message` lines of the ConfigError a call throws ([] when it throws none).
import { ConfigError } from "../../src/errors.ts";

export function configProblems(fn: () => unknown): string[] {
  try {
    fn();
  } catch (err) {
    if (err instanceof ConfigError) return err.problems.map((p) => `${p.path}: ${p.message}`);
    throw err;
  }
  return [];
}
