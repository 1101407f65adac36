"""The `sdcli` command line: arguments to settings, results to stdout, progress and errors to stderr.

Every error reaches the user as one line on stderr (`error: <problem>; <fix>`) with exit code 2 for a command
that must change and 1 for a run that failed; no traceback (set SDCLI_DEBUG=1 to get one). New commands are
added with `@app.command()` like those below.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from sdcli import __version__
from sdcli.cli.options import settings_options
from sdcli.errors import SdcliError, UsageError, reason
from sdcli.output.console import error_line, setup_logging, step_progress
from sdcli.output.files import Output, plan_paths
from sdcli.recipe import DEFAULT_MODEL, DEFAULT_STRENGTH, SETTINGS, Recipe, Request, Run, random_seed
from sdcli.sampling.samplers import SAMPLERS

MODEL_ENV = "SDCLI_MODEL"
DEBUG_ENV = "SDCLI_DEBUG"


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # unwinds like Ctrl-C: the image being written is removed, finished work stays


class OneLineErrors(TyperGroup):
    """Runs a command and turns every error into one line on stderr and an exit code."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
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
        except Exception as error:
            if os.environ.get(DEBUG_ENV):
                raise
            error_line(f"unexpected {type(error).__name__}: {reason(error)} (set {DEBUG_ENV}=1 to see where)")
            code = 1
        finally:
            signal.signal(signal.SIGTERM, previous)
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=OneLineErrors,
    rich_markup_mode=None,  # click's plain help: rich's formatting would triple `sdcli --help`'s start-up time
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


def _read_stdin(what: str) -> str:
    """stdin as text; a usage error for bytes that are not UTF-8."""
    data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"the {what} on stdin is not UTF-8 text; pipe UTF-8 text") from None


def _read_prompt(prompt: str | None) -> str | None:
    """The prompt as given, or stdin's for `-`; a usage error for text that is not UTF-8, or nothing on stdin."""
    if prompt != "-":
        return prompt
    text = _read_stdin("prompt")
    if not text:
        raise UsageError("PROMPT is - but stdin is empty; pipe a prompt in, or give it as PROMPT ('' for none)")
    return text.rstrip("\r\n")


def build_request(given: dict[str, Any], from_image: Path | None = None) -> Request:
    """Settings from the options given (None: not given), over those of `--from IMAGE`, over $SDCLI_MODEL and the
    defaults."""
    given = {name: value for name, value in given.items() if value is not None}
    if from_image is not None:
        from sdcli.output.metadata import settings_from_png

        settings = settings_from_png(from_image) | given
        for name, (_, spec) in SETTINGS.items():  # a file given anew: its recorded hash is not its own
            if spec.hash_of in given:
                settings.pop(name, None)
    else:
        settings = dict(given)
    if settings.get("prompt") is None:
        raise UsageError("no prompt; give a PROMPT (or - to read it from stdin), or --from IMAGE to replay one")
    settings.setdefault("model", os.environ.get(MODEL_ENV) or DEFAULT_MODEL)
    settings.setdefault("seed", random_seed())
    return Request.of(settings)


def _interactive(quiet: bool) -> bool:
    """Progress and messages for a person watching stderr, not for pipes; sets up logging to match."""
    interactive = sys.stderr.isatty() and not quiet
    setup_logging(verbose=interactive)
    return interactive


JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object per image instead of its path.")]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bar or messages on a terminal; warnings still show.")
]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace existing files.")]


