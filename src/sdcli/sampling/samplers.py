"""The sampler registry: one name per sampler, its AUTOMATIC1111 name, and the diffusers scheduler that runs it.

One table drives the code (`sdcli.sampling.loop` builds the scheduler) and the command line (`--sampler` choices and
`sdcli samplers`). A scheduler is built with `from_config` from the model's own scheduler config (its betas and
`prediction_type`) plus the settings below, which pin what the name means: `dpm++2m` is never Karras, whatever the
model's config says. Pure data; importing it does not import torch.

A noise schedule (`--schedule`) is a separate choice, as in AUTOMATIC1111 1.9+ ("Schedule type"): a few more
scheduler config flags on top of the sampler's settings. The `-karras` names are their sampler with the Karras
schedule. The CFG++ samplers (`-cfgpp`) step with sdcli's own update on their scheduler's schedule
(`sdcli.sampling.cfgpp`), and take `--cfg` as CFG++'s lambda in [0, 1].
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
    # CFG++ (Chung et al. 2024): sdcli's step in place of the scheduler's, which renoises along the unconditional
    # prediction; --cfg is then lambda in [0, 1].
    cfg_pp: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))

    @property
    def schedule(self) -> str:
        """The schedule its name fixes: karras for the -karras names, else the scheduler's default."""
        return "karras" if self.settings.get("use_karras_sigmas") else "default"


@dataclass(frozen=True)
class NoiseSchedule:
    name: str  # our name, as typed after --schedule
    a1111_name: str  # AUTOMATIC1111's "Schedule type"
    settings: Mapping[str, Any]  # scheduler config flags, over the sampler's settings


def _sigmas(kind: str) -> dict[str, bool]:
    """diffusers' sigma-spacing flags with `kind` on and the others off (diffusers refuses two at once)."""
    return {f"use_{other}_sigmas": other == kind for other in ("karras", "exponential", "beta")}


SCHEDULES: tuple[NoiseSchedule, ...] = (
    NoiseSchedule("default", "Automatic", {}),  # the sampler's own
    NoiseSchedule("karras", "Karras", _sigmas("karras")),  # Karras et al. 2022, eq. 5 (rho = 7)
    NoiseSchedule("exponential", "Exponential", _sigmas("exponential")),  # evenly spaced in log sigma
    NoiseSchedule("beta", "Beta", _sigmas("beta")),  # Lee et al. 2024, "Beta Sampling is All You Need"
    NoiseSchedule("sgm-uniform", "SGM Uniform", {"timestep_spacing": "trailing"}),  # from t = T - 1, evenly
)
SCHEDULE_NAMES: tuple[str, ...] = tuple(s.name for s in SCHEDULES)
_SCHEDULES = {s.name: s for s in SCHEDULES}
_SCHEDULES_BY_A1111_NAME = {s.a1111_name: s for s in SCHEDULES}


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
    Sampler("euler-cfgpp", "Euler CFG++", "EulerDiscreteScheduler", _karras(False), cfg_pp=True),
    Sampler("euler-a-cfgpp", "Euler a CFG++", "EulerAncestralDiscreteScheduler", cfg_pp=True),
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


def get_schedule(name: str) -> NoiseSchedule:
    """The schedule called `name` (one of SCHEDULE_NAMES)."""
    return _SCHEDULES[name]


def resolve_schedule(sampler: Sampler, schedule: str | None) -> NoiseSchedule:
    """The schedule `sampler` runs on: `schedule` (None: the one its name fixes); a usage error where a -karras name
    is asked for another schedule."""
    if schedule is not None and sampler.schedule != "default" and schedule != sampler.schedule:
        base = sampler.name.removesuffix(f"-{sampler.schedule}")
        raise UsageError(
            f"--sampler {sampler.name} is {base} with --schedule {sampler.schedule}, not {schedule}; "
            f"use --sampler {base} --schedule {schedule}"
        )
    return get_schedule(schedule or sampler.schedule)


def from_a1111_schedule(a1111_name: str) -> dict[str, str]:
    """The `schedule` setting for AUTOMATIC1111's "Schedule type" (Automatic: none, the sampler's own)."""
    try:
        found = _SCHEDULES_BY_A1111_NAME[a1111_name]
    except KeyError:
        known = ", ".join(_SCHEDULES_BY_A1111_NAME)
        raise UsageError(f"sdcli has no schedule for AUTOMATIC1111's {a1111_name!r}; it knows: {known}") from None
    return {} if found.name == "default" else {"schedule": found.name}
