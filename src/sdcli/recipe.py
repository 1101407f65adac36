"""The recipe: every setting that makes an image, declared once. No torch here, so the command line checks settings
(and `sdcli inspect` reads them) without importing the model stack.

Three frozen dataclasses hold what a run asks for:

- `Recipe`: what makes an image. Recorded in its PNG (the `sdcli` JSON chunk, and AUTOMATIC1111's infotext where it
  has a key), replayed by `--from`, set per line in batch files (those that load the model: per batch, but LoRAs:
  every line's files load, and each line's weights apply to its images).
- `Request`: a recipe and how many images of it (seeds seed .. seed + n - 1).
- `Run`: how a run goes (device, dtype, batch size, speed options): never what an image is.

Each setting is one field, declared with `setting(...)`: its default, help, check, command-line flags and infotext
key. The record, `--from`, the batch file's per-line fields and the command-line options are all derived from these
declarations, so a new recorded setting is one declaration here plus its use in the engine.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import Field, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from sdcli.errors import UsageError
from sdcli.sampling.samplers import NAMES as SAMPLER_NAMES
from sdcli.sampling.samplers import (
    SCHEDULE_NAMES,
    from_a1111_name,
    from_a1111_schedule,
    get_sampler,
    get_schedule,
    resolve_schedule,
)
from sdcli.text.lora_tags import read_tags

SAFETENSORS = (".safetensors", ".sft")  # the file suffixes sdcli reads weights from
PICKLES = (".ckpt", ".pt", ".pth", ".bin")  # only with --allow-pickle
DEFAULT_MODEL = "shapes"  # the built-in model, used when neither --model nor $SDCLI_MODEL names one
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "fp32", "fp16", "bf16")
NEG_MODES = ("replace", "separate")  # the negative prompt as the unconditional branch, or as terms of their own
# APG's defaults (sdcli.guidance.apg): eta 0 as the paper recommends; r and beta as diffusers' guider (beta 0: off).
DEFAULT_APG_ETA = 0.0
DEFAULT_APG_NORM_THRESHOLD = 15.0
DEFAULT_APG_MOMENTUM = 0.0
DEFAULT_PAG_LAYERS = "mid"  # PAG's perturbed self-attention layers: diffusers' StableDiffusionPAGPipeline's default
UPSCALERS = ("lanczos", "latent")  # the hires fix's: in pixels (Pillow's Lanczos) or in latents (bilinear)
PREDICTION_TYPES = ("epsilon", "v_prediction")  # diffusers' names, as in a scheduler config
DEFAULT_CLASSIFIER_SCALE = 10.0  # s of classifier guidance, when --classifier names targets
DEFAULT_STRENGTH = 0.75  # img2img's denoising strength, when --init-image names an image
MAX_MASK_BLUR = 256  # pixels: AUTOMATIC1111's slider stops at 64
DEFAULT_HIRES_STRENGTH = 0.5  # the hires pass's, when --hires-scale asks for one
# A ControlNet's scale and the share of the steps it runs over, when not given (diffusers' pipeline's defaults).
DEFAULT_CONTROL_SCALE, DEFAULT_CONTROL_START, DEFAULT_CONTROL_END = 1.0, 0.0, 1.0
MAX_HIRES_SCALE = 4.0
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes unsigned 64-bit seeds
# Limits checked before any work: beyond them a run would exhaust memory or time rather than make an image.
MAX_SIDE = 16384  # pixels per side (SDXL's native side is 1024)
MAX_STEPS = 10000
MAX_IMAGES = 100000  # images per request
MAX_BATCH = 1024  # images per U-Net call
MAX_TEXT_BYTES = 8192  # per prompt or negative prompt
MAX_CLIP_SKIP = 12  # AUTOMATIC1111's slider: the layers of SD 1.x's CLIP ViT-L


# `--guidance-interval LO,HI` as typed (Kynkäänniemi et al. 2024 define the interval in noise levels sigma):
# `0.28,5.42` are sigmas, sigma = sqrt((1 - alphabar_t) / alphabar_t), about 14.6 at the start of an SD run and 0.03
# at its end; `20%,80%` are percentages of the schedule, as ComfyUI's start/end percent: p% is the timestep
# t = (1 - p/100) (training timesteps - 1), so 0% is the noisiest end. sdcli.guidance.interval applies it.
_EXAMPLES = "for example --guidance-interval 0.28,5.42 (sigmas) or --guidance-interval 20%,80% (of the schedule)"


@dataclass(frozen=True)
class GuidanceInterval:
    """Guidance runs where the noise level lies within [lo, hi]."""

    lo: float
    hi: float
    percent: bool  # True: lo and hi are fractions (0..1) of the schedule, typed as percentages; False: sigmas


def parse_interval(text: str) -> GuidanceInterval:
    """`LO,HI` (sigmas) or `LO%,HI%` (percentages of the schedule); a UsageError that shows both forms otherwise."""
    parts = [part.strip() for part in text.split(",")] if isinstance(text, str) else []
    if len(parts) != 2:
        raise UsageError(f"--guidance-interval takes two values LO,HI, not {text!r}; {_EXAMPLES}")
    percent = [part.endswith("%") for part in parts]
    if percent[0] != percent[1]:
        raise UsageError(f"--guidance-interval {text}: give both values as sigmas or both as percentages; {_EXAMPLES}")
    try:
        lo, hi = (float(part.rstrip("%")) for part in parts)
    except ValueError:
        raise UsageError(f"--guidance-interval {text}: LO and HI must be numbers; {_EXAMPLES}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi):
        raise UsageError(f"--guidance-interval {text}: need 0 <= LO <= HI; {_EXAMPLES}")
    if percent[0]:
        if hi > 100:
            raise UsageError(f"--guidance-interval {text}: percentages run from 0% to 100%; {_EXAMPLES}")
        return GuidanceInterval(lo / 100, hi / 100, percent=True)
    return GuidanceInterval(lo, hi, percent=False)


def parse_pag_layers(text: str) -> tuple[str, ...]:
    """`--pag-layers` as typed, `mid,up_blocks.0`: the layer ids (diffusers' `pag_applied_layers`, patterns that
    `re.search` matches against the U-Net's module names), each checked to be a pattern."""
    ids = tuple(filter(None, (part.strip() for part in text.split(",")))) if isinstance(text, str) else ()
    if not ids:
        raise UsageError(f"--pag-layers needs at least one layer name, not {text!r}; for example --pag-layers mid")
    for layer in ids:
        try:
            re.compile(layer)
        except re.error as error:
            raise UsageError(
                f"--pag-layers {layer!r} is not a pattern ({error}); for example --pag-layers mid,up_blocks.0"
            ) from None
    return ids


def embedding_token(path: str) -> str:
    """A textual inversion embedding's token in prompts: its file's name without the suffix (AUTOMATIC1111's)."""
    return Path(path).stem


def _ti_hashes(record: Any) -> str | None:
    """AUTOMATIC1111's "TI hashes": `name: <first 10 hex digits of the file's sha256>` per embedding."""
    pairs = zip(record.embeddings, record.embeddings_sha256, strict=True)
    return ", ".join(f"{embedding_token(path)}: {sha256[:10]}" for path, sha256 in pairs) or None


def parse_lora(text: str) -> tuple[str, float]:
    """`--lora PATH[:WEIGHT]` as typed: the file and its weight (1.0 when no finite number follows the last colon)."""
    path, colon, weight = text.rpartition(":")
    try:
        value = float(weight) if colon and path else None
    except ValueError:
        value = None
    if value is None or not math.isfinite(value):
        return text, 1.0
    return path, value


def is_lora_name(text: str) -> bool:
    """A `--lora NAME[:WEIGHT]` rather than a file: no folder and no file suffix (`pink`, `pink:0.5`), found by name
    as a prompt's `<lora:NAME>` tag is (sdcli.loading.lora_names)."""
    reference = parse_lora(text)[0]
    return (
        "/" not in reference and "\\" not in reference and Path(reference).suffix.lower() not in SAFETENSORS + PICKLES
    )


def lora_name(path: str) -> str:
    """A LoRA's name, as AUTOMATIC1111's infotext writes it: its file's name without the suffix, `:` and `,` out."""
    return Path(path).stem.translate(str.maketrans("", "", ":,"))


def _lora_hashes(record: Any) -> str | None:
    """AUTOMATIC1111's "Lora hashes": `name: <first 12 hex digits of the file's sha256>` per LoRA."""
    pairs = zip(record.loras, record.loras_sha256, strict=True)
    return ", ".join(f"{lora_name(parse_lora(text)[0])}: {sha256[:12]}" for text, sha256 in pairs) or None


def _unit_name(reference: str) -> str:
    """A ControlNet's name in the infotext: its folder's or file's name without a suffix, `:` and `,` out (the
    extension refuses a unit whose values hold them)."""
    path = Path(reference)
    name = path.stem if path.suffix.lower() in SAFETENSORS + PICKLES else path.name
    return name.translate(str.maketrans("", "", ":,"))


def _short_hash(reference: str) -> str:
    """AUTOMATIC1111's old short hash of a model file, which its ControlNet extension writes after the model's name
    (`control_v11p_sd15_canny [d14c016b]`): the first 8 hex digits of the sha256 of the 64 KiB at 1 MiB into the
    file (a folder's: its diffusers weights file). Empty when there is no such file to read."""
    path = Path(reference)
    path = path / "diffusion_pytorch_model.safetensors" if path.is_dir() else path
    try:
        with path.open("rb") as file:
            file.seek(0x100000)
            return hashlib.sha256(file.read(0x10000)).hexdigest()[:8]
    except OSError:
        return ""


def _controlnet_units(record: Any) -> tuple[str, ...] | None:
    """AUTOMATIC1111's ControlNet extension's units (`ControlNet 0`, `ControlNet 1`, ...), one per --control-net:
    no preprocessor (the image is given ready), the model's name and short hash, the weight, a plain resize to the
    output size, and the share of the steps it runs over."""
    models = [(_unit_name(unit.net), _short_hash(unit.net)) for unit in record.controls]
    units = tuple(
        f"Module: none, Model: {name}{f' [{short}]' if short else ''}, Weight: {unit.scale:g}, "
        "Resize Mode: Just Resize, "
        f"Guidance Start: {unit.start:g}, Guidance End: {unit.end:g}, Control Mode: Balanced"
        for unit, (name, short) in zip(record.controls, models, strict=True)
    )
    return units or None


def random_seed() -> int:
    """A fresh seed from the OS's entropy, for runs that give none (it is recorded, so the run can be repeated)."""
    return random.SystemRandom().randrange(2**32)


# What a value of each kind must be: a test, and the words that say it in an error.
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole(lo: int, hi: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_int(v) and lo <= v <= hi), f"a whole number from {lo} to {hi:,}"


def _one_of(choices: tuple[str, ...]) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in choices), f"one of {', '.join(choices)}"


