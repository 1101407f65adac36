"""The `sdcli` command line: arguments to settings, results to stdout, progress and errors to stderr.

Every error reaches the user as one line on stderr (`error: <problem>; <fix>`) with exit code 2 for a command
that must change and 1 for a run that failed; no traceback (set SDCLI_DEBUG=1 to get one). New commands are
added with `@app.command()` like those below.
"""

from __future__ import annotations

import enum
import json
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from sdcli import __version__
from sdcli.output.console import error_line, setup_logging, step_progress
from sdcli.errors import SdcliError, UsageError, reason
from sdcli.loading.geometry import native_size
from sdcli.output.metadata import INFOTEXT_KEY, read_chunks, settings_from_png
from sdcli.loading.references import builtin_models
from sdcli.sampling.samplers import NAMES, SAMPLERS
from sdcli.recipe import (
    DEFAULT_CLASSIFIER_SCALE,
    DEFAULT_MODEL,
    DEVICES,
    DTYPES,
    NEG_MODES,
    Output,
    Request,
    random_seed,
)

MODEL_ENV = "SDCLI_MODEL"
DEBUG_ENV = "SDCLI_DEBUG"

# --sampler, --device and --dtype choices, from the same tables the code uses.
SamplerName = enum.Enum("SamplerName", {name: name for name in NAMES}, type=str)
DeviceName = enum.Enum("DeviceName", {name: name for name in DEVICES}, type=str)
DtypeName = enum.Enum("DtypeName", {name: name for name in DTYPES}, type=str)
NegMode = enum.Enum("NegMode", {name: name for name in NEG_MODES}, type=str)


class OneLineErrors(TyperGroup):
    """Runs a command and turns every error into one line on stderr and an exit code."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except typer.TyperException as error:  # the parser's: a missing argument, a bad value, an unknown command
            message = error.format_message().rstrip(".")
            context = getattr(error, "ctx", None)
            if error.exit_code == 2 and context is not None:
                message += f"; see `{context.command_path} --help`"
            error_line(message)
            code = error.exit_code
        except typer.Abort:
            error_line("interrupted")
            code = 130
        except SdcliError as error:
            error_line(str(error))
            code = error.exit_code
        except Exception as error:  # noqa: BLE001 - a bug or an unforeseen failure: still one line, unless debugging
            if os.environ.get(DEBUG_ENV):
                raise
            error_line(f"unexpected {type(error).__name__}: {reason(error)} (set {DEBUG_ENV}=1 to see where)")
            code = 1
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=OneLineErrors,
    help="Text to image from the command line, with a hand-written Stable Diffusion loop.",
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"sdcli {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    context: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    if context.invoked_subcommand is None:
        raise UsageError("no command given; run `sdcli --help` to list the commands")


def _emit(result: str) -> None:
    """One result line on stdout, in one write: processes sharing a pipe (accelerate launch, which runs them
    unbuffered) then never split or merge each other's lines."""
    sys.stdout.write(result + "\n")
    sys.stdout.flush()


def _read_prompt(prompt: str | None) -> str | None:
    return sys.stdin.read().rstrip("\r\n") if prompt == "-" else prompt


def build_request(given: dict[str, Any], from_image: Path | None) -> Request:
    """Settings from the options given, over those of `--from IMAGE`, over $SDCLI_MODEL and the defaults."""
    settings = settings_from_png(from_image) if from_image is not None else {}
    settings.update({key: value for key, value in given.items() if value is not None})
    if "prompt" not in settings:
        raise UsageError("no prompt; give a PROMPT (or - to read it from stdin), or --from IMAGE to replay one")
    settings.setdefault("model", os.environ.get(MODEL_ENV) or DEFAULT_MODEL)
    settings.setdefault("seed", random_seed())
    return Request(**settings)


