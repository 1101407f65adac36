"""Train the built-in shapes model from nothing: a KL autoencoder, then a text encoder and U-Net together.

Stage 1 trains the VAE (Rombach et al. 2022) on rendered scenes: reconstruction plus a small KL term; its
`scaling_factor` is measured so that the latents have unit variance. Stage 2 encodes a fixed set of scenes once,
then trains the CLIP text encoder and the U-Net jointly on the DDPM epsilon objective (Ho et al. 2020, L_simple),
weighted over timesteps by Min-SNR-gamma (Hang et al. 2023), with an EMA of the weights. Captions are drawn per
step, 10% empty, so the same network is also the unconditional model of classifier-free guidance.

Both stages write a checkpoint to the work folder every few hundred steps; a rerun continues from it. The result is
saved in diffusers format and loads like any Stable Diffusion model. Training runs on CUDA when there is one: the scenes
and every noise draw come from the CPU's seeded generators, so the data are the same on either device.
"""

from __future__ import annotations

import json
import math
import pickle
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, astuple, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, PNDMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from sdcli.errors import UsageError
from sdcli.shapes.tokenizer import write_word_tokenizer
from sdcli.shapes.world import PALETTE, WORDS, Scene, random_caption, random_scene, render


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    # VAE: 3 blocks, so 64x64 pixels -> 16x16x4 latents
    vae_channels: tuple[int, ...] = (32, 64, 64)
    vae_steps: int = 3000
    vae_batch: int = 16
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-6
    # GroupNorm groups: several channels per group. One channel per group is an instance norm, which erases the
    # absolute colour of flat shapes on flat backgrounds, and with it the palette.
    vae_norm_groups: int = 8
    # The posterior's initial log-variance. None keeps diffusers' initialisation (near 0: std near 1; after 1,000 steps
    # the encoder's latents still carried colours on gray too weakly for the posterior's noise); -6 starts the
    # posterior nearly deterministic (std e^-3), the regime Stable Diffusion's own VAE ends in.
    vae_logvar_init: float | None = -6.0
    # text encoder: a small CLIP over the world's words
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_lr: float = 4e-3
    # U-Net
    unet_channels: tuple[int, ...] = (64, 64, 96)
    unet_layers_per_block: int = 1
    unet_head_dim: int = 32
    unet_norm_groups: int = 16
    unet_steps: int = 4000
    unet_batch: int = 64
    unet_lr: float = 2e-3
    warmup_steps: int = 100
    cooldown_steps: int = 1000  # the learning rate falls linearly to zero over the last steps
    ema_decay: float = 0.995
    min_snr_gamma: float = 5.0
    num_latent_scenes: int = 24064  # 94 batches of 256
    checkpoint_every: int = 250
    snapshot_every: int = 500  # EMA weights kept at these steps, for the learning curve


def scheduler_config() -> dict:
    """Stable Diffusion 1.x's noise schedule and default scheduler."""
    return dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def scenes_to_x(scenes: list[Scene], palette: Mapping[str, tuple[int, int, int]] = PALETTE) -> torch.Tensor:
    """The scenes rendered as a model's input: (n, 3, 64, 64) in [-1, 1]."""
    images = np.stack([render(s, palette) for s in scenes])  # (n, 64, 64, 3) uint8
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def render_batch(rng: np.random.Generator, n: int):
    """n random scenes and their images, (n, 3, 64, 64) in [-1, 1]."""
    scenes = [random_scene(rng) for _ in range(n)]
    return scenes, scenes_to_x(scenes)


def build_vae(cfg: TrainConfig) -> AutoencoderKL:
    n = len(cfg.vae_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=cfg.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        layers_per_block=1,
        norm_num_groups=cfg.vae_norm_groups,
        sample_size=64,
    )
    if cfg.vae_logvar_init is not None:
        with torch.no_grad():
            vae.quant_conv.bias[4:] = cfg.vae_logvar_init  # (mean, logvar) moments: channels 4..7 are the logvar
    return vae


def build_text_encoder(cfg: TrainConfig, tokenizer) -> CLIPTextModel:
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=cfg.text_width,
            intermediate_size=4 * cfg.text_width,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=cfg.text_heads,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=cfg.text_width,
        )
    )


def build_unet(cfg: TrainConfig) -> UNet2DConditionModel:
    n = len(cfg.unet_channels)
    # no attention at the full 16x16 latent resolution, where it would cost most of the time on a CPU
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=cfg.unet_channels,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        layers_per_block=cfg.unet_layers_per_block,
        cross_attention_dim=cfg.text_width,
        attention_head_dim=cfg.unet_head_dim,
        norm_num_groups=cfg.unet_norm_groups,
    )