@app.command()
@settings_options(Recipe, Request, Run)
def generate(
    prompt: Annotated[str | None, typer.Argument(help="The prompt; - reads it from stdin.", show_default=False)] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File for a single image (.png).")] = None,
    out_dir: Annotated[Path, typer.Option(help="Folder for the images, named <seed>-<prompt>.png.")] = Output.out_dir,
    from_image: Annotated[
        Path | None, typer.Option("--from", help="Replay the settings stored in this PNG; other options override.")
    ] = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    overwrite: OverwriteOption = False,
    given: dict[str, Any] | None = None,
) -> None:
    """Generate images from a prompt; print each written path (or JSON object) on stdout."""
    interactive = _interactive(quiet)
    # Everything that needs no model is checked before torch and diffusers load (seconds of imports).
    request = build_request({"prompt": _read_prompt(prompt), **(given or {})}, from_image)
    paths = plan_paths(request, Output(file=output, out_dir=out_dir, overwrite=overwrite))
    from sdcli.workflows.generate import generate as run

    with step_progress(interactive) as on_step:
        for path, made in run(request, paths, overwrite, on_step):
            _emit(json.dumps(made.result(path)) if as_json else str(path))


@app.command()
def samplers(as_json: Annotated[bool, typer.Option("--json", help="One JSON object per sampler.")] = False) -> None:
    """List the samplers: name, AUTOMATIC1111 name, diffusers scheduler and its settings; CFG++ samplers step with
    sdcli's own update on that scheduler's schedule, and take --cfg as lambda in [0, 1]."""
    for s in SAMPLERS:
        if as_json:
            row = {"name": s.name, "a1111_name": s.a1111_name, "scheduler": s.scheduler, "settings": dict(s.settings)}
            print(json.dumps({**row, "cfg_pp": s.cfg_pp}))
        else:
            settings = ", ".join(f"{k}={v!r}" for k, v in s.settings.items())
            cfg_pp = "; CFG++ step: --cfg is lambda in [0, 1]" if s.cfg_pp else ""
            print(f"{s.name:<20} {s.a1111_name:<21} {s.scheduler}{f' ({settings})' if settings else ''}{cfg_pp}")


@app.command()
def inspect(
    image: Annotated[Path, typer.Argument(help="A PNG written by sdcli (or by AUTOMATIC1111).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the settings as one JSON object.")] = False,
) -> None:
    """Print the settings stored in a PNG: AUTOMATIC1111's infotext, or with --json the complete settings."""
    from sdcli.output.metadata import INFOTEXT_KEY, read_chunks, settings_from_png

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
    from sdcli.loading.geometry import native_size

    unet_config = json.loads((folder / "unet" / "config.json").read_text())
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    width, height = native_size(unet_config, vae_config)
    return {"name": folder.name, "width": width, "height": height, "path": str(folder)}


@app.command()
def models(as_json: Annotated[bool, typer.Option("--json", help="One JSON object per model.")] = False) -> None:
    """List the built-in models (usable by name with --model)."""
    from sdcli.loading.references import builtin_models

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
    unet_steps: Annotated[
        int | None, typer.Option(help="U-Net and text encoder steps (default: the recipe's).")
    ] = None,
    vae_batch: Annotated[int | None, typer.Option(help="VAE batch size (default: the recipe's).")] = None,
    unet_batch: Annotated[int | None, typer.Option(help="U-Net batch size (default: the recipe's).")] = None,
    scenes: Annotated[
        int | None, typer.Option(help="Scenes encoded once for the U-Net (default: the recipe's).")
    ] = None,
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


