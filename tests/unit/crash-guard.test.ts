// The crash guard's lock: an attempt run alone never has another holder beside it, the shared side
// runs together (at once when nothing is alone), nobody waits for ever behind a steady stream, and
// an abort, or the drain's signal, lets go.
import { describe, expect, test } from "bun:test";
import { CrashGuard } from "../../src/processing/crash-guard.ts";

const tick = () => new Promise((r) => setTimeout(r, 1));
const never = new AbortController().signal;
const enter = async (g: CrashGuard, alone: boolean, signal = never) => await g.enter(alone, signal);

describe("crash guard", () => {
  test("tracks the first TRACKED_PER_PARTITION messages per handler and partition", () => {
    const g = new CrashGuard();
    for (let i = 0; i < CrashGuard.TRACKED_PER_PARTITION; i++) expect(g.track("h", "t", 0)).toBe(true);
    expect(g.track("h", "t", 0)).toBe(false);
    expect(g.track("h", "t", 1)).toBe(true);
    expect(g.track("other", "t", 0)).toBe(true);
  });

  test("shared holders enter at once while nothing is alone", () => {
    const g = new CrashGuard();
    const a = g.enter(false, never);
    const b = g.enter(false, never);
    expect(a instanceof Promise || b instanceof Promise).toBe(false);
  });

  test("alone waits for the shared holders, and shared ones that come later wait for it", async () => {
    const g = new CrashGuard();
    const log: string[] = [];
    const s1 = (await enter(g, false))!;
    const s2 = (await enter(g, false))!;
    const alone = enter(g, true).then((release) => (log.push("alone"), release!));
    const late = enter(g, false).then((release) => (log.push("late"), release!));
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

  test("two alone holders run one after the other; releasing one twice counts once", async () => {
    const g = new CrashGuard();
    const a = (await enter(g, true))!;
    let bIn = false;
    const b = enter(g, true).then((r) => ((bIn = true), r!));
    await tick();
    expect(bIn).toBe(false);
    a();
    a();
    const releaseB = await b;
    expect(bIn).toBe(true);
    // The double release of `a` did not let a shared holder in beside b.
    let sharedIn = false;
    const s = enter(g, false).then((r) => ((sharedIn = true), r!));
    await tick();
    expect(sharedIn).toBe(false);
    releaseB();
    (await s)();
  });

  test("an abort while waiting resolves undefined and lets the queue behind it go on", async () => {
    const g = new CrashGuard();
    const running = (await enter(g, false))!;
    const ac = new AbortController();
    const aborted = enter(g, true, ac.signal);
    const behind = enter(g, false);
    ac.abort();
    expect(await aborted).toBeUndefined();
    (await behind)!();
    running();
    const alone = (await enter(g, true))!;
    const already = new AbortController();
    already.abort();
    expect(await enter(g, false, already.signal)).toBeUndefined();
    alone();
  });

  test("the drain's signal ends waits as an abort does, and the holder keeps the lock", async () => {
    const g = new CrashGuard();
    const holder = (await enter(g, true))!;
    const drain = new AbortController();
    const shared = g.enter(false, never, drain.signal);
    const alone = g.enter(true, never, drain.signal);
    drain.abort();
    expect([await shared, await alone]).toEqual([undefined, undefined]);
    // Still held alone: a later shared waiter waits for the holder, not for the aborted ones.
    let sharedIn = false;
    const late = enter(g, false).then((r) => ((sharedIn = true), r!));
    await tick();
    expect(sharedIn).toBe(false);
    holder();
    (await late)();
    // Once the drain began, a wait ends before it starts; the free lock is still taken at once.
    expect(await g.enter(true, never, drain.signal)).toBeUndefined();
    const free = g.enter(false, never, drain.signal);
    expect(free instanceof Promise).toBe(false);
    (free as () => void)();
  });
});