def save_checkpoint(path: Path, **state) -> None:
    """Write a checkpoint of plain data (tensors, dicts, lists, numbers, text), what `load_checkpoint` reads."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, map_location: torch.device | str | None = None) -> dict:
    """A checkpoint of the work folder, loaded as plain data only (torch.load with weights_only=True), so that a
    file planted in the folder cannot run code; a usage error for one that holds anything else."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError):
        raise UsageError(
            f"{path} is not a checkpoint of plain data that sdcli wrote (it may be another program's, or an older "
            "sdcli's); delete it to redo its stage, or give another --work-dir"
        ) from None


def noise_scheduler() -> DDPMScheduler:
    """The forward process x_t = sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps of the model's own schedule."""
    skip = ("set_alpha_to_one", "skip_prk_steps", "steps_offset")  # settings of the inference schedulers only
    return DDPMScheduler(**{k: v for k, v in scheduler_config().items() if k not in skip})


def token_ids(tokenizer, captions: list[str], device: torch.device) -> torch.Tensor:
    """The captions' token ids, (B, 77), padded as the pipelines pad them."""
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids.to(device)


def denoising_loss(unet, text_encoder, ids: torch.Tensor, x0: torch.Tensor, min_snr_gamma: float) -> torch.Tensor:
    """The DDPM epsilon objective (Ho et al. 2020, L_simple) on clean latents x0 (B, C, h, w) captioned by ids
    (B, 77): noise and timesteps drawn from the CPU generator (in that order), each image's squared error weighted by
    Min-SNR-gamma (Hang et al. 2023)."""
    forward_process = noise_scheduler()
    alphas_cumprod = forward_process.alphas_cumprod.to(x0.device)  # (1000,)
    eps = noise_like(x0)
    t = torch.randint(0, 1000, (len(x0),)).to(x0.device)
    x_t = forward_process.add_noise(x0, eps, t)
    context = text_encoder(ids)[0]  # (B, 77, D)
    eps_pred = unet(x_t, t, encoder_hidden_states=context).sample
    snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
    weight = snr.clamp(max=min_snr_gamma) / snr  # Min-SNR-gamma for epsilon prediction
    return (weight * (eps_pred - eps).pow(2).mean(dim=(1, 2, 3))).mean()


def training_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def noise_like(x: torch.Tensor) -> torch.Tensor:
    """Standard normal noise of x's shape, drawn from the CPU generator whatever x's device."""
    return torch.randn(x.shape).to(x.device)