DEFAULTS = {f.name: f.default for f in fields(Request)}  # --help shows the defaults the settings define
ClassifierOption = Annotated[
    str | None,
    typer.Option(
        metavar="HEAD=LABEL,...",
        help="Classifier guidance (Dhariwal & Nichol 2021) towards these labels of the model's noise-aware "
        "classifier, e.g. color=red,shape=circle (the built-in shapes model ships one). Works with any prompt, "
        "the empty one included, and with --cfg.",
        show_default="off",
    ),
]
ClassifierScaleOption = Annotated[
    float | None,
    typer.Option(
        metavar="S",
        help="Classifier guidance scale s: eps - s sqrt(1 - alphabar_t) grad log p(y | x_t).",
        show_default=f"{DEFAULT_CLASSIFIER_SCALE:g} with --classifier",
    ),
]


@app.command()
def generate(
    prompt: Annotated[str | None, typer.Argument(help="The prompt; - reads it from stdin.", show_default=False)] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Diffusers folder, Hugging Face repo id, or built-in model name.",
            show_default=f"${MODEL_ENV}, else {DEFAULT_MODEL}",
        ),
    ] = None,
    neg: Annotated[
        list[str] | None,
        typer.Option(
            "--neg",
            help="Negative prompt. replace mode: the unconditional branch; separate mode: a term of its own, "
            "and --neg may be given several times.",
        ),
    ] = None,
    neg_mode: Annotated[
        NegMode | None,
        typer.Option(
            help="replace: the negative prompt is the unconditional branch; separate: eps_empty + w (eps_pos - "
            "eps_empty) - w_neg (eps_neg - eps_empty) for each --neg.",
            show_default=DEFAULTS["neg_mode"],
        ),
    ] = None,
    neg_scale: Annotated[
        float | None, typer.Option(help="w_neg of each negative (separate mode).", show_default="--cfg")
    ] = None,
    cfg_rescale: Annotated[
        float | None,
        typer.Option(
            metavar="PHI",
            help="CFG rescale phi, 0 to 1 (Lin et al. 2023); 0.7 is typical for v-prediction models.",
            show_default="0: off",
        ),
    ] = None,
    guidance_interval: Annotated[
        str | None,
        typer.Option(
            metavar="LO,HI",
            help="Guide only while the noise level is in [LO, HI], else run the conditional pass alone "
            "(Kynkäänniemi et al. 2024). Plain numbers are sigmas (SD runs from about 14.6 to 0.03), e.g. "
            "0.28,5.42; percentages are of the schedule, 0% the noisy start, e.g. 20%,80%.",
            show_default="every step",
        ),
    ] = None,
    long_prompts: Annotated[
        bool | None,
        typer.Option(
            "--long-prompts/--no-long-prompts",
            help="Encode prompts over 75 tokens in 75-token chunks; --no-long-prompts truncates them (a warning).",
            show_default="long",
        ),
    ] = None,
    classifier: ClassifierOption = None,
    classifier_scale: ClassifierScaleOption = None,
    cfg: Annotated[float | None, typer.Option(help="Guidance scale w.", show_default=str(DEFAULTS["cfg"]))] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps.", show_default=str(DEFAULTS["steps"]))] = None,
    sampler: Annotated[
        SamplerName | None,
        typer.Option(metavar="NAME", help="Sampler (see `sdcli samplers`).", show_default=DEFAULTS["sampler"]),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the first image; image i uses seed+i.", show_default="random")
    ] = None,
    width: Annotated[int | None, typer.Option(help="Width in pixels.", show_default="the model's")] = None,
    height: Annotated[int | None, typer.Option(help="Height in pixels.", show_default="the model's")] = None,
    num_images: Annotated[
        int | None, typer.Option("--num-images", "-n", help="Number of images.", show_default="1")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per U-Net call.", show_default="1")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File for a single image (.png).")] = None,
    out_dir: Annotated[Path, typer.Option(help="Folder for the images, named <seed>-<prompt>.png.")] = Output.out_dir,
    device: Annotated[
        DeviceName | None, typer.Option(help="Device; auto: CUDA if present, else CPU.", show_default="auto")
    ] = None,
    dtype: Annotated[
        DtypeName | None,
        typer.Option(
            help="Weights' dtype; auto: fp16 on a GPU, bf16 on a CPU with bf16 matrix units (AMX), else fp32.",
            show_default="auto",
        ),
    ] = None,
    vae: Annotated[
        Path | None,
        typer.Option(help="Another VAE: an original-layout .safetensors file or a diffusers folder.", show_default=False),
    ] = None,
    allow_pickle: Annotated[
        bool, typer.Option("--allow-pickle", help="Load .ckpt/.pt/.bin files (torch.load, weights_only=True).")
    ] = False,
    vae_tiling: Annotated[bool, typer.Option("--vae-tiling", help="Decode in tiles (large images, small GPUs).")] = False,
    offload: Annotated[
        bool, typer.Option("--offload", help="Keep idle components in CPU memory (accelerate; small GPUs).")
    ] = False,
    compile_unet: Annotated[
        bool, typer.Option("--compile", help="torch.compile the U-Net (slow first image, faster after).")
    ] = False,
    from_image: Annotated[
        Path | None, typer.Option("--from", help="Replay the settings stored in this PNG; other options override.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per image instead of its path.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar or messages on a terminal; warnings still show.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing files.")] = False,
) -> None:
    """Generate images from a prompt; print each written path (or JSON object) on stdout."""
    interactive = sys.stderr.isatty() and not quiet  # progress and messages for a person watching, not for pipes
    setup_logging(verbose=interactive)
    given = {
        "prompt": _read_prompt(prompt),
        "model": model,
        "negative_prompt": neg[0] if neg else None,
        "extra_negative_prompts": tuple(neg[1:]) if neg else None,
        "neg_mode": neg_mode.value if neg_mode else None,
        "neg_scale": neg_scale,
        "cfg_rescale": cfg_rescale,
        "guidance_interval": guidance_interval,
        "long_prompts": long_prompts,
        "classifier": classifier,
        "classifier_scale": classifier_scale,
        "cfg": cfg,
        "steps": steps,
        "sampler": sampler.value if sampler else None,
        "seed": seed,
        "width": width,
        "height": height,
        "num_images": num_images,
        "batch_size": batch_size,
        "device": device.value if device else None,
        "dtype": dtype.value if dtype else None,
        "vae": str(vae.expanduser().resolve()) if vae else None,
        "allow_pickle": allow_pickle or None,
        "vae_tiling": vae_tiling or None,
        "offload": offload or None,
        "compile": compile_unet or None,
    }
    request = build_request(given, from_image)
    destination = Output(file=output, out_dir=out_dir, overwrite=overwrite)
    # torch and diffusers take seconds to import: only this command needs them.
    from sdcli.engine import generate as run

    with step_progress(interactive) as on_step:
        for path, made in run(request, destination, on_step):
            if as_json:
                line = json.dumps(made.result(path))
            else:
                line = str(path)
            _emit(line)