def _numbers(value: Any, within: Callable[[float], bool]) -> bool:
    """A tuple of finite numbers, each `within` its range."""
    return isinstance(value, tuple) and all(_is_number(v) and within(v) for v in value)


def _is_text(value: Any) -> bool:
    """A string that is valid Unicode (undecodable bytes of argv arrive as lone surrogates), of at most
    MAX_TEXT_BYTES (over a hundred 75-token chunks; a PNG's text chunks must hold it)."""
    if not isinstance(value, str):
        return False
    try:
        return len(value.encode("utf-8")) <= MAX_TEXT_BYTES
    except UnicodeEncodeError:
        return False


FINITE = (_is_number, "a finite number")
FINITES = (lambda v: _numbers(v, lambda x: True), "finite numbers")
TEXT = (_is_text, f"valid UTF-8 text of at most {MAX_TEXT_BYTES:,} bytes")
NAME = (lambda v: isinstance(v, str) and v != "", "a name")
FLAG = (lambda v: isinstance(v, bool), "true or false")
PATHS = (lambda v: isinstance(v, tuple) and all(isinstance(p, str) and p for p in v), "file paths")
OPTIONAL = {"check": None}  # a setting whose None means "not set" (checked only when set)


@dataclass(frozen=True)
class Infotext:
    """A setting's place in AUTOMATIC1111's `parameters` infotext: `Key: value` on its last line. A numbered key
    (`ControlNet {i}`) is written once per value its `write` gives (`ControlNet 0`, `ControlNet 1`, ...), and read
    back as the tuple of their texts."""

    key: str
    write: Callable[[Any], Any] | None = None  # the record -> the value written (None: not written)
    read: Callable[[Any], dict[str, Any]] | None = None  # the text -> settings; None: {name: parse_text(name, text)}
    read_if: Callable[[Mapping[str, str]], bool] | None = None  # read only where the infotext's params say so


