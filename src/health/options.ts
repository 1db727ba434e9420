// Liveness and readiness thresholds from the environment (operators tune them per deployment,
// tests shorten them): KEXO_POLL_TTL_MS, KEXO_HANDLER_TTL_MS, KEXO_BROKER_GRACE_MS.
import { ConfigError, type Problem } from "../errors.ts";
import { DEFAULT_LIVENESS, type LivenessOptions } from "./liveness.ts";

export const LIVENESS_ENV: Record<keyof LivenessOptions, string> = {
  pollTtlMs: "KEXO_POLL_TTL_MS",
  handlerTtlMs: "KEXO_HANDLER_TTL_MS",
  brokerGraceMs: "KEXO_BROKER_GRACE_MS",
};

export function livenessFromEnv(env: Record<string, string | undefined>): LivenessOptions {
  const out = { ...DEFAULT_LIVENESS };
  const problems: Problem[] = [];
  for (const [name, variable] of Object.entries(LIVENESS_ENV) as [keyof LivenessOptions, string][]) {
    const raw = env[variable];
    if (raw === undefined || raw === "") continue;
    if (!/^\d+$/.test(raw) || Number(raw) < 100) problems.push({ path: variable, message: `must be a whole number of milliseconds, at least 100 (got ${JSON.stringify(raw)})` });
    else out[name] = Number(raw);
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return out;
}
