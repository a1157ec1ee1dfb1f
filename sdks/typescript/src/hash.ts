// A handler's code hash: the SHA-256 of its source as `Function.prototype.toString` gives it,
// with comments removed and whitespace dropped wherever it does not separate two words, so
// re-indenting, re-wrapping or commenting a handler does not make a new code version; a change
// to what it does (or to a string literal in it) does.
import { createHash } from "node:crypto";

export function codeHash(handler: Function): string {
  return createHash("sha256").update(normalise(handler.toString())).digest("hex");
}

const word = /[A-Za-z0-9_$]/;

export function normalise(source: string): string {
  let out = "";
  let i = 0;
  let pendingSpace = false;
  const n = source.length;
  while (i < n) {
    const c = source[i]!;
    const next = source[i + 1];
    if (c === "/" && next === "/") {
      while (i < n && source[i] !== "\n") i++;
      pendingSpace = true;
      continue;
    }
    if (c === "/" && next === "*") {
      const end = source.indexOf("*/", i + 2);
      i = end < 0 ? n : end + 2;
      pendingSpace = true;
      continue;
    }
    if (c === '"' || c === "'" || c === "`") {
      // A string or template literal is kept as written (escapes included).
      let j = i + 1;
      while (j < n && source[j] !== c) j += source[j] === "\\" ? 2 : 1;
      flush();
      out += source.slice(i, j + 1);
      i = j + 1;
      continue;
    }
    if (/\s/.test(c)) {
      pendingSpace = true;
      i++;
      continue;
    }
    flush();
    out += c;
    i++;
  }
  return out;

  function flush() {
    if (pendingSpace && out.length && word.test(out[out.length - 1]!) && word.test(source[i]!)) out += " ";
    pendingSpace = false;
  }
}
