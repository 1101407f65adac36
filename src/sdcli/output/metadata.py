"""Settings inside PNG files, twice: AUTOMATIC1111's `parameters` infotext, and our own `sdcli` JSON chunk.

The infotext is the format that tools reading AUTOMATIC1111 images understand:

    <prompt>
    Negative prompt: <negative>
    Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 42, Size: 512x512, Model: <name>

(the negative line left out when empty; a value holding `,` `:` or a newline JSON-quoted, as AUTOMATIC1111 does).
The `sdcli` chunk holds the complete `ImageRecord` as JSON; `--from` replays it exactly. An image with only an
infotext (one made by AUTOMATIC1111, say) can still be replayed from the settings the infotext carries.
"""

from __future__ import annotations

import io
import json
import logging
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from sdcli import __version__
from sdcli.errors import UsageError
from sdcli.recipe import RECORD_FIELDS, SETTINGS, ImageRecord, Recipe, declared, parse_text

log = logging.getLogger(__name__)

INFOTEXT_KEY = "parameters"
SDCLI_KEY = "sdcli"
NEGATIVE_PREFIX = "Negative prompt:"
# AUTOMATIC1111's pattern for one `Key: value` pair of the last infotext line (a value is JSON-quoted or comma-free).
# Keys are bounded in length (AUTOMATIC1111's are short): unbounded, a long last line takes quadratic time.
_PARAM = re.compile(r'\s*(\w[\w \-/]{0,63}):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def _quote(value: object) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


def _numbered(key: str, params: dict[str, str]) -> list[str]:
    """The keys a numbered infotext key (`ControlNet {i}`) stands for in `params`: i = 0, 1, ... while present."""
    keys = []
    while key.format(i=len(keys)) in params:
        keys.append(key.format(i=len(keys)))
    return keys


def infotext(record: ImageRecord) -> str:
    """The `parameters` text of AUTOMATIC1111 for one image: the prompts, then every setting declared with an
    infotext key, in declaration order (a numbered key, `ControlNet {i}`, once per value its writer gives)."""
    params = {}
    for f, spec in declared(Recipe):
        if spec.infotext is not None:
            write = spec.infotext.write or (lambda r, name=f.name: getattr(r, name))
            value = write(record)
            if value is not None and "{i}" in spec.infotext.key:
                params |= {spec.infotext.key.format(i=i): item for i, item in enumerate(value)}
            elif value is not None:
                params[spec.infotext.key] = value
    lines = [record.prompt]
    if record.negative_prompt:
        lines.append(f"{NEGATIVE_PREFIX} {record.negative_prompt}")
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in params.items()))
    return "\n".join(lines)


def parse_infotext(text: str) -> dict[str, str]:
    """AUTOMATIC1111's infotext as {key: value}, with the prompts under "Prompt" and "Negative prompt"."""
    *lines, last = text.strip().split("\n")
    if len(_PARAM.findall(last)) < 3:  # no settings line: all of it is prompt
        lines, last = [*lines, last], ""
    prompt: list[str] = []
    negative: list[str] = []
    for line in lines:
        if line.startswith(NEGATIVE_PREFIX):
            negative.append(line[len(NEGATIVE_PREFIX) :].strip())
        else:
            (negative if negative else prompt).append(line)
    params = {key.strip(): _unquote(value.strip()) for key, value in _PARAM.findall(last)}
    return {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative), **params}


def settings_from_infotext(text: str) -> dict[str, Any]:
    """The recipe settings an infotext carries (those it leaves out keep their defaults)."""
    params = parse_infotext(text)
    settings: dict[str, Any] = {"prompt": params["Prompt"], "negative_prompt": params["Negative prompt"]}
    for f, spec in declared(Recipe):
        numbered = spec.infotext is not None and "{i}" in spec.infotext.key
        if spec.infotext is None or not (
            _numbered(spec.infotext.key, params) if numbered else spec.infotext.key in params
        ):
            continue
        if spec.infotext.read_if is not None and not spec.infotext.read_if(params):
            continue
        value = (
            tuple(params[k] for k in _numbered(spec.infotext.key, params)) if numbered else params[spec.infotext.key]
        )
        try:
            settings |= spec.infotext.read(value) if spec.infotext.read else {f.name: parse_text(f.name, value)}
        except ValueError as error:
            raise UsageError(
                f"the image's {spec.infotext.key} {value!r} does not parse ({error}); give the settings as options"
            ) from None
    return settings


def encode_png(image: Image.Image, record: ImageRecord) -> bytes:
    """The image as PNG bytes carrying its settings in a `parameters` and an `sdcli` text chunk."""
    info = PngInfo()
    info.add_text(INFOTEXT_KEY, infotext(record))
    info.add_text(SDCLI_KEY, json.dumps({"version": __version__, **record.as_dict()}, ensure_ascii=False))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


# The most text sdcli reads from one PNG text chunk, stored or decompressed, in bytes (characters once decoded): room
# for a prompt of thousands of words and its negative prompt, twice over (the infotext and the JSON). A hostile chunk
# (a decompression bomb, a prompt of megabytes) is refused before it is read, and what is read parses in a moment
# (the infotext's settings line parses in time quadratic in its length).
MAX_TEXT_CHUNK = 64 * 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT_CHUNK_TYPES = (b"tEXt", b"zTXt", b"iTXt")