@dataclass(frozen=True)
class Setting:
    """Everything but the name, type and default of one declared setting."""

    help: str  # the command-line help, one sentence or two
    check: Callable[[Any], bool] | None = None  # a valid value? (None is always valid for an optional setting)
    expect: str = ""  # what a valid value is, as an error says it
    example: str = ""  # an example value, for the error
    flags: tuple[str, ...] | None = ()  # command-line flags; (): --<name>; None: no option of its own
    metavar: str | None = None
    show_default: str | None = None  # the default as --help shows it; None: the declared default
    choices: tuple[str, ...] | None = None  # a fixed set of values, listed by --help
    repeats: str | None = None  # the option may be repeated: the first value is this setting, the rest that one
    per: str | None = None  # a tuple holding one value per value of that setting (a group: --control-net's)
    one_for_all: bool = False  # with `per`: a single value may stand for every one, none for the defaults
    path: bool = False  # a file or folder: recorded as an absolute path (a batch line's: from the file's folder)
    hash_of: str | None = None  # the sha256 of that setting's file, recorded beside it; set anew, it is dropped
    infotext: Infotext | None = None
    loads: bool = False  # changes how the model loads: one value per batch run, not per line
    per_line: bool = True  # a batch line may set it (Run settings: no)
    # loads files, and yet a batch line may set it: every line's files load once (their union), and each U-Net batch
    # applies its own line's values (LoRAs: their weights)
    loads_union: bool = False
    # a path setting's values that are found by name (`--lora pink`): kept as typed, not made absolute
    named: Callable[[str], bool] | None = None
    env: str | None = None  # an environment variable that gives the option's value when it is not given

    def problem(self, name: str, value: Any) -> str:
        flag = self.flag(name)
        example = f"; for example {flag} {self.example}" if self.example else ""
        return f"{flag} must be {self.expect}, not {value!r}{example}"

    def flag(self, name: str) -> str:
        """How an error names the setting: its last flag, else --<name>; a setting without an option by name."""
        if self.flags is None:
            return f"the {name.replace('_', ' ')}"
        return self.flags[-1] if self.flags else f"--{name.replace('_', '-')}"


def setting(default: Any, help: str, check: tuple[Callable[[Any], bool], str] | None = None, **more: Any) -> Any:
    """A dataclass field declaring one setting (see `Setting`); `check` is (test, what a valid value is)."""
    test, expect = check if check is not None else (None, "")
    return field(default=default, metadata={"setting": Setting(help, test, expect, **more)})


def declared(cls: type) -> Iterator[tuple[Field, Setting]]:
    """The declared settings of a settings dataclass, in order."""
    for f in fields(cls):
        if "setting" in f.metadata:
            yield f, f.metadata["setting"]


def absolute_path(path: str | Path, folder: Path = Path()) -> str:
    """A setting's file or folder (declared with `path=True`) as recorded: absolute, a relative one taken from
    `folder` (the working directory, or a batch file's folder), `~` expanded."""
    return str((folder / Path(path).expanduser()).resolve())


def recorded_path(spec: Setting, value: str | Path, folder: Path = Path()) -> str:
    """A path setting's value (declared with `path=True`) as recorded: absolute (see `absolute_path`), but a name the
    setting finds by name (`--lora pink:1`) as typed."""
    if spec.named is not None and spec.named(str(value)):
        return str(value)
    return absolute_path(value, folder)


def check_settings(instance: Any) -> None:
    """Every declared setting of `instance` against its check (None passes for settings that default to None), then
    the counts of each group's settings."""
    for f, spec in declared(type(instance)):
        value = getattr(instance, f.name)
        if spec.check is None or (value is None and f.default is None):
            continue
        if not spec.check(value):
            raise UsageError(spec.problem(f.name, value))
    check_groups(instance)


def check_groups(instance: Any) -> None:
    """Each setting declared `per` another holds one value per value of it (as diffusers' MultiControlNetModel takes
    lists): `--control-net A --control-image a.png --control-net B --control-image b.png` pairs them in order; one
    declared `one_for_all` may also hold a single value for them all, or none (the defaults)."""
    specs = {f.name: spec for f, spec in declared(type(instance))}
    for name, spec in specs.items():
        if spec.per is None:
            continue
        n, m = len(getattr(instance, spec.per)), len(getattr(instance, name))
        flag, lead_flag = spec.flag(name), specs[spec.per].flag(spec.per)
        if m and not n:
            raise UsageError(f"{flag} needs {lead_flag} {specs[spec.per].metavar}; add it, or leave out {flag}")
        if m == n or (spec.one_for_all and m in (0, 1)):
            continue
        if not m:
            raise UsageError(
                f"{lead_flag} needs {flag} {spec.metavar} beside it, one per {lead_flag} in order; add {flag}"
            )
        each = "once for all of them or once per" if spec.one_for_all else "once per"
        raise UsageError(f"{n} {lead_flag} but {m} {flag}; give {flag} {each} {lead_flag}, in order")


def _size(text: str) -> dict[str, int]:
    width, height = (int(v) for v in text.split("x"))
    return {"width": width, "height": height}


def _check_sampler(name: Any) -> bool:
    return isinstance(name, str) and get_sampler(name) is not None  # get_sampler's error lists the names


def _check_interval(text: Any) -> bool:
    return isinstance(text, str) and parse_interval(text) is not None  # parse_interval's error shows both forms


def _check_pag_layers(text: Any) -> bool:
    return isinstance(text, str) and parse_pag_layers(text) is not None  # parse_pag_layers's error says why


def _check_classifier(text: Any) -> bool:
    return isinstance(text, str) and all(item.count("=") == 1 for item in text.split(",") if item.strip())


