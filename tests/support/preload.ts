// Preloaded into every test file (bunfig.toml). A top-level afterAll here runs after each file
// when bun test runs files in parallel, and after the last one otherwise. bun test fires no
// process "exit" event, so cleanup hung there never ran.
import { afterAll } from "bun:test";
import { installAbortGuard } from "./abort-guard.ts";
import { removeTempDirs } from "./tmp.ts";
import { killLeftovers, warnKilled } from "./worker.ts";

installAbortGuard();

afterAll(() => {
  warnKilled(killLeftovers());
  removeTempDirs();
});
