"""Theory checks on the user's own model, each with its measured assumption (docs/analysis.md "Theory checks").

Rows in the format of :mod:`sslens.analyses.checks` (``pass``: true/false, or ``"outside"`` with the failing
assumption named in ``regime``):

- ``own.entropy_bound`` (Zhai et al. 2023, Thm 3.1; docs/theory.md §3.4): the measured attention entropy of every
  head and query is at least the bound h_T(sigma), at up to :data:`MAX_STATES` states of a checkpoint series.
  Assumption: heads of the form x W_Q W_K^T x^T / attn_scale (``qk_gradient.check_head_form``: zero query/key
  biases, standard positions ...). Needs the model (checkpoint series); a recording holds no layer inputs.
- ``own.qk_gradient_alignment`` (docs/theory.md §3.2): cos(W_Q W_K^T(t1) - W_Q W_K^T(t0), u1 v1^T of the exact
  QK gradient G at t0) per head between the first two states, reported. Same assumption as above.
- ``own.qk_rank_small_init`` (condensation -> rank collapse, docs/theory.md Part 3): under a small initialisation
  the QK effective rank falls below its initial value. Assumption measured: small init, i.e. the attention at the
  first state is near uniform (its entropy >= :data:`UNIFORM_FRACTION` of the uniform causal entropy on the
  probe); else ``"outside"``.

The model checks run only for models of at most :data:`MAX_PARAMS` parameters.
"""

from __future__ import annotations

import math

import torch

UNIFORM_FRACTION = 0.95
RANK_DROP = 0.9  # own.qk_rank_small_init: the collapse must take at least a tenth of the initial effective rank
MAX_STATES = 6
MAX_PARAMS = 50_000_000  # the model checks load up to MAX_STATES + 2 states; larger models are skipped


def _row(id_, check, measured, predicted, ok, regime, step) -> dict:
    from sslens.analyses.checks import validate

    return validate({"id": id_, "check": check, "measured": measured, "predicted": predicted, "tolerance": "-",
                     "pass": ok, "regime": regime, "run": "", "step": step})


def qk_rank_check(res) -> dict | None:
    """``own.qk_rank_small_init`` of a series result (None without QK ranks or patterns)."""
    er, ent = res.head.get("QK.effective_rank"), res.head.get("entropy")
    if er is None or ent is None or torch.isnan(er).all() or torch.isnan(ent[0]).all() or res.probe is None:
        return None
    T = res.probe.shape[1]
    uniform = sum(math.log(q + 1) for q in range(T)) / T  # mean over queries of ln(visible keys)
    h0 = float(torch.nanmean(ent[0]))
    mean_er = torch.nanmean(er.flatten(1), dim=1)  # [step]: mean over layers and heads
    fin = torch.isfinite(mean_er).nonzero().flatten().tolist()
    if len(fin) < 2:
        return None
    # the last state against the first, by a margin: the minimum of a noisy series is nearly always below its start
    first, low, step = float(mean_er[fin[0]]), float(mean_er[fin[-1]]), res.steps[fin[-1]]
    small = h0 >= UNIFORM_FRACTION * uniform
    regime = (f"small init: initial attention entropy {h0:.3f} nats >= {UNIFORM_FRACTION} x uniform {uniform:.3f}"
              if small else f"not small init: initial attention entropy {h0:.3f} < {UNIFORM_FRACTION} x uniform "
                            f"{uniform:.3f} nats (attention not near uniform at the first state)")
    return _row("own.qk_rank_small_init", f"mean QK effective rank at the last state <= {RANK_DROP} x its initial value",
                low, f"<= {RANK_DROP * first:.4g} ({RANK_DROP} x initial {first:.4g})",
                (low <= RANK_DROP * first) if small else "outside", regime, step)


def model_checks(series, probe: torch.Tensor) -> list[dict]:
    """``own.entropy_bound`` and ``own.qk_gradient_alignment`` of a checkpoint series (a model per state)."""
    from sslens.analyses import entropy_bound, qk_gradient
    from sslens.errors import SslensError

    steps = list(series.steps)
    picked = sorted({steps[round(i * (len(steps) - 1) / (MAX_STATES - 1))] for i in range(MAX_STATES)}) \
        if len(steps) > MAX_STATES else steps
    rows = []
    m = series.load_into(steps[0], None)
    if sum(p.numel() for p in m.parameters()) > MAX_PARAMS:
        return []
    try:
        slack, ok_steps = [], []
        for s in picked:
            m = series.load_into(s, m)
            r = entropy_bound.head_entropy_bounds(m, probe)
            slack.append(float((r["entropy"] - r["bound"]).min()))
            ok_steps.append(s)
        worst = min(range(len(slack)), key=slack.__getitem__)
        rows.append(_row("own.entropy_bound", "measured attention entropy >= Zhai Thm 3.1 bound, every head and query",
                         slack[worst], ">= 0 (min slack)", slack[worst] >= -1e-9,
                         "heads x W_Q W_K^T x^T / attn_scale (zero query/key biases)", ok_steps[worst]))
    except SslensError as e:
        rows.append(_row("own.entropy_bound", "measured attention entropy >= Zhai Thm 3.1 bound", None, ">= 0",
                         "outside", f"assumption fails: {e}", picked[-1]))
    try:
        if len(steps) < 2:
            raise SslensError("series", "one state", "two or more")
        m = series.load_into(steps[0], m)
        G = qk_gradient.qk_gradient(m, probe)
        A0 = qk_gradient.qk_product(m)
        A1 = qk_gradient.qk_product(series.load_into(steps[1], m))
        cos = qk_gradient.alignment(A1 - A0, G)  # [layer, head]
        rows.append(_row("own.qk_gradient_alignment", "cos(change of W_Q W_K^T, top singular pair of the exact QK "
                         "gradient) between the first two states, per layer and head", cos.tolist(), "> 0 (reported)",
                         "reported", "heads x W_Q W_K^T x^T / attn_scale; gradient of next-token CE on the probe",
                         [steps[0], steps[1]]))
    except SslensError as e:
        rows.append(_row("own.qk_gradient_alignment", "QK change vs exact QK gradient", None, "> 0", "outside",
                         f"assumption fails: {e}", steps[0]))
    return rows
