"""Events: abrupt changes in a series of recorded values (docs/analysis.md "Events").

The change-point rule, per series y_0 .. y_{n-1} at steps s_0 < ... < s_{n-1} (NaNs dropped, n >= 4):

1. interval changes d_i = y_{i+1} - y_i and rates r_i = d_i / (s_{i+1} - s_i) (rates, so that a smooth trend
   recorded on a log-spaced schedule is not mistaken for a jump where the recorded steps are far apart);
2. the series' own scales: its typical rate rho = median_i |r_i| and its noise
   sigma = 1.4826 median_i |d_i| / sqrt(2) (the robust standard deviation of one value, were the series noise
   around a constant; a trend only raises it, so the rule stays conservative);
3. an interval is *abrupt* when |r_i| >= RATE_FACTOR * rho, |d_i| >= STEP_NOISE * sigma and
   |d_i| >= STEP_FRACTION of the series' range max(y) - min(y);
4. runs of consecutive abrupt intervals of one sign are one candidate [s_a, s_b];
5. a candidate is an event when its total change |y_b - y_a| >= EVENT_NOISE * sigma and >= MIN_FRACTION of the
   series' range.

For Gaussian noise around a constant a single interval passes (5) with probability P(|z| > 4.24) ~ 2e-5; a
straight line (any schedule) has every |r_i| = rho and never passes (3). An event is reported as
``{"metric", "layer", "head", "start", "end", "before", "after"}`` (steps as ints, values y_a and y_b; layer and
head None for a model-level series such as the loss).
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

RATE_FACTOR = 4.0  # an abrupt interval changes at least this many times faster than the series' median rate
STEP_NOISE = 3.0  # ... and by at least this many noise standard deviations
EVENT_NOISE = 6.0  # an event changes the series by at least this many noise standard deviations
MIN_FRACTION = 0.2  # ... and by at least this fraction of the series' range
STEP_FRACTION = 0.01  # an abrupt interval moves the series by at least this fraction of its range
FLOOR = 1e-6  # noise and rate scales below FLOOR x max(1, |y|) are float32 rounding, not a scale of the series


def change_points(steps: Sequence[int], values: Float[Tensor, " step"] | Sequence[float]) -> list[dict]:
    """Events of one series by the rule of the module docstring: ``[{"start", "end", "before", "after"}]``."""
    y = torch.as_tensor(values, dtype=torch.float64)
    s = torch.as_tensor(list(steps), dtype=torch.float64)
    ok = torch.isfinite(y)
    y, s = y[ok], s[ok]
    last = torch.ones_like(s, dtype=torch.bool)  # a step recorded twice: its last value
    last[:-1] = s[1:] != s[:-1]
    y, s = y[last], s[last]
    if len(y) < 4:
        return []
    d = y[1:] - y[:-1]
    r = d / (s[1:] - s[:-1])
    span = float(y.max() - y.min())
    floor = FLOOR * max(1.0, float(y.abs().max()))  # float32 resolution: jitter below it is no change
    if span <= floor:
        return []
    rho = max(float(r.abs().median()), floor)
    sigma = max(1.4826 * float(d.abs().median()) / math.sqrt(2), floor)
    abrupt = (r.abs() >= RATE_FACTOR * rho) & (d.abs() >= STEP_NOISE * sigma) & (d.abs() >= STEP_FRACTION * span)
    out = []
    i, n = 0, len(d)
    while i < n:
        if not abrupt[i]:
            i += 1
            continue
        j = i
        while j + 1 < n and abrupt[j + 1] and (d[j + 1] > 0) == (d[i] > 0):
            j += 1
        before, after = float(y[i]), float(y[j + 1])
        if abs(after - before) >= max(EVENT_NOISE * sigma, MIN_FRACTION * span):
            out.append({"start": int(s[i]), "end": int(s[j + 1]), "before": before, "after": after})
        i = j + 1
    return out


def series_of(res) -> Iterator[tuple[str, int | None, int | None, Tensor]]:
    """Every series of a :class:`~sslens.analyses.series.SeriesResult`: (metric, layer, head, values ``[step]``).

    Model-level scalars (loss, logged), each head metric (scores and ranks), composition (metric
    ``{Q,K,V}_comp.L{l}H{h}`` at the receiving head, as in ``to_pandas``), per-layer metrics and relative change.
    """
    for k, v in res.scalars.items():
        yield k, None, None, v
    for m, v in res.head.items():
        for li in range(res.n_layers):
            for hi in range(res.n_heads):
                yield m, res._L(li), res._H(hi), v[:, li, hi]
    for mode, v in res.composition.items():
        for l1 in range(res.n_layers):
            for h1 in range(res.n_heads):
                for l2 in range(l1 + 1, res.n_layers):
                    for h2 in range(res.n_heads):
                        yield f"{mode}_comp.L{res._L(l1)}H{res._H(h1)}", res._L(l2), res._H(h2), v[:, l1, h1, l2, h2]
    for m, v in res.layer.items():
        for li in range(res.n_layers):
            yield m, res._L(li), None, v[:, li]
    for k, v in res.rel_change.items():
        parts = k.split(".")
        layer = int(parts[1]) if parts[0] == "blocks" and parts[1].isdigit() else None
        yield f"rel_change.{'.'.join(parts[2:]) if layer is not None else k}", layer, None, v


def detect(res) -> list[dict]:
    """Events of every series of a result, in order of start step (then metric, layer, head)."""
    out = []
    for metric, layer, head, v in series_of(res):
        for e in change_points(res.steps, v):
            out.append({"metric": metric, "layer": layer, "head": head, **e})
    return sorted(out, key=lambda e: (e["start"], e["metric"], -1 if e["layer"] is None else e["layer"],
                                      -1 if e["head"] is None else e["head"]))
