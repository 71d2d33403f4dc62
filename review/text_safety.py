"""Text that can deceive a reviewer: characters that render invisibly, and names that look alike.

Model output is untrusted. Escaping stops it from running code, but a bidirectional override
(U+202E) can still reorder what a reviewer reads ("refund" shown where "dnufer" is stored), and
zero-width characters can hide a difference between two answers. The page shows each such
character as a visible marker and flags the pair. Reviewer names are checked for look-alikes of
existing names (Cyrillic "а" for Latin "a", "1" for "l"), so the name on a label says who gave it.
"""

from __future__ import annotations

import unicodedata

from pydantic import BaseModel

# Bidirectional controls (embeddings, overrides, isolates, marks) and zero-width or otherwise
# invisible format characters. Unicode "tag" characters (U+E0000-U+E007F) are matched by range.
HIDDEN_CHARACTERS: frozenset[str] = frozenset(
    "\u202a\u202b\u202c\u202d\u202e"      # LRE RLE PDF LRO RLO
    "\u2066\u2067\u2068\u2069"            # LRI RLI FSI PDI
    "\u200e\u200f\u061c"                  # LRM RLM ALM
    "\u200b\u200c\u200d\u2060\ufeff"      # zero width space, non-joiner, joiner, word joiner, BOM
    "\u180e\u00ad\u2061\u2062\u2063\u2064"  # Mongolian vowel separator, soft hyphen, invisible operators
)


def is_hidden(char: str) -> bool:
    return char in HIDDEN_CHARACTERS or 0xE0000 <= ord(char) <= 0xE007F


class Segment(BaseModel):
    """A run of ordinary text, or one hidden character shown as a marker such as [U+202E RLO]."""
    text: str
    hidden: bool = False


def visible_segments(text: str) -> list[Segment]:
    """`text` split so that every hidden character is its own segment, labelled by code point and name."""
    segments: list[Segment] = []
    run: list[str] = []
    for char in text:
        if not is_hidden(char):
            run.append(char)
            continue
        if run:
            segments.append(Segment(text="".join(run)))
            run = []
        segments.append(Segment(text=f"[U+{ord(char):04X} {unicodedata.name(char, 'UNNAMED')}]", hidden=True))
    if run:
        segments.append(Segment(text="".join(run)))
    return segments


def hidden_characters(text: str) -> list[str]:
    """The distinct hidden characters in `text`, as U+XXXX, in order of first appearance."""
    return list(dict.fromkeys(f"U+{ord(c):04X}" for c in text if is_hidden(c)))


# ---- names ----------------------------------------------------------------------------------------
# Letters of other scripts that render like Latin letters, and digits that pass for letters. Not
# Unicode's whole confusables table: the look-alikes a reviewer name would plausibly be forged with.
_LOOKALIKES = str.maketrans({
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "һ": "h", "і": "i", "ї": "i", "ј": "j", "к": "k", "м": "m",
    "н": "h", "о": "o", "р": "p", "с": "c", "ѕ": "s", "т": "t", "у": "y", "х": "x", "ԁ": "d", "ԛ": "q",
    "ԝ": "w", "ӏ": "l", "ɡ": "g",
    # Greek
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t",
    "υ": "u", "χ": "x", "ω": "w",
    # digits and marks
    "0": "o", "1": "l", "|": "l", "5": "s",
})


def name_skeleton(name: str) -> str:
    """What a name looks like: NFKC-normalised, case-folded, look-alike letters mapped to Latin."""
    return unicodedata.normalize("NFKC", name).casefold().translate(_LOOKALIKES)


def scripts(name: str) -> set[str]:
    """The scripts of a name's letters (LATIN, CYRILLIC, GREEK ...; digits and marks have none)."""
    return {unicodedata.name(c, "UNKNOWN").split()[0] for c in name if c.isalpha()}
