// Gives the handlers the one shared schema registry client (one schema cache for all), and
// refuses a registry format when no registry is configured: a config error before any consuming.
import type { Config } from "../config/config.ts";
import { ConfigError, type Problem } from "../errors.ts";
import { REGISTRY_FORMATS, type ResolvedHandler } from "../handlers/resolve.ts";

/** Loads the registry client only when a registry is configured: its libraries cost ≈ 70 ms at start. */
export async function attachRegistry(handlers: ResolvedHandler[], settings: Config["schemaRegistry"]): Promise<void> {
  const problems: Problem[] = [];
  for (const h of handlers) {
    if (REGISTRY_FORMATS.includes(h.format) && !settings) {
      problems.push({
        path: `${h.file}: format`,
        message: `"${h.format}" values are decoded through a schema registry: pass --schema-registry URL or set KEXO_SCHEMA_REGISTRY`,
      });
    }
  }
  if (problems.length > 0) throw new ConfigError(problems);
  if (!settings) return;
  const { PayloadRegistry } = await import("./registry.ts");
  const registry = new PayloadRegistry(settings);
  for (const h of handlers) h.registry = registry;
}