def read_chunks(path: Path) -> dict[str, str]:
    """The PNG's text chunks; a usage error if `path` is not a readable PNG, or holds a text chunk over
    MAX_TEXT_CHUNK."""
    try:
        _check_text_chunk_sizes(path)
        with Image.open(path) as image:
            if image.format != "PNG":
                raise UsageError(f"{path} is a {image.format} image, not a PNG; give a PNG written by sdcli")
            chunks = dict(image.text)
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist; give the path of a PNG written by sdcli") from None
    except ValueError as error:  # Pillow's guard against text that decompresses beyond its limits
        raise _too_much(path, str(error)) from None
    except (UnidentifiedImageError, IsADirectoryError, OSError, Image.DecompressionBombError) as error:
        raise UsageError(f"{path} is not a readable image ({error}); give a PNG written by sdcli") from None
    for key, value in chunks.items():
        if len(value) > MAX_TEXT_CHUNK:
            raise _too_much(path, f"its {key!r} text has {len(value):,} characters once decompressed")
    return chunks


def _check_text_chunk_sizes(path: Path) -> None:
    """Before Pillow reads the PNG at `path`: no text chunk stores over MAX_TEXT_CHUNK bytes. Cheap: it reads the
    chunks' 8-byte headers and seeks past their data. (A file that is no PNG is left to Pillow to name.)"""
    with open(path, "rb") as file:
        if file.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
            return
        while len(header := file.read(8)) == 8 and header[4:] != b"IEND":
            length, kind = int.from_bytes(header[:4], "big"), header[4:]
            if kind in TEXT_CHUNK_TYPES and length > MAX_TEXT_CHUNK:
                raise _too_much(path, f"a {kind.decode()} chunk of {length:,} bytes")
            file.seek(length + 4, 1)  # the data and its CRC


def _too_much(path: Path, what: str) -> UsageError:
    """The error for a PNG with a text chunk over MAX_TEXT_CHUNK."""
    return UsageError(f"{path} holds more text than sdcli reads ({what}; the limit is {MAX_TEXT_CHUNK // 1024} KiB "
                      "per chunk); give a PNG written by sdcli")  # fmt: skip


# Records written before ControlNets came in groups held one, under singular names: read as a group of one.
_SINGULAR = {"control_net": "control_nets", "control_image": "control_images", "control_scale": "control_scales",
             "control_start": "control_starts", "control_end": "control_ends",
             "control_image_sha256": "control_images_sha256"}  # fmt: skip


def _groups_of_one(stored: dict[str, Any]) -> dict[str, Any]:
    """`stored` with an old record's singular ControlNet settings as the lists of one that hold them now (none when
    it ran no ControlNet)."""
    ran = stored.get("control_net") is not None
    plural = {new: [stored[old]] for old, new in _SINGULAR.items() if ran and stored.get(old) is not None}
    return {key: value for key, value in stored.items() if key not in _SINGULAR} | plural


def settings_from_png(path: Path) -> dict[str, Any]:
    """The settings that made the image at `path`: its `sdcli` chunk, else its AUTOMATIC1111 infotext."""
    chunks = read_chunks(path)
    if SDCLI_KEY in chunks:
        try:
            stored = json.loads(chunks[SDCLI_KEY])
        except json.JSONDecodeError:
            raise UsageError(f"{path}: its sdcli chunk is not JSON; replay it from the options instead") from None
        if not isinstance(stored, dict):
            raise UsageError(f"{path}: its sdcli chunk is not a JSON object; replay it from the options instead")
        stored = _groups_of_one(stored)
        unknown = sorted(set(stored) - set(RECORD_FIELDS) - {"version"})
        if unknown:
            log.warning("%s: ignoring settings this sdcli does not know: %s", path, ", ".join(unknown))
        return {key: value for key, value in stored.items() if key in RECORD_FIELDS}
    if INFOTEXT_KEY in chunks:
        return settings_from_infotext(chunks[INFOTEXT_KEY])
    raise UsageError(f"{path} carries no generation settings (no sdcli or parameters chunk); give a PNG made by sdcli")


# The settings that decide an image's pixels, beyond the model: an image already on disk is kept by a rerun (batch,
# sweep) only when its stored settings agree on those the recipe sets (None: the model's size, the default scale).
MADE_WITH = tuple(f.name for f, spec in declared(Recipe) if not spec.loads)


def check_made_with(path: Path, recipe: Recipe, loras: tuple[str, ...]) -> None:
    """The image at `path`, kept by a rerun, must have been made with `recipe`'s settings, or the run would mix
    two runs' images: those MADE_WITH names, and the LoRA files and weights `loras` (as the record lists them)."""
    stored, wanted = settings_from_png(path), asdict(recipe)
    if "loras" in stored and stored["loras"] != list(loras):
        made = ", ".join(stored["loras"]) or "no LoRA"
        raise UsageError(f"{path} exists but was made with {made}, not {', '.join(loras) or 'no LoRA'}; pass "
                         "--overwrite to remake it, or use another --out-dir")  # fmt: skip
    for key in MADE_WITH:
        want = list(wanted[key]) if isinstance(wanted.get(key), tuple) else wanted.get(key)  # as JSON stores it
        if want == [] and (SETTINGS[key][1].one_for_all or SETTINGS[key][1].hash_of):
            want = None  # the defaults, or hashes the record fills in
        if want is not None and key in stored and stored[key] != want:
            raise UsageError(f"{path} exists but was made with {key} {stored[key]!r}, not {want!r}; pass --overwrite "
                             "to remake it, or use another --out-dir")  # fmt: skip
