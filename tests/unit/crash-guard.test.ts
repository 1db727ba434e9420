// The crash guard's lock: an attempt run alone never has another guarded attempt beside it, the
// shared side runs together, nobody waits for ever behind a steady stream, and an abort lets go.
import { describe, expect, test } from "bun:test";
import { CrashGuard } from "../../src/processing/crash-guard.ts";

const tick = () => new Promise((r) => setTimeout(r, 1));

describe("crash guard", () => {
  test("tracks the first TRACKED_PER_PARTITION messages per handler and partition; kept ones run alone", () => {
    const g = new CrashGuard();
    for (let i = 0; i < CrashGuard.TRACKED_PER_PARTITION; i++) expect(g.care("h", "t", 0, false)).toBe("tracked");
    expect(g.care("h", "t", 0, false)).toBe("shared");
    expect(g.care("h", "t", 1, false)).toBe("tracked");
    expect(g.care("other", "t", 0, false)).toBe("tracked");
    expect(g.care("h", "t", 0, true)).toBe("alone");
  });

  test("alone waits for the shared attempts running, and shared ones that come later wait for it", async () => {
    const g = new CrashGuard();
    const signal = new AbortController().signal;
    const log: string[] = [];
    const s1 = (await g.enter(false, signal))!;
    const s2 = (await g.enter(false, signal))!;
    const alone = g.enter(true, signal).then((release) => {
      log.push("alone");
      return release!;
    });
    const late = g.enter(false, signal).then((release) => {
      log.push("late");
      return release!;
    });
    await tick();
    expect(log).toEqual([]);
    s1();
    await tick();
    expect(log).toEqual([]);
    s2();
    const releaseAlone = await alone;
    await tick();
    expect(log).toEqual(["alone"]);
    releaseAlone();
    (await late)();
    expect(log).toEqual(["alone", "late"]);
  });

  test("two alone attempts run one after the other; a release twice counts once", async () => {
    const g = new CrashGuard();
    const signal = new AbortController().signal;
    const a = (await g.enter(true, signal))!;
    let bIn = false;
    const b = g.enter(true, signal).then((r) => ((bIn = true), r!));
    await tick();
    expect(bIn).toBe(false);
    a();
    a();
    const releaseB = await b;
    expect(bIn).toBe(true);
    // The double release of `a` did not let a shared attempt in beside b.
    let sharedIn = false;
    const s = g.enter(false, signal).then((r) => ((sharedIn = true), r!));
    await tick();
    expect(sharedIn).toBe(false);
    releaseB();
    (await s)();
  });

  test("an abort while waiting resolves undefined and lets the queue behind it go on", async () => {
    const g = new CrashGuard();
    const running = (await g.enter(false, new AbortController().signal))!;
    const ac = new AbortController();
    const aborted = g.enter(true, ac.signal);
    const behind = g.enter(false, new AbortController().signal);
    ac.abort();
    expect(await aborted).toBeUndefined();
    (await behind)!();
    running();
    const already = new AbortController();
    already.abort();
    expect(await g.enter(false, already.signal)).toBeUndefined();
  });
});
