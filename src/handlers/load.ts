// Loads handler files from a directory: every *.ts / *.js file default-exports one handler.
import { existsSync, readdirSync, statSync } from "node:fs";
import { basename, extname, join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { ConfigError, errorMessage, type Problem } from "../errors.ts";
import { TIMED_OUT, within } from "../timeout.ts";
import type { BundledHandler } from "./bundled.ts";
import { checkHandlerSet, resolveHandler, type ResolvedHandler } from "./resolve.ts";

const HANDLER_FILE = /^[^.].*\.(ts|js|mts|mjs)$/;

/** A handler file's name: *.ts / *.js, not hidden, not a test or a declaration file. */
export function isHandlerFileName(f: string): boolean {
  return HANDLER_FILE.test(f) && !/\.(test|spec|d)\.[mc]?[tj]s$/.test(f);
}

export function handlerFiles(dir: string): string[] {
  return readdirSync(dir)
    .filter(isHandlerFileName)
    .sort()
    .map((f) => join(dir, f));
}

/** How long one handler file may take to import (its top-level awaits included) by default. */
export const LOAD_TIMEOUT_MS = 30_000;

type Positioned = { message?: string; position?: { line?: number; column?: number } | null };

/**
 * Why an import failed: Bun's parse errors each with their line and column (its message only
 * counts them); several come in `errors`, one alone carries its own `position`.
 */
function loadError(err: unknown): string {
  const at = (e: Positioned) => (e.position?.line ? `${e.message} (line ${e.position.line}, column ${e.position.column})` : String(e.message ?? e));
  const parts = (err as { errors?: unknown }).errors;
  if (Array.isArray(parts) && parts.length > 0) {
    const shown = parts.slice(0, 3).map((e: Positioned) => at(e));
    return shown.join("; ") + (parts.length > 3 ? `; and ${parts.length - 3} more` : "");
  }
  if ((err as Positioned | null)?.position?.line) return at(err as Positioned);
  return errorMessage(err);
}

/** Imports a handler file, giving up after `timeoutMs`: a top-level await that never settles would hang `check` and `run`. */
async function importWithin(file: string, timeoutMs: number): Promise<{ default?: unknown }> {
  const mod = await within(import(pathToFileURL(file).href) as Promise<{ default?: unknown }>, timeoutMs);
  if (mod === TIMED_OUT) {
    throw new Error(`did not finish loading within ${timeoutMs / 1000} s; look for a top-level await that never settles (KEXO_HANDLER_LOAD_TIMEOUT_MS sets the limit)`);
  }
  return mod;
}

/** Imports and validates every handler in `dir`; throws ConfigError listing every problem. */
export async function loadHandlers(dir: string, timeoutMs = LOAD_TIMEOUT_MS): Promise<ResolvedHandler[]> {
  const abs = resolve(dir);
  if (!existsSync(abs) || !statSync(abs).isDirectory()) {
    throw new ConfigError([{ path: "handlers", message: `${dir} is not a directory; pass --handlers DIR with your handler files` }]);
  }
  const problems: Problem[] = [];
  const handlers: ResolvedHandler[] = [];
  const files = handlerFiles(abs);
  if (files.length === 0) {
    throw new ConfigError([{ path: "handlers", message: `${dir} holds no *.ts or *.js handler files` }]);
  }
  for (const file of files) {
    let mod: { default?: unknown };
    try {
      mod = await importWithin(file, timeoutMs);
    } catch (err) {
      problems.push({ path: file, message: `failed to load: ${loadError(err)}` });
      continue;
    }
    const h = resolveHandler(file, basename(file, extname(file)), mod.default, problems);
    if (h) handlers.push(h);
  }
  return fromResolved(handlers, problems);
}

/** Validates the handlers compiled into the binary, like files loaded from a directory. */
export function loadBundledHandlers(bundled: BundledHandler[]): ResolvedHandler[] {
  const problems: Problem[] = [];
  const handlers: ResolvedHandler[] = [];
  for (const b of bundled) {
    const h = resolveHandler(b.file, basename(b.file, extname(b.file)), b.exported, problems);
    if (h) handlers.push(h);
  }
  return fromResolved(handlers, problems);
}

export function fromResolved(handlers: ResolvedHandler[], problems: Problem[] = []): ResolvedHandler[] {
  checkHandlerSet(handlers, problems);
  if (problems.length > 0) throw new ConfigError(problems);
  return handlers;
}
