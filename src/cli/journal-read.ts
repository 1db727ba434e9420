// Opens the journal named by the config for the inspection commands (dlq, inspect).
import { resolveConfig } from "../config/config.ts";
import { Journal } from "../journal/journal.ts";
import type { Args } from "./args.ts";

export function openJournalFor(args: Args, env: Record<string, string | undefined>, needBrokers = false) {
  const config = resolveConfig(args.flags, env, { needBrokers });
  return { config, journal: Journal.open({ url: config.db }) };
}
