"""`--guidance-interval LO,HI` as typed, parsed and checked. Pure Python, no torch (settings validate with it).

Two spellings (Kynkäänniemi et al. 2024, "Applying Guidance in a Limited Interval Improves Sample and Distribution
Quality in Diffusion Models", define the interval in noise levels sigma):

- `0.28,5.42`: sigma values. A step is guided when the sigma of the timestep its U-Net call is given lies in
  [LO, HI]; sigma = sqrt((1 - alphabar_t) / alphabar_t), about 14.6 at the start of an SD run and 0.03 at its end.
- `20%,80%`: percentages of the schedule, as ComfyUI's start/end percent: p% is the timestep
  t = (1 - p/100) * (training timesteps - 1), so 0% is the noisiest end, 100% the clean end, and `20%,80%` guides
  the steps whose timestep lies between those two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sdcli.errors import UsageError

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
