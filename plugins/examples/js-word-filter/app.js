// A Palaver moderator in JavaScript: the word filter of plugins/examples/word-filter (Rust),
// the same again in Python in plugins/examples/py-word-filter.
//
// componentize-js builds this module for the world `moderator` in plugins/wit/responder.wit:
//   - the export `moderate` is this module's exported function `moderate`;
//   - WIT names become camelCase: `sender-email` is `request.senderEmail`;
//   - the `verdict` variant is an object with a `tag` (and a `val` for the cases that carry
//     one): `{ tag: "allow" }`, `{ tag: "reject", val: "why" }`, `{ tag: "replace", val: "text" }`;
//   - `result<verdict, string>`: return a verdict for ok; `throw "reason"` (a string) for err,
//     which counts as the moderator failing (its manifest's `on_failure` applies).
//
// Config keys: `words` (comma-separated, matched case-insensitively anywhere in the text) and
// `mode`: `reject` (refuse the message, naming the word) or `mask` (each letter of the word
// becomes `*`).

const sameLetter = (a, b) => a.toLowerCase() === b.toLowerCase();

/** Where `word` starts in `text` (arrays of characters), ignoring case. */
function occurrences(text, word) {
  const found = [];
  for (let start = 0; start + word.length <= text.length; start++) {
    if (word.every((c, i) => sameLetter(text[start + i], c))) found.push(start);
  }
  return found;
}

export function moderate(request) {
  const config = new Map(request.config);
  const words = (config.get("words") ?? "")
    .split(",")
    .map((w) => w.trim())
    .filter((w) => w.length > 0);
  const mode = config.get("mode") ?? "reject";
  if (mode !== "reject" && mode !== "mask") {
    throw `unknown mode ${JSON.stringify(mode)} (reject or mask)`;
  }
  // Arrays of code points, so a letter outside the BMP is one character, as in Rust.
  const text = Array.from(request.content);
  let changed = false;
  for (const raw of words) {
    const word = Array.from(raw);
    const found = occurrences(text, word);
    if (found.length === 0) continue;
    if (mode === "reject") {
      return { tag: "reject", val: `Your message contains the word "${raw}"` };
    }
    for (const start of found) {
      for (let i = start; i < start + word.length; i++) {
        // A letter is what has an upper and a lower case (the engine has no Unicode property
        // escapes): digits, spaces and punctuation inside a listed phrase stay as they are.
        if (text[i].toLowerCase() !== text[i].toUpperCase()) text[i] = "*";
      }
    }
    changed = true;
  }
  return changed ? { tag: "replace", val: text.join("") } : { tag: "allow" };
}
