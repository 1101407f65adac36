"""AUTOMATIC1111's LoRA prompt tags, `<lora:NAME>` and `<lora:NAME:WEIGHT>` (weight 1 when left out): read from the
prompt and removed from the text that is encoded, as AUTOMATIC1111's `extra_networks.parse_prompt` and
stable-diffusion.cpp do. A tag may touch a word (`<lora:x:0.5>a lighthouse`); the whitespace around it collapses to
one space. AUTOMATIC1111 reads tags from the prompt only (`parse_extra_network_prompts`), so sdcli does too: a tag
in a negative prompt is text. No torch here: the recipe checks tags before anything loads.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from sdcli.errors import UsageError

_TAG = re.compile(r"\s*<lora:([^<>]*)>\s*")
_OPEN = "<lora:"
_EXAMPLE = "for example <lora:pink:0.8> or <lora:pink>"


@dataclass(frozen=True)
class Tagged:
    """A prompt read for LoRA tags: the text to encode, and each tag's (name, weight) in order."""

    text: str
    loras: tuple[tuple[str, float], ...]


def _tag(body: str) -> tuple[str, float]:
    """`NAME` or `NAME:WEIGHT`, the inside of one tag."""
    name, colon, weight = body.partition(":")
    name = name.strip()
    if not name or ":" in weight or (colon and not weight.strip()):
        raise UsageError(f"<lora:{body}> is not a LoRA tag (<lora:NAME> or <lora:NAME:WEIGHT>); {_EXAMPLE}")
    if not weight:
        return name, 1.0
    try:
        value = float(weight)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise UsageError(f"<lora:{body}>: the weight {weight.strip()!r} is not a number; {_EXAMPLE}")
    return name, value


def read_tags(prompt: str) -> Tagged:
    """The prompt without its LoRA tags, and the tags; a usage error for a malformed one (an unclosed `<lora:`, an
    empty name, a weight that is not a finite number, more than one weight)."""
    loras = tuple(_tag(match[1]) for match in _TAG.finditer(prompt))
    text = _TAG.sub(" ", prompt)
    if _OPEN in text:
        start = text.index(_OPEN)
        raise UsageError(f"{text[start : start + 40]!r}: an unclosed LoRA tag; close it with >, {_EXAMPLE}")
    names = [name for name, _ in loras]
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice is not None:
        raise UsageError(f"<lora:{twice}> is in the prompt twice; give each LoRA once, at the weight it should have")
    return Tagged(text.strip() if loras else prompt, loras)