def sample_posterior(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """A draw from the VAE's diagonal Gaussian posterior, mean + std * eps, eps from the CPU generator."""
    return mean + std * noise_like(std)


def resume(ckpt: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, rng: np.random.Generator, name: str) -> int:
    """Restore a stage of one model from its checkpoint (model, optimizer, both random states); the step it
    reached, 0 when there is none yet."""
    if not ckpt.exists():
        return 0
    state = load_checkpoint(ckpt, next(model.parameters()).device)
    model.load_state_dict(state["model"]), opt.load_state_dict(state["opt"])
    rng.bit_generator.state = state["rng"]
    torch.set_rng_state(state["torch_rng"])
    log(f"{name}: resuming at step {state['step']}")
    return state["step"]


def checkpoint(
    ckpt: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, rng: np.random.Generator, step: int
) -> None:
    """What `resume` restores."""
    save_checkpoint(
        ckpt,
        model=model.state_dict(),
        opt=opt.state_dict(),
        rng=rng.bit_generator.state,
        step=step,
        torch_rng=torch.get_rng_state(),
    )


def train_vae(cfg: TrainConfig, work: Path, device: torch.device) -> AutoencoderKL:
    """Stage 1: the autoencoder on freshly rendered scenes, reconstruction (MSE) plus a small KL term, the learning
    rate annealed to zero on a cosine; a checkpoint every few hundred steps, resumed from."""
    torch.manual_seed(cfg.seed)
    vae = build_vae(cfg).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    rng = np.random.default_rng(cfg.seed)
    ckpt = work / "vae.pt"
    start = resume(ckpt, vae, opt, rng, "vae")
    t0 = time.time()
    for step in range(start, cfg.vae_steps):
        for g in opt.param_groups:
            g["lr"] = cfg.vae_lr * 0.5 * (1 + math.cos(math.pi * step / cfg.vae_steps))
        _, x = render_batch(rng, cfg.vae_batch)
        x = x.to(device)  # (B, 3, 64, 64)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(sample_posterior(posterior.mean, posterior.std)).sample
        mse = F.mse_loss(recon, x)
        loss = mse + cfg.vae_kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 50 == 0:
            log(f"vae step {step + 1}/{cfg.vae_steps} mse {mse.item():.4f} ({time.time() - t0:.0f}s)")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.vae_steps:
            checkpoint(ckpt, vae, opt, rng, step + 1)
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_scenes(cfg: TrainConfig, vae: AutoencoderKL, work: Path):
    """Render a fixed set of scenes and encode them once: posterior means and stds, (N, 4, 16, 16) each, on the CPU."""
    path = work / "latents.pt"
    if path.exists():
        return load_latents(path)
    rng = np.random.default_rng(cfg.seed + 1)
    device = next(vae.parameters()).device
    scenes, means, stds = [], [], []
    for start in range(0, cfg.num_latent_scenes, 256):
        batch, x = render_batch(rng, min(256, cfg.num_latent_scenes - start))
        x = x.to(device)  # (b, 3, 64, 64)
        dist = vae.encode(x).latent_dist
        scenes += batch
        means.append(dist.mean.cpu())
        stds.append(dist.std.cpu())
    data = {"scenes": scenes, "mean": torch.cat(means), "std": torch.cat(stds)}
    # scaling_factor: the latents' unit-variance scale, as Rombach et al. measure it
    sample = sample_posterior(data["mean"][:4096], data["std"][:4096])
    data["scaling_factor"] = float(1.0 / sample.std())
    mse = F.mse_loss(vae.decode(dist.mean).sample, x).item()  # on the last batch, (b, 3, 64, 64)
    log(
        f"encoded {len(scenes)} scenes; scaling_factor {data['scaling_factor']:.4f}; vae mse {mse:.5f}; posterior "
        f"std {data['std'].mean():.3f} against |mean| {data['mean'].abs().mean():.3f}"
    )
    save_checkpoint(path, **{**data, "scenes": [astuple(scene) for scene in scenes]})  # plain data, no classes
    return data


def load_latents(path: Path) -> dict:
    """The encoded scenes `encode_scenes` saved, their scenes as `Scene`s again."""
    data = load_checkpoint(path)
    data["scenes"] = [Scene(*fields) for fields in data["scenes"]]
    return data


def train_denoiser(cfg: TrainConfig, data: dict, tokenizer, work: Path, device: torch.device):
    scale = data["scaling_factor"]
    torch.manual_seed(cfg.seed + 2)
    unet, text_encoder = build_unet(cfg).to(device), build_text_encoder(cfg, tokenizer).to(device)
    ema_unet, ema_text = build_unet(cfg).to(device), build_text_encoder(cfg, tokenizer).to(device)
    ema_unet.load_state_dict(unet.state_dict()), ema_text.load_state_dict(text_encoder.state_dict())
    ema_unet.requires_grad_(False), ema_text.requires_grad_(False)
    opt = torch.optim.AdamW(
        [
            {"params": unet.parameters(), "lr": cfg.unet_lr},
            {"params": text_encoder.parameters(), "lr": cfg.text_lr},
        ],
        weight_decay=1e-2,
    )
    base_lrs = [cfg.unet_lr, cfg.text_lr]
    rng = np.random.default_rng(cfg.seed + 3)
    ckpt, start, earlier = work / "denoiser.pt", 0, 0.0  # earlier: seconds spent before a resume
    if ckpt.exists():
        state = load_checkpoint(ckpt, device)
        unet.load_state_dict(state["unet"]), text_encoder.load_state_dict(state["text"])
        ema_unet.load_state_dict(state["ema_unet"]), ema_text.load_state_dict(state["ema_text"])
        opt.load_state_dict(state["opt"])
        rng.bit_generator.state, start = state["rng"], state["step"]
        torch.set_rng_state(state["torch_rng"])
        earlier = state.get("seconds", 0.0)
        log(f"denoiser: resuming at step {start}")
    n_params = sum(p.numel() for p in unet.parameters())
    log(
        f"u-net {n_params / 1e6:.2f}M parameters, text encoder "
        f"{sum(p.numel() for p in text_encoder.parameters()) / 1e6:.2f}M"
    )
    scenes, mean, std = data["scenes"], data["mean"].to(device), data["std"].to(device)  # (N, 4, 16, 16) each
    unet_params, ema_unet_params = list(unet.parameters()), list(ema_unet.parameters())
    text_params, ema_text_params = list(text_encoder.parameters()), list(ema_text.parameters())
    t0 = time.time() - earlier  # so that times count the whole stage across resumes
    for step in range(start, cfg.unet_steps):
        warm = min(1.0, (step + 1) / cfg.warmup_steps)
        cool = min(1.0, (cfg.unet_steps - step) / cfg.cooldown_steps)
        for g, base in zip(opt.param_groups, base_lrs):
            g["lr"] = base * warm * cool
        idx = torch.from_numpy(rng.integers(len(scenes), size=cfg.unet_batch))
        captions = [random_caption(scenes[i], rng) for i in idx.tolist()]
        idx = idx.to(device)
        x0 = sample_posterior(mean[idx], std[idx]) * scale  # (B, 4, 16, 16)
        loss = denoising_loss(unet, text_encoder, token_ids(tokenizer, captions, device), x0, cfg.min_snr_gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet_params + text_params, 1.0)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_unet_params + ema_text_params, unet_params + text_params, 1 - decay)
        if (step + 1) % 50 == 0:
            log(f"denoiser step {step + 1}/{cfg.unet_steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.unet_steps:
            save_checkpoint(
                ckpt,
                unet=unet.state_dict(),
                text=text_encoder.state_dict(),
                ema_unet=ema_unet.state_dict(),
                ema_text=ema_text.state_dict(),
                opt=opt.state_dict(),
                rng=rng.bit_generator.state,
                step=step + 1,
                torch_rng=torch.get_rng_state(),
                seconds=time.time() - t0,
            )
        if (step + 1) % cfg.snapshot_every == 0:
            (work / "snapshots").mkdir(exist_ok=True)
            save_checkpoint(
                work / "snapshots" / f"step{step + 1:05d}.pt",
                unet=ema_unet.state_dict(),
                text=ema_text.state_dict(),
                minutes=(time.time() - t0) / 60,
            )
    return ema_unet, ema_text, scale


def save_model(out: Path, vae, unet, text_encoder, tokenizer, scaling_factor: float) -> None:
    """Write the model in diffusers format (the layout `StableDiffusionPipeline.save_pretrained` writes)."""
    from diffusers import StableDiffusionPipeline

    vae.register_to_config(scaling_factor=scaling_factor)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler(**scheduler_config()),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.to("cpu").save_pretrained(out, safe_serialization=True)


def export_snapshot(work: Path, snapshot: Path, out: Path, cfg: TrainConfig = TrainConfig()) -> None:
    """Save the model as it was at a snapshot of training (EMA weights), to measure the learning curve."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(work / "tokenizer")
    vae, unet, text_encoder = build_vae(cfg), build_unet(cfg), build_text_encoder(cfg, tokenizer)
    vae.load_state_dict(load_checkpoint(work / "vae.pt", "cpu")["model"])
    state = load_checkpoint(snapshot, "cpu")
    unet.load_state_dict(state["unet"]), text_encoder.load_state_dict(state["text"])
    scale = load_checkpoint(work / "latents.pt")["scaling_factor"]
    save_model(out, vae, unet, text_encoder, tokenizer, scale)


def check_same_recipe(work: Path, cfg: TrainConfig) -> None:
    """A work folder continues only the recipe that began it: step counts may grow, nothing else may change."""
    path = work / "config.json"
    if not path.exists():
        return
    before, now = json.loads(path.read_text()), json.loads(json.dumps(asdict(cfg)))
    changed = [k for k in now if k != "steps" and not k.endswith(("_steps", "_every")) and before.get(k) != now[k]]
    if changed:
        what = ", ".join(f"{k} {before.get(k)} -> {now[k]}" for k in changed)
        raise UsageError(
            f"{work} holds a run of another recipe ({what}); continue it with its settings or give a new --work-dir"
        )


def train(out: Path, work: Path, cfg: TrainConfig = TrainConfig(), device: torch.device | None = None) -> None:
    device = device or training_device()
    check_same_recipe(work, cfg)
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    tokenizer = write_word_tokenizer(list(WORDS), work / "tokenizer")
    log(f"tokenizer: {len(tokenizer)} tokens; training on {device}")
    vae = train_vae(cfg, work, device)
    data = encode_scenes(cfg, vae, work)
    unet, text_encoder, scale = train_denoiser(cfg, data, tokenizer, work, device)
    save_model(out, vae, unet, text_encoder, tokenizer, scale)
    log(f"saved the model to {out}")
