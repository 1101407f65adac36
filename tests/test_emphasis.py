"""AUTOMATIC1111's emphasis syntax: the cases of its own `parse_prompt_attention` docstring, and the edges."""

from __future__ import annotations

import pytest

from sdcli.text.emphasis import Piece, has_emphasis, parse_emphasis


def parsed(prompt: str) -> list[tuple[str | None, float]]:
    return [(p.text, p.weight) for p in parse_emphasis(prompt)]


@pytest.mark.parametrize(
    "prompt, want",
    [  # AUTOMATIC1111's doctests (modules/prompt_parser.py), to the last bit of their floats
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("\\(literal\\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0),
                ("house", 1.5730000000000004),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641000000000006),
                (".", 1.1),
            ],
        ),
    ],
)
def test_automatic1111s_own_examples(prompt: str, want: list[tuple[str, float]]):
    assert parsed(prompt) == want


def test_round_square_and_explicit_weights():
    assert parsed("(red)") == [("red", 1.1)]
    assert parsed("[red]") == [("red", 1 / 1.1)]
    assert parsed("(red:1.3)") == [("red", 1.3)]
    assert parsed("( red : 0.5 )") == [(" red ", 0.5)]  # spaces around the weight are allowed, as in A1111
    assert parsed("(red:-1)") == [("red", -1.0)]


def test_nesting_multiplies():
    assert parsed("((red))") == [("red", 1.1 * 1.1)]
    assert parsed("[[red]]") == [("red", 1 / 1.1 / 1.1)]
    assert parsed("((red:2))") == [("red", 2 * 1.1)]
    assert parsed("([red])") == [("red", 1 / 1.1 * 1.1)]
    assert parsed("(a (b:2) c)") == [("a ", 1.1), ("b", 2.2), (" c", 1.1)]


def test_escapes_are_literal_text():
    assert parsed("\\(red\\)") == [("(red)", 1.0)]
    assert parsed("\\[red\\]") == [("[red]", 1.0)]
    assert parsed("a \\\\ b") == [("a \\ b", 1.0)]
    assert parsed("(a \\) b)") == [("a ) b", 1.1)]
    assert parsed("a \\ b") == [("a  b", 1.0)]  # a lone backslash disappears, as in A1111


def test_unbalanced_brackets_follow_automatic1111():
    assert parsed("red)") == [("red)", 1.0)]  # a closer with nothing open is literal
    assert parsed("red]") == [("red]", 1.0)]
    assert parsed("a [red") == [("a ", 1.0), ("red", 1 / 1.1)]  # an opener never closed weights to the end
    assert parsed("(a (b)") == [("a ", 1.1), ("b", 1.1 * 1.1)]
    assert parsed("a :1.5) b") == [("a :1.5) b", 1.0)]  # a weight with no "(" open is literal
    assert parsed("(red]") == [("red]", 1.1)]  # mismatched kinds: "]" literal, "(" weights to the end


def test_colons_that_are_not_weights_are_text():
    assert parsed("style: photo") == [("style: photo", 1.0)]
    assert parsed("(a:b)") == [("a:b", 1.1)]


def test_break_ends_a_chunk_and_is_never_weighted():
    assert parsed("red BREAK blue") == [("red", 1.0), (None, 1.0), ("blue", 1.0)]
    assert parsed("(red BREAK blue)") == [("red", 1.1), (None, 1.0), ("blue", 1.1)]
    assert parsed("BREAKfast") == [("BREAKfast", 1.0)]  # only the whole word
    assert parsed("break") == [("break", 1.0)]  # only in capitals
    assert parse_emphasis("a BREAK b")[1].is_break


def test_an_empty_prompt_is_one_empty_piece():
    assert parse_emphasis("") == [Piece("", 1.0)]


def test_has_emphasis():
    assert not has_emphasis(parse_emphasis("a red circle"))
    assert not has_emphasis(parse_emphasis("a BREAK b"))
    assert not has_emphasis(parse_emphasis("(red:1.0)"))
    assert has_emphasis(parse_emphasis("(red)"))