@dataclass(frozen=True)
class Hires:
    """The hires fix's second pass, resolved."""

    scale: float  # the first pass's size times this, rounded down to the latent scale
    strength: float
    steps: int  # of its schedule, truncated by the strength
    upscaler: str  # one of UPSCALERS


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet of a recipe, resolved."""

    net: str  # a folder or a single file
    image: str
    scale: float
    start: float  # the share of the steps after which it runs, and after which it stops
    end: float


@dataclass(frozen=True)
class Recipe:
    """What makes one image: recorded in its PNG and replayed by `--from`."""

    prompt: str = setting("", "The prompt; - reads it from stdin.", TEXT, flags=None)
    negative_prompt: str = setting(
        "",
        "Negative prompt: in replace mode it replaces the empty prompt as the unconditional branch; in separate "
        "mode it is a term of its own, and --neg may be repeated.",
        TEXT,
        flags=("--neg",),
        repeats="extra_negative_prompts",
        show_default="empty",
    )
    steps: int = setting(30, "Inference steps.", _whole(1, MAX_STEPS), infotext=Infotext("Steps"))
    sampler: str = setting(
        "dpm++2m-karras",
        "One of `sdcli samplers`; the CFG++ ones (-cfgpp) take --cfg as lambda in [0, 1].",
        (_check_sampler, "a sampler's name"),
        metavar="NAME",
        choices=SAMPLER_NAMES,
        infotext=Infotext(
            "Sampler",
            lambda record: get_sampler(record.sampler).a1111_name,
            lambda text: {"sampler": from_a1111_name(text).name},
        ),
    )
    schedule: str | None = setting(
        None,
        "Noise schedule (AUTOMATIC1111's Schedule type): default (the sampler's own), karras, exponential, beta "
        "(diffusers' use_*_sigmas) or sgm-uniform (trailing timesteps); a -karras sampler is its sampler with "
        "--schedule karras. Not every scheduler takes every schedule.",
        _one_of(SCHEDULE_NAMES),
        choices=SCHEDULE_NAMES,
        show_default="the sampler's",
        infotext=Infotext(
            "Schedule type",
            lambda record: None if record.schedule in (None, "default") else get_schedule(record.schedule).a1111_name,
            from_a1111_schedule,
        ),
    )
    cfg: float = setting(
        7.5,
        "Guidance scale w (1: the conditional model only, one U-Net pass; 0: the unconditional model); with a CFG++ "
        "sampler, lambda in [0, 1].",
        FINITE,
        example="7.5",
        infotext=Infotext("CFG scale", lambda r: float(r.cfg)),
    )
    seed: int = setting(
        0,
        "Seed of the first image; image i uses seed + i (always recorded).",
        _whole(0, MAX_SEED),
        show_default="random",
        infotext=Infotext("Seed"),
    )
    width: int | None = setting(
        None,
        "Width in pixels, a multiple of the model's latent scale (8 for SD).",
        _whole(1, MAX_SIDE),
        show_default="the model's",
        infotext=Infotext("Size", lambda record: f"{record.width}x{record.height}", _size),
    )
    height: int | None = setting(
        None,
        "Height in pixels, a multiple of the model's latent scale.",
        _whole(1, MAX_SIDE),
        show_default="the model's",
    )
    model: str = setting(
        DEFAULT_MODEL,
        "A diffusers folder, a single .safetensors file, a Hugging Face repo id, or a built-in model's name.",
        NAME,
        flags=("-m", "--model"),
        show_default=f"$SDCLI_MODEL, else {DEFAULT_MODEL}",
        loads=True,
        infotext=Infotext("Model", lambda record: record.model_name, lambda text: {"model": text}),
    )
    vae: str | None = setting(
        None,
        "Another VAE: an original-layout .safetensors file, a diffusers VAE folder, or a model folder.",
        NAME,
        show_default="the model's",
        loads=True,
        path=True,
    )
    prediction_type: str | None = setting(
        None,
        "What the model predicts, for a single file whose weights do not say (a fine-tune, a merge); a "
        '.yaml beside it with parameterization: "v" says v_prediction, as AUTOMATIC1111 reads it.',
        _one_of(PREDICTION_TYPES),
        choices=PREDICTION_TYPES,
        show_default="as detected",
        loads=True,
    )
    # Textual inversion (sdcli.loading.embeddings): a replay records every file loaded, by path and sha256.
    embeddings: tuple[str, ...] = setting(
        (),
        "A textual inversion embedding (repeatable), its token in prompts the file's name without suffix, one token "
        "per vector (name, name_1, ...): AUTOMATIC1111's .safetensors (emb_params; SDXL: clip_l and clip_g) or .pt "
        "(string_to_param, with --allow-pickle), or diffusers' learned_embeds.",
        PATHS,
        flags=("--embedding",),
        metavar="PATH",
        path=True,
        loads=True,
        show_default="none",
        infotext=Infotext("TI hashes", _ti_hashes, lambda text: {}),  # names and short hashes: no files to load
    )
    embeddings_sha256: tuple[str, ...] = setting(
        (), "The embeddings' sha256s: a replay refuses a changed file.", flags=None, hash_of="embeddings", loads=True
    )
    embedding_dir: str | None = setting(
        None,
        "Load every embedding file in this folder (.safetensors; .pt and .bin with --allow-pickle), as --embedding.",
        NAME,
        metavar="DIR",
        path=True,
        loads=True,
        show_default="none",
    )
    # LoRA (sdcli.loading.loras): the files load once per run, as adapters whose weights the engine sets per batch.
    loras: tuple[str, ...] = setting(
        (),
        "A LoRA (repeatable) and its weight, 1 by default: kohya/AUTOMATIC1111's (lora_unet_..., lora_te_...) or "
        "diffusers'/peft's .safetensors (.pt and .bin with --allow-pickle), applied unfused, several at once; a NAME "
        "is found as a prompt's <lora:NAME:WEIGHT> tag is, in --lora-dir and the model's own loras/.",
        PATHS,
        flags=("--lora",),
        metavar="PATH|NAME[:WEIGHT]",
        path=True,
        named=is_lora_name,
        loads=True,
        loads_union=True,
        show_default="none",
        infotext=Infotext("Lora hashes", _lora_hashes, lambda text: {}),  # names and short hashes: no files to load
    )
    loras_sha256: tuple[str, ...] = setting(
        (), "The LoRAs' sha256s: a replay refuses a changed file.", flags=None, hash_of="loras", loads=True
    )
    lora_dir: str | None = setting(
        None,
        "Where <lora:NAME:WEIGHT> tags in the prompt (AUTOMATIC1111's) and --lora NAME find NAME.safetensors (.pt, "
        ".ckpt, .bin with --allow-pickle), before the model's own loras/ folder; the tag is removed from the text "
        "that is encoded.",
        NAME,
        metavar="DIR",
        path=True,
        loads=True,
        env="SDCLI_LORA_DIR",
        show_default="$SDCLI_LORA_DIR, else none",
    )
    # Images in (sdcli.modes.img2img).
    init_image: str | None = setting(
        None,
        "Start from this image (img2img): resized to the size asked for (default: its own, rounded down to the "
        "latent scale), encoded by the VAE, noised to --strength and denoised from there.",
        NAME,
        flags=("-i", "--init-image"),
        metavar="IMAGE",
        path=True,
        show_default="none: from noise",
    )
    init_image_sha256: str | None = setting(
        None, "The init image's sha256: a replay refuses a changed file.", flags=None, hash_of="init_image"
    )
    strength: float | None = setting(
        None,
        "Denoising strength S of img2img, above 0 and at most 1: the noise added to the image, and the share of "
        "--steps run (int(steps x S)); 1 keeps nothing of the image but its size.",
        (lambda v: _is_number(v) and 0 < v <= 1, "a number above 0 and at most 1"),
        example="0.5",
        metavar="S",
        show_default=f"{DEFAULT_STRENGTH:g} with --init-image",
        infotext=Infotext("Denoising strength", read_if=lambda params: "Hires upscale" not in params),
    )
    # Inpainting (sdcli.modes.inpaint).
    mask: str | None = setting(
        None,
        "Inpaint --init-image: repaint where this image is white, keep where it is black (grey: binarised at "
        "half); resized to the output size. An inpainting model (9-channel U-Net) takes it as input, any other "
        "model gets the kept area blended back after every step.",
        NAME,
        flags=("--mask",),
        metavar="MASK",
        path=True,
        show_default="none",
    )
    mask_sha256: str | None = setting(None, "The mask's sha256: a replay refuses a changed file.", flags=None,
                                      hash_of="mask")  # fmt: skip
    mask_blur: int = setting(
        4,
        "Gaussian blur of the mask, its radius in the mask's pixels, before it is used (AUTOMATIC1111's); 0: none.",
        _whole(0, MAX_MASK_BLUR),
        metavar="PX",
        infotext=Infotext("Mask blur", lambda record: None if record.mask is None else record.mask_blur),
    )
    mask_overlay: bool = setting(
        True,
        "After decoding, paste the kept area back from --init-image through the blurred mask (AUTOMATIC1111's "
        "overlay), so that it is the input's pixels exactly; --no-mask-overlay keeps the decoded ones.",
        FLAG,
        flags=("--mask-overlay/--no-mask-overlay",),
        show_default="on",
    )
    # ControlNet (sdcli.loading.controlnet, sdcli.modes.controlnet): the networks load once per run beside the model;
    # each --control-net leads a group, its image, scale, start and end given in the same order (or, but for the
    # image, once for all), as diffusers' MultiControlNetModel takes lists.
    control_nets: tuple[str, ...] = setting(
        (),
        "A ControlNet for the model's family (repeatable, each with its own --control-image): a diffusers "
        "ControlNetModel folder, or one .safetensors file in the original layout (control_v11p_sd15_canny) or "
        "diffusers'. Every guidance branch is steered: the residuals of all of them, each times its --control-scale, "
        "are summed and added to the U-Net's in the same batched call.",
        PATHS,
        flags=("--control-net",),
        metavar="MODEL",
        path=True,
        loads=True,
        show_default="none",
        infotext=Infotext("ControlNet {i}", _controlnet_units, lambda texts: {}),  # names: no file to load
    )
    control_nets_sha256: tuple[str, ...] = setting(
        (),
        "The ControlNets' sha256s (a single file's, a folder's weights file's): a replay refuses a changed file.",
        flags=None,
        hash_of="control_nets",
        loads=True,
    )
    control_images: tuple[str, ...] = setting(
        (),
        "The image of each --control-net, in order (an edge map, a pose, a depth map...), RGB, resized to the output "
        "size (Lanczos), in [0, 1] as diffusers' pipeline gives it; the same for every image and branch.",
        PATHS,
        flags=("--control-image",),
        metavar="IMAGE",
        path=True,
        per="control_nets",
        show_default="none",
    )
    control_images_sha256: tuple[str, ...] = setting(
        (), "The control images' sha256s: a replay refuses a changed file.", flags=None, hash_of="control_images"
    )
    control_scales: tuple[float, ...] = setting(
        (),
        "The weight of each --control-net, in order, or one for all: its residuals times S (diffusers' "
        "controlnet_conditioning_scale); 0 gives bit for bit the image without it.",
        FINITES,
        flags=("--control-scale",),
        example="0.8",
        metavar="S",
        per="control_nets",
        one_for_all=True,
        show_default=f"{DEFAULT_CONTROL_SCALE:g}",
    )
    control_starts: tuple[float, ...] = setting(
        (),
        "The share of the steps after which each --control-net starts (in order, or one for all): step i of N runs it "
        "iff i/N >= A and (i + 1)/N <= B (diffusers' control_guidance_start and _end).",
        (lambda v: _numbers(v, lambda x: 0 <= x < 1), "numbers from 0 to below 1"),
        flags=("--control-start",),
        example="0.2",
        metavar="A",
        per="control_nets",
        one_for_all=True,
        show_default=f"{DEFAULT_CONTROL_START:g}",
    )
    control_ends: tuple[float, ...] = setting(
        (),
        "The share of the steps after which each --control-net stops (in order, or one for all; see --control-start).",
        (lambda v: _numbers(v, lambda x: 0 < x <= 1), "numbers above 0 and at most 1"),
        flags=("--control-end",),
        example="0.8",
        metavar="B",
        per="control_nets",
        one_for_all=True,
        show_default=f"{DEFAULT_CONTROL_END:g}",
    )
    # The hires fix (sdcli.modes.hires): AUTOMATIC1111 writes its strength as "Denoising strength", by "Hires upscale".
    hires_scale: float | None = setting(
        None,
        "Hires fix: make the image at the size asked for, upscale it by this factor, and denoise it again at the "
        "larger size (img2img), in one command with one seed.",
        (lambda v: _is_number(v) and 1 <= v <= MAX_HIRES_SCALE, f"a number from 1 to {MAX_HIRES_SCALE:g}"),
        example="2",
        metavar="F",
        show_default="off",
        infotext=Infotext("Hires upscale"),
    )
    hires_strength: float | None = setting(
        None,
        "Denoising strength of the hires pass, above 0 and at most 1.",
        (lambda v: _is_number(v) and 0 < v <= 1, "a number above 0 and at most 1"),
        example="0.5",
        metavar="S",
        show_default=f"{DEFAULT_HIRES_STRENGTH:g} with --hires-scale",
        infotext=Infotext(
            "Denoising strength",
            write=lambda r: r.hires_strength if r.init_image is None else None,
            read_if=lambda params: "Hires upscale" in params,
        ),
    )
    hires_steps: int | None = setting(
        None,
        "Steps of the hires pass's schedule, of which it runs int(steps x strength).",
        _whole(1, MAX_STEPS),
        show_default="--steps",
        infotext=Infotext("Hires steps"),
    )
    hires_upscaler: str | None = setting(
        None,
        "lanczos: the decoded image resized in pixels (Pillow), then encoded; latent: the latents resized "
        "bilinearly (AUTOMATIC1111's Latent, best at --hires-strength 0.5 or more).",
        _one_of(UPSCALERS),
        choices=UPSCALERS,
        show_default="lanczos with --hires-scale",
        infotext=Infotext(
            "Hires upscaler",
            write=lambda r: r.hires_upscaler and r.hires_upscaler.title(),
            read=lambda text: {"hires_upscaler": text.lower()} if text.lower() in UPSCALERS else {},
        ),
    )
    # Guidance beyond plain CFG (sdcli.guidance) and prompt encoding (sdcli.text).
    extra_negative_prompts: tuple[str, ...] = setting(
        (), "Negative prompts after the first (separate mode).", flags=None
    )
    neg_mode: str = setting(
        "replace",
        "replace (diffusers, AUTOMATIC1111) or separate: eps_empty + w (eps_pos - eps_empty) - w_neg (eps_neg "
        "- eps_empty) for each --neg, all branches in one batched U-Net call.",
        _one_of(NEG_MODES),
        choices=NEG_MODES,
    )
    neg_scale: float | None = setting(
        None,
        "w_neg of each negative, separate mode only; 0 gives bit for bit the image with no negative prompt.",
        FINITE,
        example="4",
        show_default="--cfg",
    )
    cfg_rescale: float = setting(
        0.0,
        "CFG rescale (Lin et al. 2023, eq. 15-16), 0 to 1: the guided prediction (eps or v) rescaled to the "
        "conditional one's standard deviation, blended by PHI; diffusers' guidance_rescale. 0.7 suits v-prediction.",
        (lambda v: _is_number(v) and 0 <= v <= 1, "a number from 0 to 1"),
        example="0.7",
        metavar="PHI",
        show_default="0: off",
    )
    apg: bool = setting(
        False,
        "Adaptive projected guidance (Sadat et al. 2024) in CFG's place, on the denoised predictions D: D_c + (w - 1) "
        "(Delta_orth + eta Delta_par), Delta = D_c - D_u with momentum, cut to norm r, split along D_c; the same "
        "batched U-Net call; --cfg-rescale applies after it; replace mode only.",
        FLAG,
    )
    apg_eta: float = setting(
        DEFAULT_APG_ETA,
        "APG's eta, 0 to 1: the weight of the update's part parallel to D_c (0, the paper's choice, drops it; 1 "
        "keeps CFG's).",
        (lambda v: _is_number(v) and 0 <= v <= 1, "a number from 0 to 1"),
        example="0",
        metavar="ETA",
    )
    apg_norm_threshold: float = setting(
        DEFAULT_APG_NORM_THRESHOLD,
        "APG's rescaling radius r: each image's update is cut to norm at most r (0: off); diffusers' default, "
        "ComfyUI's is 5.",
        (lambda v: _is_number(v) and v >= 0, "a number of at least 0"),
        example="15",
        metavar="R",
    )
    apg_momentum: float = setting(
        DEFAULT_APG_MOMENTUM,
        "APG's momentum beta, above -1 and below 1: the update is Delta_t + beta Delta_(t-1) summed over the steps "
        "(negative: the paper's reverse momentum, e.g. -0.5; 0: off).",
        (lambda v: _is_number(v) and -1 < v < 1, "a number above -1 and below 1"),
        example="-0.5",
        metavar="BETA",
    )
    pag_scale: float | None = setting(
        None,
        "Perturbed-attention guidance (Ahn et al. 2024): S (eps_c - eps_p) added to the guided prediction, eps_p the "
        "conditional pass with self-attention replaced by the identity in --pag-layers, one more branch of the same "
        "batched U-Net call (also at --cfg 1); 0 gives bit for bit the image without PAG; replace mode only, not "
        "with --apg.",
        FINITE,
        example="3",
        metavar="S",
        show_default="off",
    )
    pag_layers: str | None = setting(
        None,
        "The self-attention layers PAG perturbs, as diffusers' pag_applied_layers: names or patterns of the "
        "U-Net's modules (re.search), separated by commas, e.g. mid, down_blocks.2, up_blocks.0.attentions.1.",
        (_check_pag_layers, "layer names separated by commas"),
        example="mid",
        metavar="LAYERS",
        show_default=f"{DEFAULT_PAG_LAYERS} with --pag-scale",
    )
    guidance_interval: str | None = setting(
        None,
        "Guide only while the noise level is in [LO, HI], else run the conditional pass alone (Kynkäänniemi "
        "et al. 2024). Plain numbers are sigmas (an SD run goes from about 14.6 to 0.03; the paper's SD-XL interval is "
        "0.28,5.42); percentages are of the schedule as in ComfyUI (20%,80%: p% is timestep (1 - p) x 999, 0% the "
        "noisy start).",
        (_check_interval, "LO,HI"),
        metavar="LO,HI",
        show_default="every step",
    )
    long_prompts: bool = setting(
        True,
        "Encode prompts over the encoder's 77 tokens in 75-token chunks (AUTOMATIC1111); --no-long-prompts "
        "truncates them as diffusers does, with a warning.",
        FLAG,
        flags=("--long-prompts/--no-long-prompts",),
        show_default="long",
    )
    clip_skip: int = setting(
        1,
        "Read the prompts from the text encoder's N-th layer from the end (AUTOMATIC1111's Clip skip): 1 is the last, "
        "2 the penultimate through the final layer norm, on every branch; diffusers' clip_skip=k is N = k + 1. "
        "SDXL counts from the penultimate layer it reads by default, as diffusers does.",
        _whole(1, MAX_CLIP_SKIP),
        metavar="N",
        infotext=Infotext("Clip skip", lambda record: None if record.clip_skip == 1 else record.clip_skip),
    )
    classifier: str | None = setting(
        None,
        "Classifier guidance (Dhariwal & Nichol 2021) towards these labels of the model's noise-aware "
        "classifier, e.g. color=red,shape=circle: eps - s sqrt(1 - alphabar_t) grad log p(y | x_t, t) at every "
        "step, after CFG; any prompt, the empty one included; every sampler but the CFG++ ones; epsilon-prediction "
        "models that ship a classifier/ (the built-in shapes does).",
        (_check_classifier, "HEAD=LABEL pairs separated by commas"),
        example="color=red,shape=circle",
        metavar="HEAD=LABEL,...",
        show_default="off",
    )
    classifier_scale: float | None = setting(
        None,
        "The classifier guidance scale s; 0 gives bit for bit the unguided image.",
        FINITE,
        example=f"{DEFAULT_CLASSIFIER_SCALE:g}",
        metavar="S",
        show_default=f"{DEFAULT_CLASSIFIER_SCALE:g} with --classifier",
    )

    def __post_init__(self) -> None:
        for f, _ in declared(Recipe):  # JSON gives lists for tuples
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
        negatives = self.extra_negative_prompts
        if not (isinstance(negatives, tuple) and all(_is_text(n) for n in negatives)):
            raise UsageError(f"--neg must be valid UTF-8 text of at most {MAX_TEXT_BYTES:,} bytes")
        check_settings(self)
        read_tags(self.prompt)  # a malformed <lora:...> tag: refused before anything loads
        if self.neg_mode == "replace":
            if negatives:
                raise UsageError(
                    "several --neg need --neg-mode separate (in replace mode the one negative prompt is the "
                    "unconditional branch); give one --neg, or add --neg-mode separate"
                )
            if self.neg_scale is not None:
                raise UsageError("--neg-scale needs --neg-mode separate; add it, or leave out --neg-scale")
        if self.classifier is None and self.classifier_scale is not None:
            raise UsageError("--classifier-scale needs --classifier HEAD=LABEL (for example --classifier color=red)")
        if self.init_image is None and self.strength is not None:
            raise UsageError("--strength is img2img's: it needs --init-image IMAGE; add one, or leave out --strength")
        if self.init_image is None and self.mask is not None:
            raise UsageError(
                "--mask says what to repaint of --init-image IMAGE; add the image to inpaint, or leave out --mask"
            )
        if self.mask is not None and self.hires_scale is not None:
            raise UsageError(
                "the hires fix's second pass does not inpaint; leave out --mask or --hires-scale (inpaint, then "
                "upscale the result with --init-image and --hires-scale)"
            )
        self._check_control()
        for name in ("hires_strength", "hires_steps", "hires_upscaler"):
            if self.hires_scale is None and getattr(self, name) is not None:
                flag = "--" + name.replace("_", "-")
                raise UsageError(f"{flag} is the hires fix's: it needs --hires-scale F; add one, or leave out {flag}")
        resolve_schedule(get_sampler(self.sampler), self.schedule)  # a -karras name fixes its schedule
        self._check_apg()
        self._check_pag()
        self._check_cfg_pp()

    def _check_control(self) -> None:
        """Each ControlNet starts before it ends (its group's counts: `check_groups`)."""
        for i, unit in enumerate(self.controls):
            if unit.start >= unit.end:
                which = f" (of --control-net {i + 1})" if len(self.control_nets) > 1 else ""
                raise UsageError(
                    f"--control-start {unit.start:g} must be below --control-end {unit.end:g}{which}; for example "
                    "--control-start 0 --control-end 0.8"
                )

    def _check_apg(self) -> None:
        """APG's settings are APG's, and it combines one unconditional branch (replace mode)."""
        for name, default in (
            ("apg_eta", DEFAULT_APG_ETA),
            ("apg_norm_threshold", DEFAULT_APG_NORM_THRESHOLD),
            ("apg_momentum", DEFAULT_APG_MOMENTUM),
        ):
            if not self.apg and getattr(self, name) != default:
                flag = "--" + name.replace("_", "-")
                raise UsageError(f"{flag} is APG's: it needs --apg; add it, or leave out {flag}")
        if self.apg and self.neg_mode == "separate":
            raise UsageError(
                "--apg combines the conditional and one unconditional branch, not separate negatives; use "
                "--neg-mode replace, or leave out --apg"
            )

    def _check_pag(self) -> None:
        """PAG's layers are PAG's, and its perturbed branch follows the batch [unconditional, conditional] that
        diffusers' PAG attention processors split in thirds (or halves): no separate negatives, no APG."""
        if self.pag_scale is None:
            if self.pag_layers is not None:
                raise UsageError("--pag-layers is PAG's: it needs --pag-scale S; add it, or leave out --pag-layers")
            return
        if self.neg_mode == "separate":
            raise UsageError(
                "--pag-scale runs diffusers' PAG attention on the batch [unconditional, conditional, perturbed], "
                "which separate negatives do not fit; use --neg-mode replace, or leave out --pag-scale"
            )
        if self.apg:
            raise UsageError(
                "--pag-scale adds its term to CFG's combination, and APG's projection of it is not defined; leave "
                "out --apg or --pag-scale"
            )

    def _check_cfg_pp(self) -> None:
        """A CFG++ sampler takes --cfg as lambda in [0, 1], and its step needs the unconditional prediction at every
        step beside CFG's own combination."""
        if not get_sampler(self.sampler).cfg_pp:
            return
        if not 0 <= self.cfg <= 1:
            raise UsageError(
                f"--sampler {self.sampler} (CFG++) takes --cfg as lambda from 0 to 1, not {self.cfg!r}; "
                "for example --cfg 0.6"
            )
        base = self.sampler.removesuffix("-cfgpp")
        for flag, given in (
            ("--apg", self.apg),
            ("--guidance-interval", self.guidance_interval is not None),
            ("--classifier", self.classifier is not None),
        ):
            if given:
                raise UsageError(
                    f"--sampler {self.sampler} (CFG++) renoises along the unconditional prediction at every step, "
                    f"which {flag} changes; leave out {flag}, or use --sampler {base}"
                )

    @property
    def hires(self) -> Hires | None:
        """The hires pass as it runs (defaults filled in), or None."""
        if self.hires_scale is None:
            return None
        strength = DEFAULT_HIRES_STRENGTH if self.hires_strength is None else float(self.hires_strength)
        upscaler = self.hires_upscaler or UPSCALERS[0]
        return Hires(float(self.hires_scale), strength, self.hires_steps or self.steps, upscaler)

    @property
    def controls(self) -> tuple[ControlUnit, ...]:
        """Each --control-net with its image, scale, start and end, as they run (a value given once: for all; none:
        the defaults)."""

        def each(values: tuple[float, ...], default: float) -> tuple[float, ...]:
            return values if len(values) == len(self.control_nets) else (values or (default,)) * len(self.control_nets)

        scales = each(self.control_scales, DEFAULT_CONTROL_SCALE)
        starts = each(self.control_starts, DEFAULT_CONTROL_START)
        ends = each(self.control_ends, DEFAULT_CONTROL_END)
        columns = (self.control_nets, self.control_images, scales, starts, ends)
        return tuple(ControlUnit(*unit) for unit in zip(*columns, strict=True))

    @property
    def resolved_strength(self) -> float | None:
        """img2img's strength as it runs: None without an init image."""
        if self.init_image is None:
            return None
        return DEFAULT_STRENGTH if self.strength is None else float(self.strength)

    @property
    def resolved_classifier_scale(self) -> float | None:
        """s of classifier guidance as it runs: None when it is off."""
        if self.classifier is None:
            return None
        return DEFAULT_CLASSIFIER_SCALE if self.classifier_scale is None else float(self.classifier_scale)

    @property
    def resolved_pag_layers(self) -> str | None:
        """PAG's layers as they run: None without --pag-scale."""
        if self.pag_scale is None:
            return None
        return DEFAULT_PAG_LAYERS if self.pag_layers is None else self.pag_layers

    @property
    def neg_weight(self) -> float:
        """w_neg of each separate negative: --neg-scale, else the guidance scale w."""
        return self.cfg if self.neg_scale is None else self.neg_scale

    @property
    def separate_negatives(self) -> tuple[str, ...]:
        """The negative prompts that run as terms of their own: in separate mode, the non-empty ones, unless their
        scale w_neg is 0 (then none runs)."""
        if self.neg_mode != "separate" or self.neg_weight == 0:
            return ()
        return tuple(n for n in (self.negative_prompt, *self.extra_negative_prompts) if n)

    @property
    def prompts(self) -> tuple[str, str, tuple[str, ...]]:
        """The texts of the recipe: prompt, negative prompt, further negatives."""
        return self.prompt, self.negative_prompt, self.extra_negative_prompts

    @property
    def shared(self) -> Recipe:
        """The recipe with its prompts and seed blanked: what the images of one U-Net batch share."""
        return replace(self, prompt="", negative_prompt="", extra_negative_prompts=(), seed=0)

    @property
    def model_name(self) -> str:
        """The model's short name, as AUTOMATIC1111 writes it (a folder's name, a repo id, a built-in name)."""
        return Path(self.model).name if Path(self.model).is_absolute() else self.model


@dataclass(frozen=True)
class ImageRecord(Recipe):
    """Everything that made one image: its recipe, resolved (size, model reference, classifier scale), and where
    it ran. Written into its PNG, printed by --json, and read back by --from."""

    device: str = field(default="cpu", kw_only=True)  # the device and dtype it ran on, as resolved ("cpu", "fp32")
    dtype: str = field(default="fp32", kw_only=True)

    def as_dict(self) -> dict[str, Any]:
        """The record as JSON holds it (tuples as lists)."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


RECORD_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ImageRecord))


@dataclass(frozen=True)
class Run:
    """How a run goes: where and how fast. None of these changes what an image is, beyond the rounding of its
    device and dtype (which the record keeps)."""

    device: str = setting(
        "auto",
        "auto is CUDA when present (this process's GPU under accelerate launch), else the CPU.",
        _one_of(DEVICES),
        choices=DEVICES,
        per_line=False,
    )
    dtype: str = setting(
        "auto",
        "The weights' dtype; auto is fp16 on a GPU, bf16 on a CPU with bf16 matrix units (AMX), else fp32 "
        "($SDCLI_CPU_BF16=1 or 0 overrides the CPU's answer).",
        _one_of(DTYPES),
        choices=DTYPES,
        per_line=False,
    )
    batch_size: int = setting(
        1,
        "Images per U-Net call: the same images, at most a rounding step apart where the CPU's oneDNN "
        "convolutions pick another algorithm for another batch size.",
        _whole(1, MAX_BATCH),
        per_line=False,
    )
    allow_pickle: bool = setting(
        False, "Load .ckpt/.pt/.bin checkpoints (tensors only: torch.load(weights_only=True)).", FLAG, per_line=False
    )
    vae_tiling: bool = setting(
        False, "Decode in tiles (also chosen by itself when a GPU would not hold the decode).", FLAG, per_line=False
    )
    offload: bool = setting(
        False, "Keep idle components in CPU memory (accelerate), for small GPUs; CUDA only.", FLAG, per_line=False
    )
    compile: bool = setting(
        False, "torch.compile the U-Net (the first image of each size pays the compilation).", FLAG, per_line=False
    )

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True)
class Request:
    """n images of one recipe, seeds seed .. seed + n - 1, and how to run them."""

    recipe: Recipe
    num_images: int = setting(1, "Number of images.", _whole(1, MAX_IMAGES), flags=("-n", "--num-images"))
    run: Run = field(default_factory=Run)

    def __post_init__(self) -> None:
        check_settings(self)
        if self.recipe.seed + self.num_images - 1 > MAX_SEED:
            raise UsageError(
                f"--seed must be a whole number from 0 to {MAX_SEED - self.num_images + 1}, not {self.recipe.seed!r}"
            )

    @property
    def seeds(self) -> list[int]:
        return [self.recipe.seed + i for i in range(self.num_images)]

    @property
    def images(self) -> list[Recipe]:
        """One recipe per image, in seed order: each remakes its image alone."""
        return [replace(self.recipe, seed=seed) for seed in self.seeds]

    @staticmethod
    def of(settings: Mapping[str, Any] | None = None, /, **more: Any) -> Request:
        """A request from settings by name, of any of the three kinds (a command line's, a batch line's)."""
        groups: dict[type, dict[str, Any]] = {Recipe: {}, Request: {}, Run: {}}
        for name, value in {**(settings or {}), **more}.items():
            owner = KIND_OF.get(name)
            if owner is None:
                raise UsageError(f"unknown setting {name!r}")
            groups[owner][name] = value
        return Request(Recipe(**groups[Recipe]), run=Run(**groups[Run]), **groups[Request])

    def with_recipe(self, **changes: Any) -> Request:
        return replace(self, recipe=replace(self.recipe, **changes))


# Every declared setting: name -> the dataclass that holds it.
KIND_OF: dict[str, type] = {f.name: cls for cls in (Recipe, Request, Run) for f, _ in declared(cls)}
SETTINGS: dict[str, tuple[Field, Setting]] = {
    f.name: (f, spec) for cls in (Recipe, Request, Run) for f, spec in declared(cls)
}


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def parse_text(name: str, text: str) -> Any:
    """A setting's value from text (a CSV cell, an infotext value), by its declared type; ValueError if it is not
    one. Text settings stay text; tuples of text are one item; tuples of numbers are separated by commas."""
    kind = str(SETTINGS[name][0].type) if name in SETTINGS else "str"
    if kind.startswith("float"):
        return float(text)
    if kind.startswith("int"):
        return int(text)
    if kind.startswith("bool"):
        word = text.strip().lower()
        if word not in _TRUE + _FALSE:
            raise ValueError(f"{text!r} is not true or false")
        return word in _TRUE
    if kind.startswith("tuple[float"):
        return tuple(float(item) for item in text.split(","))
    if kind.startswith("tuple"):
        return (text,)
    return text


def as_settings(request: Request) -> dict[str, Any]:
    """The request's settings by name (the inverse of `Request.of`)."""
    return {**asdict(request.recipe), "num_images": request.num_images, **asdict(request.run)}
