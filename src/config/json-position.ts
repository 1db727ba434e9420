// Where a JSON text goes wrong, as line and column: JavaScriptCore's JSON.parse says what it
// expected ("Expected '}'") but not where, and a config file's mistake is usually one comma.

const WHITESPACE = new Set([" ", "\t", "\n", "\r"]);
const ESCAPES = new Set(['"', "\\", "/", "b", "f", "n", "r", "t"]);
const NUMBER = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y;
const HEX4 = /[0-9a-fA-F]{4}/y;

class Stop {
  constructor(readonly at: number) {}
}

/**
 * The offset of the first character a JSON parser cannot take in `text` (text.length when the
 * text ends too early), or undefined when `text` is valid JSON (RFC 8259).
 */
export function jsonErrorOffset(text: string): number | undefined {
  let i = 0;
  const fail = (at = i): never => {
    throw new Stop(at);
  };
  const blank = () => {
    while (i < text.length && WHITESPACE.has(text[i]!)) i++;
  };
  const string = () => {
    i++; // the opening quote
    for (;;) {
      if (i >= text.length) fail();
      const c = text.charCodeAt(i);
      if (c === 0x22) {
        i++;
        return;
      }
      if (c < 0x20) fail();
      if (c !== 0x5c) {
        i++;
        continue;
      }
      const e = text[i + 1];
      if (e === "u") {
        HEX4.lastIndex = i + 2;
        if (!HEX4.test(text)) fail(i + 2);
        i += 6;
      } else if (e !== undefined && ESCAPES.has(e)) i += 2;
      else fail(i + 1);
    }
  };
  const value = (): void => {
    blank();
    const c = text[i];
    if (c === "{" || c === "[") {
      const close = c === "{" ? "}" : "]";
      i++;
      blank();
      if (text[i] === close) {
        i++;
        return;
      }
      for (;;) {
        if (c === "{") {
          blank();
          if (text[i] !== '"') fail();
          string();
          blank();
          if (text[i] !== ":") fail();
          i++;
        }
        value();
        blank();
        if (text[i] === ",") i++;
        else if (text[i] === close) {
          i++;
          return;
        } else fail();
      }
    }
    if (c === '"') return string();
    for (const word of ["true", "false", "null"]) {
      if (c === word[0]) {
        if (!text.startsWith(word, i)) fail();
        i += word.length;
        return;
      }
    }
    NUMBER.lastIndex = i;
    const m = NUMBER.exec(text);
    if (!m) fail();
    i += m![0].length;
  };
  try {
    value();
    blank();
    if (i < text.length) fail();
    return undefined;
  } catch (err) {
    if (err instanceof Stop) return err.at;
    throw err;
  }
}

/** `offset` in `text` as 1-based line and column. */
export function lineAndColumn(text: string, offset: number): { line: number; column: number } {
  let line = 1;
  let start = 0;
  for (let i = text.indexOf("\n"); i !== -1 && i < offset; i = text.indexOf("\n", i + 1)) {
    line++;
    start = i + 1;
  }
  return { line, column: offset - start + 1 };
}
