"""A word-level CLIP tokenizer for a small, closed vocabulary.

The built-in model (and the tests' tiny models) use transformers' `CLIPTokenizer`, so the text path is the same as
Stable Diffusion's. Its files are a byte-level BPE vocabulary and merge list; here the merges are learned, as in
Sennrich et al. 2016, from the world's own words until each of them is a single token. Any other text still
tokenizes, into single characters.
"""

from __future__ import annotations

import json
from collections import Counter
from itertools import pairwise
from pathlib import Path

from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's map of the 256 byte values to printable characters (the base alphabet of byte-level BPE)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE merges, most frequent pair first, until every word is one token (CLIP's `</w>` word-end marker)."""
    segmented = {w: list(w[:-1]) + [w[-1] + "</w>"] for w in sorted(set(words))}
    merges: list[tuple[str, str]] = []
    while any(len(s) > 1 for s in segmented.values()):
        pairs = Counter(p for s in segmented.values() for p in pairwise(s))
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w, s in segmented.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            segmented[w] = out
    return merges


def write_word_tokenizer(words: list[str], folder: str | Path, model_max_length: int = 77) -> CLIPTokenizer:
    """Write `vocab.json`, `merges.txt` and the tokenizer config to `folder`; return the loaded tokenizer."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    merges = learn_merges([w.lower() for w in words])
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return CLIPTokenizer.from_pretrained(folder)
