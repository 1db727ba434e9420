// Makes `import … from "kexo"` resolve inside handler files loaded at run time, also from the
// compiled binary (where no node_modules or tsconfig exists). Deno uses deno.json's import map.
import * as sdk from "../index.ts";

let registered = false;

export function registerKexoModule(): void {
  if (registered || typeof Bun === "undefined") return;
  registered = true;
  Bun.plugin({
    name: "kexo-sdk",
    setup(build) {
      build.module("kexo", () => ({ exports: { ...sdk }, loader: "object" }));
    },
  });
}