@app.command()
def samplers(as_json: Annotated[bool, typer.Option("--json", help="One JSON object per sampler.")] = False) -> None:
    """List the samplers: name, AUTOMATIC1111 name, diffusers scheduler and its settings."""
    for s in SAMPLERS:
        if as_json:
            row = {"name": s.name, "a1111_name": s.a1111_name, "scheduler": s.scheduler, "settings": dict(s.settings)}
            print(json.dumps(row))
        else:
            settings = ", ".join(f"{k}={v!r}" for k, v in s.settings.items())
            print(f"{s.name:<20} {s.a1111_name:<21} {s.scheduler}{f' ({settings})' if settings else ''}")


@app.command()
def inspect(
    image: Annotated[Path, typer.Argument(help="A PNG written by sdcli (or by AUTOMATIC1111).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the settings as one JSON object.")] = False,
) -> None:
    """Print the settings stored in a PNG: AUTOMATIC1111's infotext, or with --json the complete settings."""
    if as_json:
        print(json.dumps(settings_from_png(image), ensure_ascii=False))
        return
    chunks = read_chunks(image)
    if INFOTEXT_KEY in chunks:
        print(chunks[INFOTEXT_KEY])
    else:  # only our JSON chunk (or neither, which settings_from_png reports)
        for key, value in settings_from_png(image).items():
            print(f"{key}: {value}")


