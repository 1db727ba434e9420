// A repeated kafkajs warning or error is logged once per window, with the count of those dropped.
import { expect, test } from "bun:test";
import { createThrottle } from "../../src/kafka/log-throttle.ts";

test("the first line of a kind passes, repeats within the window are counted, the next one carries the count", () => {
  let t = 0;
  const th = createThrottle(5000, () => t);
  expect(th.admit("a")).toEqual({ suppressed: 0 });
  t = 10;
  expect(th.admit("a")).toBeUndefined();
  expect(th.admit("a")).toBeUndefined();
  expect(th.admit("b")).toEqual({ suppressed: 0 });
  t = 5000;
  expect(th.admit("a")).toEqual({ suppressed: 2 });
  t = 5001;
  expect(th.admit("a")).toBeUndefined();
});