@app.command("sweep-guidance")
@settings_options(Recipe, Run, exclude=("cfg", "seed", "sampler", "neg_scale", "classifier_scale", "strength"))
def sweep_guidance(
    prompt: Annotated[str, typer.Argument(help="The prompt; - reads it from stdin.", show_default=False)],
    cfg: Annotated[
        str | None,
        typer.Option(
            "--cfg",
            help="Guidance scales (columns): a list 1,3,7.5 or a range start:stop:step; one "
            "scale when the columns are --classifier-scale.",
            show_default="1,3,5,7.5,10",
        ),
    ] = None,
    seeds: Annotated[str, typer.Option(help="Seeds (rows): a count N (--seed .. --seed+N-1) or a list 1,5,9.")] = "4",
    seed: Annotated[int | None, typer.Option(help="First seed for a count of --seeds.", show_default="random")] = None,
    sampler: Annotated[
        str | None,
        typer.Option(
            metavar="NAME[,NAME...]",
            help="Sampler; several names: a second axis, as rows.",
            show_default=Recipe.sampler,
        ),
    ] = None,
    neg_scale: Annotated[
        str | None,
        typer.Option(help="Scales of the negative prompt's own term (--neg-mode separate) as rows: list or range."),
    ] = None,
    strength: Annotated[
        str | None,
        typer.Option(
            metavar="S[,S...]",
            help="img2img's denoising strength (with --init-image); several, a list or a range: a second axis, "
            "as rows.",
            show_default=f"{DEFAULT_STRENGTH:g} with --init-image",
        ),
    ] = None,
    classifier_scale: Annotated[
        str | None,
        typer.Option(
            metavar="S,S,...",
            help="Classifier guidance scales (with --classifier) as the columns, in "
            "place of --cfg's: a list or a range.",
            show_default=False,
        ),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(
            metavar="NAME[,NAME...]",
            help="Guidance methods as rows, a second axis, each over the columns' scales: cfg, apg (--apg), cfgpp "
            "(the sampler's CFG++ step, e.g. --sampler euler; its scales are --cfgpp-scales), pag (CFG plus "
            "PAG at --pag-scale, default 3).",
            show_default=False,
        ),
    ] = None,
    lora_weights: Annotated[
        str | None,
        typer.Option(
            metavar="W,W,...",
            help="Weights of the first --lora as rows, a second axis (the file loads once): a list or a range.",
            show_default=False,
        ),
    ] = None,
    cfgpp_scales: Annotated[
        str | None,
        typer.Option(
            metavar="L,L,...",
            help="With --method cfgpp: its row's lambdas in [0, 1], one per --cfg scale (column); a list or a range.",
            show_default=False,
        ),
    ] = None,
    clip_model: Annotated[
        Path | None, typer.Option(help="A local CLIP model folder (transformers CLIPModel) for CLIP scores.")
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option(help="Folder for the sweep.", show_default="outputs/sweep-<seed>-<prompt>")
    ] = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    overwrite: OverwriteOption = False,
    given: dict[str, Any] | None = None,
) -> None:
    """Sweep the guidance scale: a labelled contact sheet, per-image and per-scale metrics, and their plot."""
    from sdcli.output.files import image_name
    from sdcli.workflows.sweep import LORA_WEIGHT, METHOD, Sweep, parse_numbers, parse_seeds, parse_words, run

    interactive = _interactive(quiet)
    settings = {"prompt": _read_prompt(prompt), **(given or {})}
    samplers = parse_words(sampler) if sampler else ()
    scales = parse_numbers(cfg or "1,3,5,7.5,10", "--cfg")
    column = "cfg"  # the columns: the guidance scale w, or classifier guidance's s
    if classifier_scale is not None:
        if "classifier" not in settings:
            raise UsageError("--classifier-scale needs --classifier HEAD=LABEL (for example --classifier color=red)")
        if len(scales) > 1 and cfg is not None:
            raise UsageError("the columns are --classifier-scale or --cfg, not both; give --cfg one scale")
        column = "classifier_scale"
        if cfg is not None:
            settings["cfg"] = scales[0]
        scales = parse_numbers(classifier_scale, "--classifier-scale")
    if samplers:
        settings["sampler"] = samplers[0]
    if seed is not None:
        settings["seed"] = seed
    if neg_scale is not None:
        settings.setdefault("neg_mode", "separate")  # the negative's own term: only separate negatives have one
    strengths = parse_numbers(strength, "--strength") if strength is not None else ()
    if len(strengths) == 1:
        settings["strength"] = strengths[0]
    base = build_request(settings)
    axes = []  # (option, setting, values) of each second axis asked for: the rows
    if len(samplers) > 1:
        axes.append(("--sampler", "sampler", samplers))
    if neg_scale is not None:
        axes.append(("--neg-scale", "neg_scale", parse_numbers(neg_scale, "--neg-scale")))
    if len(strengths) > 1:
        axes.append(("--strength", "strength", strengths))
    methods = parse_words(method) if method is not None else ()
    if methods:
        axes.append(("--method", METHOD, methods))
    if lora_weights is not None:
        axes.append(("--lora-weights", LORA_WEIGHT, parse_numbers(lora_weights, "--lora-weights")))
    if len(axes) > 1:
        raise UsageError(f"{' and '.join(a[0] for a in axes)} are each a second axis (rows) here; give one of them")
    _, axis, values = axes[0] if axes else (None, None, ())
    lambdas = parse_numbers(cfgpp_scales, "--cfgpp-scales") if cfgpp_scales is not None else None
    plan = Sweep(base, scales, parse_seeds(seeds, base.recipe.seed), axis, values, column,
                 _method_scales(methods, lambdas, base.recipe))  # fmt: skip
    name = image_name(base.recipe.prompt, base.recipe.seed).removesuffix(".png")
    folder = out_dir or Path("outputs") / f"sweep-{name}"
    judge, world = _judge_for(base.recipe.model), _world_for(base.recipe.model)
    report = None if quiet else _stderr_block
    with step_progress(interactive) as on_step:
        for path, row in run(plan, folder, overwrite, clip_model, judge, on_step, report, world):
            _emit(json.dumps(row or {"path": str(path)}) if as_json else str(path))


