"""Train a LoRA (Hu et al. 2021) for the built-in shapes model that teaches it a new colour word, and write it in
the kohya-ss / AUTOMATIC1111 format that people share (`lora_unet_...`, `lora_te_...`, `.alpha`).

The base model's weights stay frozen; peft adds rank-r updates to the U-Net's attention and projection layers and
to the text encoder's, which learn on the same objective as the base model (`train.denoising_loss`). Half of
each batch shows the new colour (drawn as the world draws scenes, with that colour), half the world as it is, so
that the six colours keep their meaning (prior preservation, as DreamBooth trains). The tokenizer has no word for
the new colour: it spells it in single characters, which the text encoder's LoRA learns to read.

A checkpoint (the adapters, the optimizer and both random states) is written every few steps to the work folder and
a rerun continues from it; the same seed and settings give the same file.

    python -m sdcli.shapes.train_lora --colour pink=255,128,192 --out src/sdcli/models/shapes/loras/pink.safetensors
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from peft import LoraConfig, inject_adapter_in_model
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTokenizer

from sdcli.errors import UsageError
from sdcli.shapes.train import (
    check_same_recipe,
    denoising_loss,
    load_checkpoint,
    log,
    sample_posterior,
    save_checkpoint,
    scenes_to_x,
    token_ids,
)
from sdcli.shapes.world import PALETTE, random_caption, random_scene

UNET_MODULES = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")
TEXT_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te_text_model_"}  # kohya's names of the two parts


@dataclass(frozen=True)
class LoraTrainConfig:
    colour: str
    rgb: tuple[int, int, int]
    seed: int = 0
    rank: int = 4
    alpha: float = 4.0
    steps: int = 1200
    batch: int = 32
    lr: float = 1e-3
    new_share: float = 0.5  # the share of each batch that shows the new colour
    min_snr_gamma: float = 5.0
    checkpoint_every: int = 100


@dataclass
class Parts:
    """The base model's parts a LoRA trains over."""

    vae: AutoencoderKL
    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer


def load_parts(model: Path) -> Parts:
    """The model folder's VAE, U-Net, text encoder and tokenizer, frozen, for training on the CPU."""
    parts = Parts(
        AutoencoderKL.from_pretrained(model / "vae"),
        UNet2DConditionModel.from_pretrained(model / "unet"),
        CLIPTextModel.from_pretrained(model / "text_encoder"),
        CLIPTokenizer.from_pretrained(model / "tokenizer"),
    )
    for module in (parts.vae, parts.unet, parts.text_encoder):
        module.requires_grad_(False)
    return parts


def add_adapters(parts: Parts, cfg: LoraTrainConfig) -> list[torch.nn.Parameter]:
    """peft adapters on the U-Net and the text encoder (seeded); their parameters, the only ones that train."""
    torch.manual_seed(cfg.seed)
    for module, targets in ((parts.unet, UNET_MODULES), (parts.text_encoder, TEXT_MODULES)):
        inject_adapter_in_model(LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, target_modules=list(targets)), module)
    return [p for m in (parts.unet, parts.text_encoder) for p in m.parameters() if p.requires_grad]


def adapter_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weights in a module, by parameter name (`....to_q.lora_A.default.weight`)."""
    return {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}


def load_adapter_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """What `adapter_state` saved, back into the module's adapter."""
    unexpected = module.load_state_dict(state, strict=False).unexpected_keys
    if unexpected or state.keys() != adapter_state(module).keys():
        raise UsageError("the LoRA checkpoint does not fit these adapters; delete it or give another --work-dir")


def batch_of_scenes(rng: np.random.Generator, cfg: LoraTrainConfig) -> tuple[torch.Tensor, list[str]]:
    """A batch of scenes, (B, 3, 64, 64) in [-1, 1], and a caption for each: `new_share` of them in the new
    colour."""
    palette = {**PALETTE, cfg.colour: cfg.rgb}
    scenes = [random_scene(rng) for _ in range(cfg.batch)]
    scenes = [s if rng.random() >= cfg.new_share else replace(s, colour=cfg.colour) for s in scenes]
    captions = [random_caption(s, rng) for s in scenes]
    return scenes_to_x(scenes, palette), captions


