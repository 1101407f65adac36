"""The sampler registry: one name per sampler, its AUTOMATIC1111 name, and the diffusers scheduler that runs it.

One table drives the code (`sdcli.sampling.loop` builds the scheduler) and the command line (`--sampler` choices and
`sdcli samplers`). A scheduler is built with `from_config` from the model's own scheduler config (its betas and
`prediction_type`) plus the settings below, which pin what the name means: `dpm++2m` is never Karras, whatever the
model's config says. Pure data; importing it does not import torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from sdcli.errors import UsageError


@dataclass(frozen=True)
class Sampler:
    name: str  # our name, as typed after --sampler
    a1111_name: str  # AUTOMATIC1111's name, as written in the `parameters` infotext
    scheduler: str  # class name in diffusers
    settings: Mapping[str, Any] = field(default_factory=dict)  # keyword arguments to `from_config`

    def __post_init__(self) -> None:
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))


def _karras(flag: bool) -> dict[str, bool]:
    return {"use_karras_sigmas": flag}


_DPM_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2}
_DPM_2M_SDE = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}

SAMPLERS: tuple[Sampler, ...] = (
    Sampler("ddim", "DDIM", "DDIMScheduler"),
    Sampler("ddpm", "DDPM", "DDPMScheduler"),
    Sampler("pndm", "PLMS", "PNDMScheduler", {"skip_prk_steps": True}),
    Sampler("lms", "LMS", "LMSDiscreteScheduler", _karras(False)),
    Sampler("lms-karras", "LMS Karras", "LMSDiscreteScheduler", _karras(True)),
    Sampler("euler", "Euler", "EulerDiscreteScheduler", _karras(False)),
    Sampler("euler-a", "Euler a", "EulerAncestralDiscreteScheduler"),
    Sampler("heun", "Heun", "HeunDiscreteScheduler", _karras(False)),
    Sampler("dpm2", "DPM2", "KDPM2DiscreteScheduler", _karras(False)),
    Sampler("dpm2-a", "DPM2 a", "KDPM2AncestralDiscreteScheduler", _karras(False)),
    Sampler("dpm++2m", "DPM++ 2M", "DPMSolverMultistepScheduler", {**_DPM_2M, **_karras(False)}),
    Sampler("dpm++2m-karras", "DPM++ 2M Karras", "DPMSolverMultistepScheduler", {**_DPM_2M, **_karras(True)}),
    Sampler("dpm++2m-sde", "DPM++ 2M SDE", "DPMSolverMultistepScheduler", {**_DPM_2M_SDE, **_karras(False)}),
    Sampler(
        "dpm++2m-sde-karras", "DPM++ 2M SDE Karras", "DPMSolverMultistepScheduler", {**_DPM_2M_SDE, **_karras(True)}
    ),
    Sampler("unipc", "UniPC", "UniPCMultistepScheduler", _karras(False)),
    Sampler("deis", "DEIS", "DEISMultistepScheduler", {"algorithm_type": "deis", **_karras(False)}),
    Sampler("lcm", "LCM", "LCMScheduler"),
)

NAMES: tuple[str, ...] = tuple(s.name for s in SAMPLERS)
_BY_NAME = {s.name: s for s in SAMPLERS}
_BY_A1111_NAME = {s.a1111_name: s for s in SAMPLERS}


def get_sampler(name: str) -> Sampler:
    """The sampler called `name`; a usage error listing the valid names if there is none."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise UsageError(f"unknown sampler {name!r}; use one of: {', '.join(NAMES)}") from None


def from_a1111_name(a1111_name: str) -> Sampler:
    """The sampler AUTOMATIC1111 calls `a1111_name` (as in an image's `parameters` infotext)."""
    try:
        return _BY_A1111_NAME[a1111_name]
    except KeyError:
        known = ", ".join(_BY_A1111_NAME)
        raise UsageError(f"sdcli has no sampler for AUTOMATIC1111's {a1111_name!r}; it knows: {known}") from None