def _model_summary(folder: Path) -> dict[str, Any]:
    unet_config = json.loads((folder / "unet" / "config.json").read_text())
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    width, height = native_size(unet_config, vae_config)
    return {"name": folder.name, "width": width, "height": height, "path": str(folder)}


@app.command()
def models(as_json: Annotated[bool, typer.Option("--json", help="One JSON object per model.")] = False) -> None:
    """List the built-in models (usable by name with --model)."""
    found = builtin_models()
    if not found:
        sys.stderr.write("no built-in models in this copy of sdcli (build one with `make shapes-model`)\n")
    for folder in found:
        summary = _model_summary(folder)
        if as_json:
            print(json.dumps(summary))
        else:
            print(f"{summary['name']:<16} {summary['width']}x{summary['height']}  {summary['path']}")


@app.command("train-shapes")
def train_shapes(
    out: Annotated[
        Path | None,
        typer.Option(help="Where to save the model (diffusers format); default: the built-in `shapes` folder."),
    ] = None,
    work_dir: Annotated[
        Path, typer.Option(help="Checkpoints and snapshots; a rerun with the same folder continues from them.")
    ] = Path("runs/shapes"),
    vae_steps: Annotated[int | None, typer.Option(help="VAE training steps (default: the recipe's).")] = None,
    unet_steps: Annotated[int | None, typer.Option(help="U-Net and text encoder steps (default: the recipe's).")] = None,
    vae_batch: Annotated[int | None, typer.Option(help="VAE batch size (default: the recipe's).")] = None,
    unet_batch: Annotated[int | None, typer.Option(help="U-Net batch size (default: the recipe's).")] = None,
    scenes: Annotated[int | None, typer.Option(help="Scenes encoded once for the U-Net (default: the recipe's).")] = None,
) -> None:
    """Train the built-in shapes model from nothing (data generated on the fly; progress and losses on stderr). Runs on
    CUDA when there is one, else on the CPU."""
    from dataclasses import replace

    from sdcli.loading.references import builtin_root
    from sdcli.shapes.train import TrainConfig, train

    overrides = {
        "vae_steps": vae_steps,
        "unet_steps": unet_steps,
        "vae_batch": vae_batch,
        "unet_batch": unet_batch,
        "num_latent_scenes": scenes,
    }
    for name, value in overrides.items():
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, not {value}")
    config = replace(TrainConfig(), **{k: v for k, v in overrides.items() if v is not None})
    target = out or builtin_root() / "shapes"
    train(target, work_dir, config)
    print(target)