def _method_scales(methods: tuple[str, ...], lambdas: tuple[float, ...] | None, recipe: Recipe) -> tuple:
    """The rows' own column scales, as `Sweep.row_scales`: cfgpp's lambdas (--cfgpp-scales), which it needs."""
    if recipe.apg and methods:
        raise UsageError("--method sets APG for its apg rows only; leave out --apg")
    if recipe.pag_scale and methods and "pag" not in methods:
        raise UsageError("--pag-scale is the pag rows' S here; add pag to --method, or leave out --pag-scale")
    if ("cfgpp" in methods) != (lambdas is not None):
        raise UsageError("--method cfgpp and --cfgpp-scales go together: CFG++'s lambdas in [0, 1], one per --cfg "
                         "scale, for example --method cfg,cfgpp --cfg 1,3,7.5 --cfgpp-scales 0.2,0.5,0.8")  # fmt: skip
    return (("cfgpp", lambdas),) if lambdas is not None else ()


def _judge_for(model: str) -> Any:
    """The built-in shapes model's judge for a sweep of it (by name, or a folder called `shapes`, a copy of it):
    the adherence it measures from pixels. Other models have none."""
    if Path(model).name != "shapes":
        return None
    from sdcli.shapes import judge

    return judge


def _world_for(model: str) -> Any:
    """The built-in shapes model's world for a sweep of it (as `_judge_for`, and only where the folder ships the
    classifier, its feature space): what FID, precision, recall and coverage measure against. Others have none."""
    if Path(model).name != "shapes":
        return None
    from sdcli.loading.references import ModelFolder, resolve_model
    from sdcli.shapes.reference import world_for

    found = resolve_model(model)
    return world_for(found.folder) if isinstance(found, ModelFolder) else None


def _stderr_block(text: str) -> None:
    sys.stderr.write(text + "\n")


class ExecutorName(str, Enum):
    """Where `sdcli batch` makes its images."""

    local = "local"
    ray = "ray"


