"""What a run asks for, as frozen dataclasses checked on creation. No torch here: the command line validates
settings (and `sdcli inspect` reads them) without importing the model stack.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from sdcli.errors import UsageError
from sdcli.guidance.interval import parse_interval
from sdcli.sampling.samplers import get_sampler

DEFAULT_MODEL = "shapes"  # the built-in model, used when neither --model nor $SDCLI_MODEL names one
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "fp32", "fp16", "bf16")
NEG_MODES = ("replace", "separate")  # the negative prompt as the unconditional branch, or as terms of their own
DEFAULT_CLASSIFIER_SCALE = 10.0  # s of classifier guidance, when --classifier names targets
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes unsigned 64-bit seeds


def random_seed() -> int:
    """A fresh seed from the OS's entropy, for runs that give none (it is recorded, so the run can be repeated)."""
    return random.SystemRandom().randrange(2**32)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_guidance(request: Request) -> None:
    """The guidance and prompt settings of a request (JSON gives lists: the negatives become a tuple)."""
    negatives = request.extra_negative_prompts
    _check(
        isinstance(negatives, (list, tuple)) and all(isinstance(n, str) for n in negatives),
        "--neg must be text",
    )
    object.__setattr__(request, "extra_negative_prompts", tuple(negatives))
    _check(request.neg_mode in NEG_MODES, f"--neg-mode must be one of {', '.join(NEG_MODES)}, not {request.neg_mode!r}")
    if request.neg_mode == "replace":
        _check(
            not negatives,
            "several --neg need --neg-mode separate (in replace mode the one negative prompt is the unconditional "
            "branch); give one --neg, or add --neg-mode separate",
        )
        _check(request.neg_scale is None, "--neg-scale needs --neg-mode separate; add it, or leave out --neg-scale")
    _check(
        request.neg_scale is None or _is_number(request.neg_scale),
        f"--neg-scale must be a finite number, not {request.neg_scale!r}; for example --neg-scale 4",
    )
    _check(
        _is_number(request.cfg_rescale) and 0 <= request.cfg_rescale <= 1,
        f"--cfg-rescale must be a number from 0 to 1, not {request.cfg_rescale!r}; for example --cfg-rescale 0.7",
    )
    if request.guidance_interval is not None:
        parse_interval(request.guidance_interval)
    _check(isinstance(request.long_prompts, bool), "long_prompts must be true or false")
    if request.classifier is None:
        _check(
            request.classifier_scale is None,
            "--classifier-scale needs --classifier HEAD=LABEL (for example --classifier color=red)",
        )
        return
    _check(
        isinstance(request.classifier, str)
        and all(item.count("=") == 1 for item in request.classifier.split(",") if item.strip()),
        f"--classifier {request.classifier!r}: give HEAD=LABEL pairs separated by commas, for example "
        "color=red,shape=circle",
    )
    _check(
        request.classifier_scale is None or _is_number(request.classifier_scale),
        f"--classifier-scale must be a finite number, not {request.classifier_scale!r}; for example "
        f"--classifier-scale {DEFAULT_CLASSIFIER_SCALE:g}",
    )


