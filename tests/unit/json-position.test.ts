// A config file that is not JSON is reported with the line and column where it goes wrong
// (JavaScriptCore's JSON.parse says only what it expected). jsonErrorOffset must agree with
// JSON.parse on what is valid, and point at the first character that is not.
import { expect, test } from "bun:test";
import { jsonErrorOffset, lineAndColumn } from "../../src/config/json-position.ts";

const VALID = [
  "{}", "[]", " { } ", '{"a":1}', '{"a":[1,2,{"b":null}],"c":"x"}', "0", "-0.5e+3", "1E9", '"\\u00e9\\n\\"\\\\\\/"', "true",
  "false", "null", '\n\t{ "brokers" : "localhost:9092" , "http":"0.0.0.0:9464" }\r\n', '[[[[]]], {}, "", 1.25]',
];
const INVALID: [string, number][] = [
  ["", 0],
  ["{ nope", 2],
  ['{"a":1,}', 7],
  ['{"a":1 "b":2}', 7],
  ['{\n  "brokers": "x"\n  "http": "y"\n}', 21],
  ["[1,2", 4],
  ['{"a" 1}', 5],
  ["01", 1],
  ["1.", 1],
  ["-", 0],
  ['"abc', 4],
  ['"a\\x"', 3],
  ['"\\u12g4"', 3],
  ['"tab\there"', 4],
  ["tru", 0],
  ["{} {}", 3],
  ["{'a':1}", 1],
  ["[1,]", 3],
  ["NaN", 0],
];

test("valid JSON has no error offset, as JSON.parse agrees", () => {
  for (const t of VALID) {
    expect(() => JSON.parse(t)).not.toThrow();
    expect(jsonErrorOffset(t)).toBeUndefined();
  }
});

test("invalid JSON: the offset of the first character that cannot be taken, and JSON.parse refuses it too", () => {
  for (const [t, at] of INVALID) {
    expect(() => JSON.parse(t)).toThrow();
    expect([t, jsonErrorOffset(t)]).toEqual([t, at]);
  }
});

test("line and column are 1-based, columns counted from the line's start", () => {
  const text = '{\n  "brokers": "x"\n  "http": "y"\n}';
  expect(lineAndColumn(text, jsonErrorOffset(text)!)).toEqual({ line: 3, column: 3 });
  expect(lineAndColumn("abc", 0)).toEqual({ line: 1, column: 1 });
  expect(lineAndColumn("a\nb", 2)).toEqual({ line: 2, column: 1 });
  expect(lineAndColumn("a\r\nb", 3)).toEqual({ line: 2, column: 1 });
  expect(lineAndColumn("a\rb\rc", 4)).toEqual({ line: 3, column: 1 });
  expect(lineAndColumn('{"😀": x}', 7)).toEqual({ line: 1, column: 7 });
});

test("nesting deeper than the scan goes gives no position rather than a crash", () => {
  const deep = `{"a":${"[".repeat(200_000)}`;
  expect(() => JSON.parse(deep)).toThrow();
  expect(jsonErrorOffset(deep)).toBeUndefined();
  expect(jsonErrorOffset(`${"[".repeat(500)}1,${"]".repeat(500)}`)).toBe(502);
});
