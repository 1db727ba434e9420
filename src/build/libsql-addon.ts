// Embeds libSQL's native addon in a compiled binary. node_modules/libsql/index.js picks the addon
// with a computed require (`@libsql/${target}`), which `bun build --compile` cannot follow, so the
// binary would look for node_modules at run time. This plugin rewrites that one require into a
// literal path to the target's index.node, which Bun embeds (and extracts to $TMPDIR at start).
// @libsql/client reaches the addon through the same file, so this covers both.
import type { BunPlugin } from "bun";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

export const TARGETS = ["bun-linux-x64", "bun-linux-arm64", "bun-linux-x64-musl", "bun-linux-arm64-musl"] as const;
export type Target = (typeof TARGETS)[number];

/** libSQL's prebuilt package for each Bun target (Bun's glibc targets want the gnu addon). */
const ADDON: Record<Target, string> = {
  "bun-linux-x64": "linux-x64-gnu",
  "bun-linux-arm64": "linux-arm64-gnu",
  "bun-linux-x64-musl": "linux-x64-musl",
  "bun-linux-arm64-musl": "linux-arm64-musl",
};

/**
 * The addon's index.node for a target: from node_modules when npm installed it (only the host's
 * platform is), else fetched once with `npm pack` at the version libsql pins, into .tmp/addons.
 */
export function addonPath(root: string, target: Target): string {
  const pkg = ADDON[target];
  const installed = join(root, "node_modules", "@libsql", pkg, "index.node");
  if (existsSync(installed)) return installed;
  const version = (JSON.parse(readFileSync(join(root, "node_modules", "libsql", "package.json"), "utf8")) as { version: string }).version;
  const dir = join(root, ".tmp", "addons", `${pkg}-${version}`);
  const fetched = join(dir, "package", "index.node");
  if (existsSync(fetched)) return fetched;
  mkdirSync(dir, { recursive: true });
  try {
    const tgz = execFileSync("npm", ["pack", "--silent", `@libsql/${pkg}@${version}`], { cwd: dir, encoding: "utf8" }).trim().split("\n").pop()!;
    execFileSync("tar", ["xzf", tgz], { cwd: dir });
  } catch (err) {
    throw new Error(`libSQL's addon @libsql/${pkg}@${version} for ${target} is not installed and npm pack failed (${(err as Error).message}); install it or build for the host's target`);
  }
  return fetched;
}

export function libsqlAddonPlugin(root: string, target: Target): BunPlugin {
  const addon = addonPath(root, target);
  return {
    name: "kexo-libsql-addon",
    setup(build) {
      build.onLoad({ filter: /[\\/]node_modules[\\/]libsql[\\/]index\.js$/ }, ({ path }) => {
        const source = readFileSync(path, "utf8");
        const computed = "return require(`@libsql/${target}`);";
        if (!source.includes(computed)) {
          throw new Error(`${path} no longer holds ${computed}; update src/build/libsql-addon.ts for this libsql version`);
        }
        return { contents: source.replace(computed, `return require(${JSON.stringify(addon)});`), loader: "js" };
      });
    },
  };
}
