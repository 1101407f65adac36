"""AUTOMATIC1111's prompt emphasis syntax, parsed into weighted pieces of text. Pure Python, no torch.

    (word)        weight x 1.1            [word]      weight / 1.1
    (word:1.3)    weight x 1.3            ((word))    nesting multiplies: x 1.21
    \\( \\) \\[ \\]   literal brackets        BREAK       ends the current 75-token chunk (see `sdcli.text.prompts`)

It follows `parse_prompt_attention` of AUTOMATIC1111's `modules/prompt_parser.py`, unbalanced brackets included: a
closing bracket with no opening one is literal text, and an opening bracket never closed weights the text up to the
end of the prompt. Neighbouring pieces of equal weight are merged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ROUND_MULTIPLIER = 1.1  # (word)
SQUARE_MULTIPLIER = 1 / 1.1  # [word]
BREAK = "BREAK"

# One token of the syntax per match; group 1 is the number of a `:weight)` closer.
_ATTENTION = re.compile(
    r"""
    \\\(|\\\)|\\\[|\\]|\\\\|\\|   # escapes, and a lone backslash
    \(|\[|                        # openers
    :\s*([+-]?[.\d]+)\s*\)|       # a weight closing a round bracket
    \)|]|                         # closers
    [^\\()\[\]:]+|                # plain text
    :                             # a colon that is not a weight
    """,
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


@dataclass(frozen=True)
class Piece:
    """A run of prompt text with one weight; `text` is None for a BREAK."""

    text: str | None
    weight: float = 1.0

    @property
    def is_break(self) -> bool:
        return self.text is None


def parse_emphasis(prompt: str) -> list[Piece]:
    """The prompt as weighted pieces, e.g. "a (red:1.3) circle" -> [a , 1.0], [red, 1.3], [ circle, 1.0]."""
    pieces: list[list] = []  # [text or None, weight], mutable while brackets close
    round_opened: list[int] = []  # index into pieces where each open "(" began
    square_opened: list[int] = []

    def multiply_from(start: int, multiplier: float) -> None:
        for piece in pieces[start:]:
            if piece[0] is not None:
                piece[1] *= multiplier

    for match in _ATTENTION.finditer(prompt):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            pieces.append([token[1:], 1.0])
        elif token == "(":
            round_opened.append(len(pieces))
        elif token == "[":
            square_opened.append(len(pieces))
        elif weight is not None and round_opened:
            multiply_from(round_opened.pop(), float(weight))
        elif token == ")" and round_opened:
            multiply_from(round_opened.pop(), ROUND_MULTIPLIER)
        elif token == "]" and square_opened:
            multiply_from(square_opened.pop(), SQUARE_MULTIPLIER)
        else:  # text, or a bracket/weight with nothing to close: literal
            for i, part in enumerate(_BREAK.split(token)):
                if i > 0:
                    pieces.append([None, 1.0])
                pieces.append([part, 1.0])
    for start in round_opened:  # never closed: weighted to the end, as AUTOMATIC1111 does
        multiply_from(start, ROUND_MULTIPLIER)
    for start in square_opened:
        multiply_from(start, SQUARE_MULTIPLIER)

    merged: list[Piece] = []
    for text, weight in pieces:
        if merged and text is not None and not merged[-1].is_break and merged[-1].weight == weight:
            merged[-1] = Piece(merged[-1].text + text, weight)
        else:
            merged.append(Piece(text, weight))
    return merged or [Piece("", 1.0)]


def has_emphasis(pieces: list[Piece]) -> bool:
    """Whether any piece is weighted other than 1 (a BREAK is not emphasis)."""
    return any(p.weight != 1.0 for p in pieces if not p.is_break)