# Options the workflow commands share with `generate` (same names, same meaning).
ModelOption = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Diffusers folder, Hugging Face repo id, or built-in model name.",
                 show_default=f"${MODEL_ENV}, else {DEFAULT_MODEL}"),
]  # fmt: skip
NegOption = Annotated[str | None, typer.Option("--neg", help="Negative prompt (the unconditional branch).")]
StepsOption = Annotated[int | None, typer.Option(help="Denoising steps.", show_default=str(DEFAULTS["steps"]))]
WidthOption = Annotated[int | None, typer.Option(help="Width in pixels.", show_default="the model's")]
HeightOption = Annotated[int | None, typer.Option(help="Height in pixels.", show_default="the model's")]
BatchOption = Annotated[int | None, typer.Option(help="Images per U-Net call.", show_default="1")]
DeviceOption = Annotated[
    DeviceName | None, typer.Option(help="Device; auto: CUDA if present, else CPU.", show_default="auto")
]
DtypeOption = Annotated[
    DtypeName | None, typer.Option(help="Weights' dtype; auto: fp16 on a GPU, fp32 on the CPU.", show_default="auto")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object per image instead of its path.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or messages on stderr.")]


@app.command("sweep-guidance")
def sweep_guidance(
    prompt: Annotated[str, typer.Argument(help="The prompt; - reads it from stdin.", show_default=False)],
    cfg: Annotated[
        str | None,
        typer.Option("--cfg", help="Guidance scales (columns): a list 1,3,7.5 or a range start:stop:step; one "
                     "scale when the columns are --classifier-scale.", show_default="1,3,5,7.5,10"),
    ] = None,
    seeds: Annotated[
        str, typer.Option(help="Seeds (rows): a count N (--seed .. --seed+N-1) or a list 1,5,9.")
    ] = "4",
    seed: Annotated[int | None, typer.Option(help="First seed for a count of --seeds.", show_default="random")] = None,
    sampler: Annotated[
        str | None,
        typer.Option(metavar="NAME[,NAME...]", help="Sampler; several names: a second axis, as rows.",
                     show_default=DEFAULTS["sampler"]),
    ] = None,  # fmt: skip
    neg_scale: Annotated[
        str | None,
        typer.Option(help="Scales of the negative prompt's own term (--neg-mode separate) as rows: list or range."),
    ] = None,
    classifier: ClassifierOption = None,
    classifier_scale: Annotated[
        str | None,
        typer.Option(metavar="S,S,...", help="Classifier guidance scales (with --classifier) as the columns, in "
                     "place of --cfg's: a list or a range.", show_default=False),
    ] = None,
    model: ModelOption = None,
    neg: NegOption = None,
    steps: StepsOption = None,
    width: WidthOption = None,
    height: HeightOption = None,
    batch_size: BatchOption = None,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    clip_model: Annotated[
        Path | None, typer.Option(help="A local CLIP model folder (transformers CLIPModel) for CLIP scores.")
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option(help="Folder for the sweep.", show_default="outputs/sweep-<seed>-<prompt>")
    ] = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing files.")] = False,
) -> None:
    """Sweep the guidance scale: a labelled contact sheet, per-image and per-scale metrics, and their plot."""
    from sdcli.output.files import image_name
    from sdcli.workflows.sweep import Sweep, parse_numbers, parse_seeds, parse_words, run

    interactive = sys.stderr.isatty() and not quiet
    setup_logging(verbose=interactive)
    samplers = parse_words(sampler) if sampler else ()
    scales = parse_numbers(cfg or "1,3,5,7.5,10", "--cfg")
    column, cfg_scale = "cfg", None  # the columns, and w when the columns are not w
    if classifier_scale is not None:
        if classifier is None:
            raise UsageError("--classifier-scale needs --classifier HEAD=LABEL (for example --classifier color=red)")
        if len(scales) > 1 and cfg is not None:
            raise UsageError("the columns are --classifier-scale or --cfg, not both; give --cfg one scale")
        column, cfg_scale = "classifier_scale", scales[0] if cfg is not None else None
        scales = parse_numbers(classifier_scale, "--classifier-scale")
    given = {
        "prompt": _read_prompt(prompt),
        "model": model,
        "classifier": classifier,
        "cfg": cfg_scale,
        "negative_prompt": neg,
        "steps": steps,
        "sampler": samplers[0] if samplers else None,
        "seed": seed,
        "width": width,
        "height": height,
        "batch_size": batch_size,
        "device": device.value if device else None,
        "dtype": dtype.value if dtype else None,
    }
    if neg_scale is not None and "neg_mode" in DEFAULTS:
        given["neg_mode"] = "separate"  # the scale of the negative's own term: only separate negatives have one
    base = build_request(given, None)
    axis, values = None, ()
    if len(samplers) > 1:
        axis, values = "sampler", samplers
    if neg_scale is not None:
        if axis is not None:
            raise UsageError("--sampler with several names and --neg-scale are both a second axis; give one")
        if "neg_scale" not in DEFAULTS:
            raise UsageError("--neg-scale needs a sdcli with separate negative guidance (`generate --neg-scale`)")
        axis, values = "neg_scale", parse_numbers(neg_scale, "--neg-scale")
    plan = Sweep(base, scales, parse_seeds(seeds, base.seed), axis, values, column)
    folder = out_dir or Path("outputs") / f"sweep-{image_name(base.prompt, base.seed).removesuffix('.png')}"
    with step_progress(interactive) as on_step:
        for path, row in run(plan, folder, overwrite, clip_model, on_step, None if quiet else _stderr_block):
            _emit(json.dumps(row or {"path": str(path)}) if as_json else str(path))


def _stderr_block(text: str) -> None:
    sys.stderr.write(text + "\n")


@app.command()
def batch(
    file: Annotated[str, typer.Argument(help="Prompt file: .txt, .jsonl or .csv; - reads stdin.", show_default=False)],
    file_format: Annotated[
        str | None,
        typer.Option("--format", help="txt, jsonl or csv.", show_default="from the file's name; txt for stdin"),
    ] = None,
    model: ModelOption = None,
    neg: NegOption = None,
    cfg: Annotated[float | None, typer.Option(help="Guidance scale w.", show_default=str(DEFAULTS["cfg"]))] = None,
    steps: StepsOption = None,
    sampler: Annotated[
        SamplerName | None,
        typer.Option(metavar="NAME", help="Sampler (see `sdcli samplers`).", show_default=DEFAULTS["sampler"]),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of each line's first image, unless the line gives one.")] = 0,
    width: WidthOption = None,
    height: HeightOption = None,
    num_images: Annotated[
        int | None, typer.Option("--num-images", "-n", help="Images per line.", show_default="1")
    ] = None,
    batch_size: BatchOption = None,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    out_dir: Annotated[Path, typer.Option(help="Folder for the images and manifest.jsonl.")] = Path("outputs/batch"),
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Skip invalid lines (with a warning) instead of stopping.")
    ] = False,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Remake images already in the folder.")] = False,
) -> None:
    """Make the images of a prompt file; a rerun resumes. Print each written path (or JSON object) on stdout."""
    import signal

    from sdcli.workflows.batch import FORMATS, run
    from sdcli.workflows.batch import file_format as guess_format

    interactive = sys.stderr.isatty() and not quiet
    setup_logging(verbose=interactive)
    if file_format is not None and file_format not in FORMATS:
        raise UsageError(f"--format {file_format}: use one of {', '.join(FORMATS)}")
    fmt = guess_format(file, file_format)
    if file == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UsageError(f"{file} does not exist; give a prompt file (.txt, .jsonl, .csv) or - for stdin") from None
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f"cannot read {file} ({reason(error)}); give a UTF-8 text file") from None
    given = {
        "model": model or os.environ.get(MODEL_ENV) or DEFAULT_MODEL,
        "negative_prompt": neg,
        "cfg": cfg,
        "steps": steps,
        "sampler": sampler.value if sampler else None,
        "seed": seed,
        "width": width,
        "height": height,
        "num_images": num_images,
        "batch_size": batch_size,
        "device": device.value if device else None,
        "dtype": dtype.value if dtype else None,
    }
    defaults = {key: value for key, value in given.items() if value is not None}

    def on_image(path: Path, row: dict[str, Any]) -> None:
        _emit(json.dumps(row) if as_json else str(path))

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # unwinds like Ctrl-C: the image being written is removed, the manifest stays whole

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        run(text, "stdin" if file == "-" else file, fmt, defaults, out_dir, skip_invalid, overwrite, on_image,
            None if quiet else _stderr_block, interactive)  # fmt: skip
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.command()
def info(
    model: Annotated[str, typer.Argument(help="A .safetensors file, diffusers folder, repo id or built-in name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Read .ckpt/.pt/.bin files.")] = False,
) -> None:
    """Print what a model is: family, prediction type, native size, dtype, parameters per component."""
    from sdcli.loading.info import format_info, model_info
    from sdcli.loading.references import resolve_model

    found = model_info(resolve_model(model, allow_pickle))
    print(json.dumps(found.as_dict()) if as_json else format_info(found))


def main() -> None:
    """The console script."""
    app()
