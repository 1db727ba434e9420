// Time limits from the environment (operators tune them per deployment, tests shorten them):
// liveness and readiness (KEXO_POLL_TTL_MS, KEXO_HANDLER_TTL_MS, KEXO_BROKER_GRACE_MS) and how
// long a handler file may take to load (KEXO_HANDLER_LOAD_TIMEOUT_MS).
import { ConfigError, type Problem } from "../errors.ts";
import { DEFAULT_LIVENESS, type LivenessOptions } from "./liveness.ts";

export const LIVENESS_ENV: Record<keyof LivenessOptions, string> = {
  pollTtlMs: "KEXO_POLL_TTL_MS",
  handlerTtlMs: "KEXO_HANDLER_TTL_MS",
  brokerGraceMs: "KEXO_BROKER_GRACE_MS",
};

/** `variable`'s milliseconds, or `fallback` when unset; a bad value is a problem. */
function envMs(env: Record<string, string | undefined>, variable: string, fallback: number, problems: Problem[]): number {
  const raw = env[variable];
  if (raw === undefined || raw === "") return fallback;
  if (/^\d+$/.test(raw) && Number(raw) >= 100) return Number(raw);
  problems.push({ path: variable, message: `must be a whole number of milliseconds, at least 100 (got ${JSON.stringify(raw)})` });
  return fallback;
}

export function livenessFromEnv(env: Record<string, string | undefined>): LivenessOptions {
  const out = { ...DEFAULT_LIVENESS };
  const problems: Problem[] = [];
  for (const [name, variable] of Object.entries(LIVENESS_ENV) as [keyof LivenessOptions, string][]) out[name] = envMs(env, variable, out[name], problems);
  if (problems.length > 0) throw new ConfigError(problems);
  return out;
}

export function loadTimeoutFromEnv(env: Record<string, string | undefined>, fallback: number): number {
  const problems: Problem[] = [];
  const ms = envMs(env, "KEXO_HANDLER_LOAD_TIMEOUT_MS", fallback, problems);
  if (problems.length > 0) throw new ConfigError(problems);
  return ms;
}