@dataclass(frozen=True)
class Request:
    """One prompt, its settings, and how many images to make of it."""

    prompt: str
    seed: int  # image i is made from seed + i, so any image can be remade alone
    negative_prompt: str = ""  # the unconditional branch of classifier-free guidance ("": the empty prompt)
    cfg: float = 7.5  # guidance scale w: 1 runs the conditional model only, 0 the unconditional one
    steps: int = 30  # inference steps, as diffusers' `num_inference_steps`
    sampler: str = "dpm++2m-karras"  # a name from sdcli.sampling.samplers
    width: int | None = None  # pixels; None: the model's native size
    height: int | None = None
    num_images: int = 1
    batch_size: int = 1  # images per U-Net call; never changes the pixels
    model: str = DEFAULT_MODEL  # a diffusers folder, a Hugging Face repo id, or a built-in model's name
    device: str = "auto"  # one of DEVICES
    dtype: str = "auto"  # one of DTYPES
    vae: str | None = None  # another VAE (a file or folder) in place of the model's own
    allow_pickle: bool = False  # load pickle checkpoints' tensors (torch.load with weights_only=True)
    vae_tiling: bool = False  # how to run, not what to make: tiled VAE decode, CPU offload, torch.compile
    offload: bool = False
    compile: bool = False
    # Guidance beyond plain CFG (sdcli.guidance.cfg) and prompt encoding (sdcli.text.prompts).
    extra_negative_prompts: tuple[str, ...] = ()  # negatives after the first; only with neg_mode "separate"
    neg_mode: str = "replace"  # one of NEG_MODES
    neg_scale: float | None = None  # w_neg of each separate negative; None: the guidance scale w
    cfg_rescale: float = 0.0  # phi of CFG rescale (Lin et al. 2023), 0 to 1; 0: off
    guidance_interval: str | None = None  # "LO,HI" (sigmas) or "LO%,HI%" (of the schedule) as typed; None: always
    long_prompts: bool = True  # prompts over the encoder's length in 75-token chunks; False: truncated
    classifier: str | None = None  # classifier guidance's targets as typed, "color=red,shape=circle"; None: off
    classifier_scale: float | None = None  # s of classifier guidance (Dhariwal & Nichol 2021); None: the default

    def __post_init__(self) -> None:
        _check_guidance(self)
        _check(isinstance(self.prompt, str), "the prompt must be text")
        _check(isinstance(self.negative_prompt, str), "--neg must be text")
        _check(
            isinstance(self.cfg, (int, float)) and not isinstance(self.cfg, bool) and math.isfinite(self.cfg),
            f"--cfg must be a finite number, not {self.cfg!r}; for example --cfg 7.5",
        )
        _check(_is_int(self.steps) and self.steps >= 1, f"--steps must be a whole number >= 1, not {self.steps!r}")
        _check(isinstance(self.sampler, str), "--sampler must be a name")
        get_sampler(self.sampler)
        for name in ("width", "height"):
            value = getattr(self, name)
            _check(
                value is None or (_is_int(value) and value >= 1),
                f"--{name} must be a whole number of pixels >= 1, not {value!r}",
            )
        _check(
            _is_int(self.num_images) and self.num_images >= 1,
            f"-n/--num-images must be >= 1, not {self.num_images!r}",
        )
        _check(
            _is_int(self.batch_size) and self.batch_size >= 1,
            f"--batch-size must be >= 1, not {self.batch_size!r}",
        )
        _check(
            _is_int(self.seed) and 0 <= self.seed and self.seed + self.num_images - 1 <= MAX_SEED,
            f"--seed must be a whole number from 0 to {MAX_SEED - self.num_images + 1}, not {self.seed!r}",
        )
        _check(isinstance(self.model, str) and self.model != "", "--model must name a model")
        _check(self.device in DEVICES, f"--device must be one of {', '.join(DEVICES)}, not {self.device!r}")
        _check(self.dtype in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")
        _check(self.vae is None or isinstance(self.vae, str) and self.vae != "", "--vae must name a file or folder")

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.num_images)]

    @property
    def resolved_classifier_scale(self) -> float | None:
        """s of classifier guidance as it runs: None when it is off."""
        if self.classifier is None:
            return None
        return DEFAULT_CLASSIFIER_SCALE if self.classifier_scale is None else float(self.classifier_scale)

    @property
    def separate_negatives(self) -> tuple[str, ...]:
        """The negative prompts that are terms of their own (neg_mode "separate"; empty ones subtract nothing)."""
        if self.neg_mode != "separate":
            return ()
        return tuple(n for n in (self.negative_prompt, *self.extra_negative_prompts) if n)


@dataclass(frozen=True)
class ImageRecord:
    """Everything that made one image: written into its PNG, printed by --json, and read back by --from."""

    prompt: str
    negative_prompt: str
    seed: int
    cfg: float
    steps: int
    sampler: str
    width: int
    height: int
    model: str  # the model reference that loads it again (built-in name, absolute folder path, or repo id)
    device: str  # the device and dtype it ran on, as resolved ("cpu", "fp32")
    dtype: str
    vae: str | None = None  # the --vae in place of the model's own, if any
    extra_negative_prompts: tuple[str, ...] = ()  # guidance and prompt settings, as in Request
    neg_mode: str = "replace"
    neg_scale: float | None = None
    cfg_rescale: float = 0.0
    guidance_interval: str | None = None
    long_prompts: bool = True
    classifier: str | None = None
    classifier_scale: float | None = None  # the scale it ran at, when classifier guidance was on

    def as_dict(self) -> dict[str, Any]:
        """The record as JSON holds it (tuples as lists)."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @property
    def model_name(self) -> str:
        """The model's short name, as AUTOMATIC1111 writes it (a folder's name, a repo id, a built-in name)."""
        return Path(self.model).name if Path(self.model).is_absolute() else self.model


RECORD_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ImageRecord))


@dataclass(frozen=True)
class Output:
    """Where the images go."""

    file: Path | None = None  # -o: the one image goes exactly here
    out_dir: Path = Path("outputs")  # otherwise: named after seed and prompt in this folder
    overwrite: bool = False  # replace existing files instead of refusing
