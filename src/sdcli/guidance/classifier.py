"""Classifier guidance (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis", Algorithm 2 and
eq. 14): a classifier p_phi(y | x_t, t) trained on noisy latents steers sampling by its gradient,

    eps_hat = eps - s * sqrt(1 - alphabar_t) * grad_{x_t} log p_phi(y | x_t, t).

`NoisyClassifier` is the classifier: a small time-conditioned ResNet over latents with one softmax head per
attribute (for the built-in shapes model: color, shape, background), saved and loaded as a diffusers model (config
plus safetensors) in a model folder's `classifier/` subfolder. Targets are typed as `color=red,shape=circle`; log
p(y | x_t, t) of several targets is the sum of their heads' log-probabilities, the heads being read as independent.

The guided predictor wraps any `Predictor` (plain, CFG or any other guidance): it sees the model input x_t (the
latent as the U-Net sees it, which is DDPM's x_t for every sampler), so it serves the deterministic and the
ancestral samplers alike. It needs the model's epsilon; v-prediction models are refused where the model loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import Downsample2D, ResnetBlock2D
from torch import nn

from sdcli.errors import Failure, UsageError, reason
from sdcli.guidance.context import GuidanceContext
from sdcli.loading.components import Model
from sdcli.loading.references import ModelFolder, resolve_model
from sdcli.sampling.loop import Predictor, sigma_of_timestep

SUBFOLDER = "classifier"  # where a model folder keeps its classifier


class NoisyClassifier(ModelMixin, ConfigMixin):
    """p_phi(y | x_t, t) for each head: latents (B, C, h, w) and timesteps (B,) -> logits per head (B, classes)."""

    @register_to_config
    def __init__(
        self,
        heads: Mapping[str, list[str]],
        in_channels: int = 4,
        block_out_channels: tuple[int, ...] = (64, 128, 128),
        norm_num_groups: int = 16,
    ):
        super().__init__()
        width = block_out_channels[0]
        temb = 4 * width
        self.time_proj = Timesteps(width, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(width, temb)
        self.conv_in = nn.Conv2d(in_channels, width, kernel_size=3, padding=1)
        blocks: list[nn.Module] = []
        for i, out in enumerate(block_out_channels):
            if i > 0:
                blocks.append(Downsample2D(width, use_conv=True, name="op"))
            blocks.append(
                ResnetBlock2D(in_channels=width, out_channels=out, temb_channels=temb, groups=norm_num_groups)
            )
            width = out
        self.blocks = nn.ModuleList(blocks)
        self.norm_out = nn.GroupNorm(norm_num_groups, width)
        self.head_proj = nn.ModuleDict({name: nn.Linear(width, len(labels)) for name, labels in heads.items()})

    def features(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The pooled features (B, width) the heads read, of latents (B, C, h, w) at timesteps (B,)."""
        emb = self.time_embedding(self.time_proj(t).to(x.dtype))  # (B, 4 * width)
        h = self.conv_in(x)  # (B, width, h, w)
        for block in self.blocks:
            h = block(h, emb) if isinstance(block, ResnetBlock2D) else block(h)
        return F.silu(self.norm_out(h)).mean(dim=(2, 3))  # (B, width)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(x, t)  # (B, width)
        return {name: head(h) for name, head in self.head_proj.items()}  # (B, classes) each


def parse_targets(text: str, heads: Mapping[str, list[str]]) -> dict[str, int]:
    """`color=red,shape=circle` -> {head: class index}, checked against the classifier's heads and labels."""
    known = "; ".join(f"{name}: {', '.join(labels)}" for name, labels in heads.items())
    targets: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, label = (s.strip() for s in item.partition("="))
        if not sep or name not in heads or label not in heads[name]:
            raise UsageError(f"--classifier {text!r}: {item!r} is not HEAD=LABEL of this classifier ({known})")
        if name in targets:
            raise UsageError(f"--classifier {text!r} names {name} twice; give each head one label")
        targets[name] = heads[name].index(label)
    if not targets:
        raise UsageError(f"--classifier needs at least one HEAD=LABEL, for example color=red ({known})")
    return targets


