"""A Palaver moderator in Python: the word filter of plugins/examples/word-filter (Rust), the
same again in JavaScript in plugins/examples/js-word-filter.

componentize-py builds this module for the world `moderator` in plugins/wit/responder.wit:
  - the export `moderate` is the method `moderate` of a class named `WitWorld`;
  - WIT names become snake_case: `sender-email` is `request.sender_email`;
  - the `verdict` variant is one of the classes `Verdict_Allow()`, `Verdict_Reject(reason)`,
    `Verdict_Replace(text)` in `wit_world.imports.types`;
  - `result<verdict, string>`: return a verdict for ok; raise `componentize_py_types.Err("why")`
    for err, which counts as the moderator failing (its manifest's `on_failure` applies).

Config keys: `words` (comma-separated, matched case-insensitively anywhere in the text) and
`mode`: `reject` (refuse the message, naming the word) or `mask` (each letter of the word
becomes `*`).
"""

import wit_world
from componentize_py_types import Err
from wit_world.imports.types import (
    ModerateRequest,
    Verdict,
    Verdict_Allow,
    Verdict_Reject,
    Verdict_Replace,
)


def occurrences(text: str, word: str) -> list[int]:
    """Where `word` starts in `text`, ignoring case (letter by letter, as the Rust example)."""
    same = lambda a, b: a.lower() == b.lower()  # noqa: E731
    return [
        start
        for start in range(len(text) - len(word) + 1)
        if all(same(text[start + i], c) for i, c in enumerate(word))
    ]


class WitWorld(wit_world.WitWorld):
    def moderate(self, request: ModerateRequest) -> Verdict:
        config = dict(request.config)
        words = [w.strip() for w in config.get("words", "").split(",") if w.strip()]
        mode = config.get("mode", "reject")
        if mode not in ("reject", "mask"):
            raise Err(f"unknown mode {mode!r} (reject or mask)")
        text = list(request.content)
        changed = False
        for word in words:
            found = occurrences("".join(text), word)
            if not found:
                continue
            if mode == "reject":
                return Verdict_Reject(f'Your message contains the word "{word}"')
            for start in found:
                for i in range(start, start + len(word)):
                    if text[i].isalpha():
                        text[i] = "*"
            changed = True
        return Verdict_Replace("".join(text)) if changed else Verdict_Allow()