@app.command()
@settings_options(Recipe, Request, Run, exclude=("seed",))
def batch(
    file: Annotated[str, typer.Argument(help="Prompt file: .txt, .jsonl or .csv; - reads stdin.", show_default=False)],
    file_format: Annotated[
        str | None,
        typer.Option("--format", help="txt, jsonl or csv.", show_default="from the file's name; txt for stdin"),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of each line's first image, unless the line gives one.")] = 0,
    out_dir: Annotated[Path, typer.Option(help="Folder for the images and manifest.jsonl.")] = Path("outputs/batch"),
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Skip invalid lines (with a warning) instead of stopping.")
    ] = False,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Remake images already in the folder.")] = False,
    executor: Annotated[
        ExecutorName,
        typer.Option(
            help="local: this process (or each of accelerate launch's); ray: Ray actors (sdcli[ray]).",
            show_default="local",
        ),
    ] = ExecutorName.local,
    address: Annotated[
        str | None,
        typer.Option(
            help="The Ray cluster to join: host:port of its head, or auto (the one this machine runs).",
            show_default="$RAY_ADDRESS, else a private instance on this machine",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Ray workers, each loading the model once.", show_default="as many as fit"),
    ] = None,
    gpus_per_worker: Annotated[
        float | None,
        typer.Option(min=0, help="GPUs of each Ray worker.", show_default="1 if the cluster has GPUs, else 0"),
    ] = None,
    cpus_per_worker: Annotated[
        float | None,
        typer.Option(min=0, help="CPUs of each Ray worker; torch runs on as many threads.", show_default="1"),
    ] = None,
    given: dict[str, Any] | None = None,
) -> None:
    """Make the images of a prompt file; a rerun resumes. Print each written path (or JSON object) on stdout."""
    from sdcli.workflows.batch import FORMATS, local, run
    from sdcli.workflows.batch import file_format as guess_format

    ray_options = {"address": address, "workers": workers, "gpus_per_worker": gpus_per_worker,
                   "cpus_per_worker": cpus_per_worker}  # fmt: skip
    given_ray = {name: value for name, value in ray_options.items() if value is not None}
    if executor is ExecutorName.ray:
        from functools import partial

        from sdcli.workflows.ray_executor import start  # a one-line error without Ray

        make_with = partial(start, **given_ray)
    elif given_ray:
        raise UsageError(f"--{next(iter(given_ray)).replace('_', '-')} is for --executor ray")
    else:
        make_with = local
    interactive = _interactive(quiet)
    if file_format is not None and file_format not in FORMATS:
        raise UsageError(f"--format {file_format}: use one of {', '.join(FORMATS)}")
    fmt = guess_format(file, file_format)
    if file == "-":
        text = _read_stdin("prompt file")
    else:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UsageError(f"{file} does not exist; give a prompt file (.txt, .jsonl, .csv) or - for stdin") from None
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f"cannot read {file} ({reason(error)}); give a UTF-8 text file") from None
    defaults = {"model": os.environ.get(MODEL_ENV) or DEFAULT_MODEL, "seed": seed, **(given or {})}

    def on_image(path: Path, row: dict[str, Any]) -> None:
        _emit(json.dumps(row) if as_json else str(path))

    folder = Path() if file == "-" else Path(file).parent  # a line's relative paths: from the file's folder
    run(text, "stdin" if file == "-" else file, fmt, defaults, out_dir, skip_invalid, overwrite, on_image,
        None if quiet else _stderr_block, interactive, folder, make_with)  # fmt: skip


@app.command()
def info(
    model: Annotated[str, typer.Argument(help="A .safetensors file, diffusers folder, repo id or built-in name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Read .ckpt/.pt/.bin files.")] = False,
) -> None:
    """Print what a model is: family, prediction type, native size, dtype, parameters per component; or what a LoRA,
    embedding or ControlNet is and which family it fits."""
    from sdcli.loading.adapter_info import adapter_info, format_adapter
    from sdcli.loading.info import format_info, model_info
    from sdcli.loading.references import resolve_model

    adapter = adapter_info(model, allow_pickle)
    if adapter is not None:
        print(json.dumps(adapter.as_dict()) if as_json else format_adapter(adapter))
        return
    found = model_info(resolve_model(model, allow_pickle))
    print(json.dumps(found.as_dict()) if as_json else format_info(found))


def main() -> None:
    """The console script."""
    app()