def load_classifier(folder: Path, reference: str, device: torch.device) -> NoisyClassifier:
    """The classifier saved in a model folder's `classifier/` subfolder, in fp32 (its gradient is the guidance)."""
    if not (folder / SUBFOLDER / "config.json").is_file():
        raise UsageError(
            f"model {reference} has no noise-aware classifier ({SUBFOLDER}/ in its folder); classifier guidance "
            "works with models that ship one, such as the built-in shapes model"
        )
    try:
        classifier = NoisyClassifier.from_pretrained(folder, subfolder=SUBFOLDER, use_safetensors=True)
    except Exception as error:  # noqa: BLE001 - a broken classifier folder, in any of many ways
        raise Failure(f"could not load the classifier of model {reference} ({reason(error)})") from None
    return classifier.to(device, torch.float32).eval().requires_grad_(False)


def log_prob_gradient(
    classifier: NoisyClassifier, targets: Mapping[str, int], x_t: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """grad_{x_t} sum over targets of log p_phi(y | x_t, t), (B, C, h, w), in fp32 and outside inference mode."""
    with torch.inference_mode(False), torch.enable_grad():
        x = x_t.float().clone().requires_grad_()  # a normal tensor, even when x_t was made in inference mode
        timesteps = torch.full((x.shape[0],), float(t), device=x.device)  # (B,)
        logits = classifier(x, timesteps)
        log_p = sum(F.log_softmax(logits[name], dim=-1)[:, index].sum() for name, index in targets.items())
        (grad,) = torch.autograd.grad(log_p, x)
    return grad.to(x_t.dtype)


def classifier_shift(grad_log_p: torch.Tensor, alphabar: float, scale: float) -> torch.Tensor:
    """What classifier guidance subtracts from epsilon: s * sqrt(1 - alphabar_t) * grad_{x_t} log p(y | x_t, t)."""
    return scale * (1 - alphabar) ** 0.5 * grad_log_p


def classifier_guidance(
    predict: Predictor,
    classifier: NoisyClassifier,
    targets: Mapping[str, int],
    scale: float,
    alphas_cumprod: torch.Tensor,
) -> Predictor:
    """`predict` with classifier guidance of strength `scale` added to its epsilon (eq. 14 of Dhariwal & Nichol)."""

    def guided_predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = predict(x, t)  # (B, C, h, w)
        alphabar = 1 / (1 + sigma_of_timestep(t, alphas_cumprod) ** 2)  # also for fractional t
        return eps - classifier_shift(log_prob_gradient(classifier, targets, x, t), alphabar, scale)

    return guided_predict


def classifier_for(model: Model, targets: str) -> tuple[NoisyClassifier, dict[str, int]]:
    """The model's noise-aware classifier (loaded on first use) and the targets as {head: class index}."""
    prediction_type = model.scheduler_config.get("prediction_type", "epsilon")
    if prediction_type != "epsilon":
        raise UsageError(
            f"--classifier needs an epsilon-prediction model; {model.reference} predicts {prediction_type}"
        )
    if model.classifier is None:
        found = resolve_model(model.reference)
        if not isinstance(found, ModelFolder):
            raise UsageError(f"--classifier needs a model folder with a classifier/ in it; {model.reference} is a file")
        model.classifier = load_classifier(found.folder, model.reference, model.device)
    return model.classifier, parse_targets(targets, model.classifier.config.heads)


def classifier_guided(predict: Predictor, context: GuidanceContext) -> Predictor:
    """The registry's classifier entry: the recipe's targets at its classifier scale, after every other method."""
    classifier, targets = classifier_for(context.model, context.recipe.classifier)
    scale = context.recipe.resolved_classifier_scale
    return classifier_guidance(predict, classifier, targets, scale, context.alphas_cumprod)