def kohya_state_dict(parts: Parts, cfg: LoraTrainConfig) -> dict[str, torch.Tensor]:
    """The adapters in kohya's layout: `<prefix><module path with _>.lora_down.weight` (peft's A), `.lora_up.weight`
    (B) and `.alpha`."""
    tensors: dict[str, torch.Tensor] = {}
    for name, module in (("unet", parts.unet), ("text_encoder", parts.text_encoder)):
        for key, value in adapter_state(module).items():
            path, kind = key.rsplit(".lora_", 1)  # `down_blocks.1....to_q`, `A.default.weight`
            stem = PREFIXES[name] + path.replace(".", "_")
            tensors[f"{stem}.{'lora_down' if kind.startswith('A') else 'lora_up'}.weight"] = value.contiguous()
            tensors[f"{stem}.alpha"] = torch.tensor(float(cfg.alpha))
    return tensors


def train_lora(model: Path, out: Path, work: Path, cfg: LoraTrainConfig) -> None:
    """Train the LoRA over `model` (a diffusers folder of the shapes model) and write it to `out`."""
    check_same_recipe(work, cfg)
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    parts = load_parts(model)
    params = add_adapters(parts, cfg)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    rng, ckpt, start = np.random.default_rng(cfg.seed + 1), work / "lora.pt", 0
    torch.manual_seed(cfg.seed + 2)
    if ckpt.exists():
        state = load_checkpoint(ckpt)
        load_adapter_state(parts.unet, state["unet"]), load_adapter_state(parts.text_encoder, state["te"])
        opt.load_state_dict(state["opt"])
        rng.bit_generator.state, start = state["rng"], state["step"]
        torch.set_rng_state(state["torch_rng"])
        log(f"lora: resuming at step {start}")
    scale = parts.vae.config.scaling_factor
    for step in range(start, cfg.steps):
        x, captions = batch_of_scenes(rng, cfg)  # (B, 3, 64, 64)
        with torch.no_grad():
            posterior = parts.vae.encode(x).latent_dist
            x0 = sample_posterior(posterior.mean, posterior.std) * scale  # (B, 4, 16, 16)
        ids = token_ids(parts.tokenizer, captions, x0.device)
        loss = denoising_loss(parts.unet, parts.text_encoder, ids, x0, cfg.min_snr_gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 25 == 0:
            log(f"lora step {step + 1}/{cfg.steps} loss {loss.item():.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            save_checkpoint(
                ckpt,
                unet=adapter_state(parts.unet),
                te=adapter_state(parts.text_encoder),
                opt=opt.state_dict(),
                rng=rng.bit_generator.state,
                torch_rng=torch.get_rng_state(),
                step=step + 1,
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"ss_network_module": "networks.lora", "ss_network_dim": str(cfg.rank),
                "ss_network_alpha": f"{cfg.alpha:g}", "sdcli_lora_training": json.dumps(asdict(cfg))}  # fmt: skip
    tmp = out.with_name(out.name + ".part")
    save_file(kohya_state_dict(parts, cfg), tmp, metadata=metadata)
    tmp.replace(out)
    log(f"saved the LoRA to {out}")


def _colour(text: str) -> tuple[str, tuple[int, int, int]]:
    """`NAME=R,G,B` as typed."""
    name, _, rgb = text.partition("=")
    try:
        values = tuple(int(v) for v in rgb.split(","))
    except ValueError:
        values = ()
    if not name.isalpha() or len(values) != 3 or not all(0 <= v <= 255 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=R,G,B (for example pink=255,128,192)")
    return name.lower(), values  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> None:
    from sdcli.loading.references import ModelFolder, resolve_model

    parser = argparse.ArgumentParser(prog="python -m sdcli.shapes.train_lora", description=__doc__.split("\n\n")[0])
    parser.add_argument("--colour", type=_colour, required=True, metavar="NAME=R,G,B")
    parser.add_argument("--model", default="shapes", help="the shapes model to train over (default: the built-in)")
    parser.add_argument("--out", type=Path, required=True, help="the .safetensors file to write")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/lora"), help="checkpoints, resumed from")
    defaults = LoraTrainConfig("", (0, 0, 0))
    for name in ("steps", "batch", "rank", "seed"):
        parser.add_argument(f"--{name}", type=int, default=getattr(defaults, name))
    args = parser.parse_args(argv)
    (colour, rgb), found = args.colour, resolve_model(args.model)
    if not isinstance(found, ModelFolder):
        parser.error(f"--model {args.model} is a single file; give the shapes model's diffusers folder")
    cfg = LoraTrainConfig(colour, rgb, seed=args.seed, rank=args.rank, alpha=float(args.rank), steps=args.steps,
                          batch=args.batch)  # fmt: skip
    train_lora(found.folder, args.out, args.work_dir, cfg)


if __name__ == "__main__":
    main()
