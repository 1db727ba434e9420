// Where a JSON text goes wrong, as line and column: JavaScriptCore's JSON.parse says what it
// expected ("Expected '}'") but not where, and a config file's mistake is usually one comma.

const WHITESPACE = new Set([" ", "\t", "\n", "\r"]);
const ESCAPES = new Set(['"', "\\", "/", "b", "f", "n", "r", "t"]);
const NUMBER = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y;
const HEX4 = /[0-9a-fA-F]{4}/y;

const TOO_DEEP = new Error("nested too deep");

class Stop {
  constructor(readonly at: number) {}
}

/** Deeper than this, no position is looked for (the scan recurses; JSON.parse itself does not). */
const MAX_DEPTH = 1000;

/**
 * The offset of the first character a JSON parser cannot take in `text` (text.length when the
 * text ends too early); undefined when `text` is valid JSON (RFC 8259) or nests deeper than
 * MAX_DEPTH before its first error.
 */
export function jsonErrorOffset(text: string): number | undefined {
  let i = 0;
  let depth = 0;
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
      if (++depth > MAX_DEPTH) throw TOO_DEEP;
      const close = c === "{" ? "}" : "]";
      i++;
      blank();
      if (text[i] === close) {
        i++;
        depth--;
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
          depth--;
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
    if (err === TOO_DEEP) return undefined;
    throw err;
  }
}

/**
 * `offset` in `text` as 1-based line and column, as an editor shows them: lines end at \n, \r\n
 * or a lone \r; columns count characters (an emoji is one), not UTF-16 units.
 */
export function lineAndColumn(text: string, offset: number): { line: number; column: number } {
  let line = 1;
  let start = 0;
  for (let i = 0; i < offset; i++) {
    const c = text[i];
    if (c === "\n" || (c === "\r" && text[i + 1] !== "\n")) {
      line++;
      start = i + 1;
    }
  }
  return { line, column: [...text.slice(start, offset)].length + 1 };
}
