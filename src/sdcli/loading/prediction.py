"""What a single checkpoint predicts (epsilon or v) when its user says so, rather than its weights.

SD 2.x checkpoints do not store their prediction type, and a fine-tune or merge of a v-prediction model need not
show the weight spread `sdcli.loading.architecture` recognises it by. Two ways to say it, in this order: an explicit
choice (`load_model(prediction_type=...)`), and AUTOMATIC1111's convention, a config with the checkpoint's stem
beside it (`model.yaml` beside `model.safetensors`), whose `parameterization: "v"` means v-prediction and "eps"
epsilon. Without either the weights decide. No torch here.
"""

from __future__ import annotations

import re
from pathlib import Path

from sdcli.errors import UsageError
from sdcli.recipe import PREDICTION_TYPES

_PARAMETERIZATIONS = {"eps": "epsilon", "v": "v_prediction"}  # the original configs' (LDM's `parameterization`)
# `parameterization: "v"` on a line of its own (under model.params in the original configs), quoted or not.
_PARAMETERIZATION = re.compile(r"""^\s*parameterization\s*:\s*["']?([^"'\s#]*)["']?\s*(#.*)?$""", re.MULTILINE)


def check_prediction_type(prediction_type: str) -> None:
    """A usage error unless `prediction_type` is one sdcli runs."""
    if prediction_type not in PREDICTION_TYPES:
        raise UsageError(f"prediction type {prediction_type!r} is not one sdcli runs; use epsilon or v_prediction")


def configured_prediction_type(checkpoint: Path) -> str | None:
    """The prediction type the AUTOMATIC1111 config beside `checkpoint` sets; None when there is no such file or it
    sets no `parameterization`."""
    config = checkpoint.with_suffix(".yaml")
    if not config.is_file():
        return None
    found = _PARAMETERIZATION.search(config.read_text(errors="replace"))
    if found is None:
        return None
    if found[1] not in _PARAMETERIZATIONS:
        raise UsageError(
            f'{config} sets parameterization {found[1]!r}; sdcli runs "eps" and "v": fix the file or move it away'
        )
    return _PARAMETERIZATIONS[found[1]]


def declared_prediction_type(checkpoint: Path, override: str | None = None) -> str | None:
    """The prediction type a single file is declared to have: `override` if given, else its AUTOMATIC1111 config's;
    None leaves it to the weights."""
    if override is not None:
        check_prediction_type(override)
        return override
    return configured_prediction_type(checkpoint)
