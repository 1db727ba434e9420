// `kexo check`: validate config and handlers and print the plan; touches no network.
import { saslWithoutTls } from "../config/config.ts";
import type { ResolvedHandler } from "../handlers/resolve.ts";
import type { Args } from "./args.ts";
import { redactUrl } from "../log.ts";
import { printJson, printLine, table } from "./output.ts";
import { loadPlan } from "./run.ts";

export function planOf(handlers: ResolvedHandler[]) {
  return handlers.map((h) => ({
    name: h.name,
    file: h.file,
    topics: h.topics.map((t) => (typeof t === "string" ? t : t.toString())),
    group: h.groupId,
    order: h.order,
    format: h.format,
    concurrency: h.concurrency,
    retry: h.retry,
    deadLetter: h.topics.map((t) => (typeof t === "string" ? h.deadLetterTopic(t) : h.deadLetterTopic("<topic>"))),
    schema: h.def.schema !== undefined,
    key: h.def.key !== undefined,
    kafkaTransactions: h.kafkaTransactions,
  }));
}

export async function checkCommand(args: Args, env: Record<string, string | undefined>): Promise<number> {
  const { config, handlers, handlersFrom } = await loadPlan(args, env, false);
  const plan = planOf(handlers);
  // What run would warn about at start, said before it runs.
  const sasl = saslWithoutTls(config);
  const warnings = sasl ? [`${sasl.msg} (sasl-mechanism ${sasl.mechanism}): ${sasl.detail}`] : [];
  if (args.flags.json) {
    const safe = {
      ...config,
      db: redactUrl(config.db),
      sasl: config.sasl ? { ...config.sasl, password: "[redacted]" } : undefined,
      schemaRegistry: config.schemaRegistry?.password !== undefined ? { ...config.schemaRegistry, password: "[redacted]" } : config.schemaRegistry,
    };
    printJson({ ok: true, config: safe, handlersFrom, handlers: plan, warnings });
    return 0;
  }
  printLine(`config ok: brokers ${config.brokers.join(",") || "(not set)"} · db ${redactUrl(config.db)} · http ${config.http.host}:${config.http.port}`);
  for (const w of warnings) printLine(`warning: ${w}`);
  printLine(`${handlers.length} handler${handlers.length === 1 ? "" : "s"} from ${handlersFrom}:\n`);
  printLine(
    table(
      plan.map((p) => ({
        handler: p.name,
        topics: p.topics.join(","),
        group: p.group,
        order: p.order + (p.kafkaTransactions ? " · kafka transactions" : ""),
        format: p.format,
        concurrency: p.concurrency,
        retry: `${p.retry.attempts}× ${p.retry.initialDelayMs}–${p.retry.maxDelayMs} ms`,
        "dead letters": [...new Set(p.deadLetter.map((d) => (d === false ? "off (retry forever)" : d)))].join(","),
      })),
      ["handler", "topics", "group", "order", "format", "concurrency", "retry", "dead letters"],
    ),
  );
  return 0;
}
