"""Text that can deceive a reviewer: characters that render invisibly, and names that look alike.

Model output is untrusted. Escaping stops it from running code, but a bidirectional override
(U+202E) can still reorder what a reviewer reads ("refund" shown where "dnufer" is stored), and
invisible characters can hide a difference between two answers. The page shows each such character
as a visible marker and flags the pair. What is invisible is decided by Unicode's own data, not a
hand list: control, format, private-use, unassigned and line/paragraph-separator characters, every
Default_Ignorable_Code_Point (variation selectors, Hangul fillers, tags ...), and the blank
"filler" letters that render as nothing. Newlines and tabs are ordinary text.

Reviewer names are compared by what they look like: the Unicode confusables skeleton (UTS #39,
from ICU) of the name folded for case, accents and punctuation, so "ɑlice", "alıce", "aIice",
"Alice.", "alíce" or "ａｌｉｃｅ" cannot pass for an existing "alice".
"""

from __future__ import annotations

import unicodedata

import icu
from pydantic import BaseModel

_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cn", "Cs", "Zl", "Zp"})
_ORDINARY = frozenset("\n\t\r")
_SPOOF = icu.SpoofChecker()


def is_hidden(char: str) -> bool:
    """Whether `char` renders as nothing (or moves text around) on a reviewer's screen."""
    if char in _ORDINARY:
        return False
    return (unicodedata.category(char) in _INVISIBLE_CATEGORIES
            or icu.Char.hasBinaryProperty(char, icu.UProperty.DEFAULT_IGNORABLE_CODE_POINT)
            or unicodedata.name(char, "").endswith(("BLANK", "FILLER")))  # e.g. U+2800 BRAILLE PATTERN BLANK


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

def name_skeletons(name: str) -> set[str]:
    """What a name looks like: compatibility forms folded, accents and everything but letters and
    digits dropped, then the UTS #39 confusables skeleton (look-alike letters and digits mapped to one
    prototype), once as typed and once case-folded: capital I passes for l only before folding, and
    ALICE for alice only after."""
    def skeleton(text: str) -> str:
        kept = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c)[0] in "LN")
        return _SPOOF.getSkeleton(0, kept).casefold()

    compatible = unicodedata.normalize("NFKC", name)
    return {skeleton(compatible), skeleton(compatible.casefold())}


def look_alike(name: str, other: str) -> bool:
    """Whether two names are too alike for a reader to tell apart."""
    return bool(name_skeletons(name) & name_skeletons(other))


def scripts(name: str) -> set[str]:
    """The scripts of a name's letters (LATIN, CYRILLIC, GREEK ...; digits and marks have none)."""
    return {unicodedata.name(c, "UNKNOWN").split()[0] for c in name if c.isalpha()}
