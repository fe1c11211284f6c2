"""Stage-1 (condensation) and stage-2 (key-query rank collapse) analyses of a rank-collapse run
(docs/theory.md §2.2-2.3), read from the run's checkpoints.

Rules where the paper is silent (docs/rank_collapse.md):
- data for v and F: a fixed sample of ``n_data`` sequences from the run's task (generator seed 12345);
  X = W_E[tokens] (+ W_pos when the model has positions);
- W_V alignment: mean |cos| of W_V's columns with v (every stage-1 update of W_V is v^T (W1 W2)^T, so
  columns move along v) and of its rows with (W1 W2)^T;
- stage boundaries: t1 = first checkpoint where the outer weights' relative change
  ||W_t - W_0||_F/||W_0||_F (W_V, W1, W2 together) reaches half its final value; t2 = the same for the
  attention weights (W_Q, W_K). The two-stage picture predicts t1 < t2, judged on ``onset`` (the crossing
  interpolated linearly between checkpoints: coarse spacing otherwise ties them);
- escape time: first checkpoint where the loss falls below 90 % of its initial value.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from sslens import compat
from sslens.analyses import rank
from sslens.analyses.condensation import mean_abs_cos, relative_change
from sslens.errors import require
from sslens.store import RunStore
from sslens.tasks import analysis_task as build_task  # a run's config is not trusted to name files
from sslens.theory import rank_collapse as th

OUTER = ("W_V", "W1", "W2")
ATTN = ("W_Q", "W_K")


def weights(tensors: dict) -> dict:
    """Named matrices of the theory from a checkpoint's ``model.*`` tensors."""
    g = lambda k: tensors[f"model.{k}"].double()  # noqa: E731
    w = {"W_Q": g("blocks.0.attn.W_Q")[0], "W_K": g("blocks.0.attn.W_K")[0], "W_V": g("blocks.0.attn.W_V")[0],
         "W1": g("blocks.0.mlp.W_in")}
    w["W2"] = g("unembed.W_U")[:, 0] if g("unembed.W_U").shape[1] == 1 else g("blocks.0.mlp.W_out")
    return w


def data(store: RunStore, n_data: int = 2048):
    """X, y, config: the run's fixed training set when its task has one (full-batch runs: the theory's
    F sums over the training sequences, docs/theory.md §2.3), else ``n_data`` fresh sequences (seed 12345)."""
    cfg = store.read_config()
    task = build_task(cfg["task"])
    fixed = task.training_set() if hasattr(task, "training_set") else None
    tokens, target = fixed if fixed is not None else task.batch(n_data, torch.Generator().manual_seed(12345))
    t0, _ = store.load_checkpoint(store.checkpoint_steps()[0])
    X = t0["model.embed.W_E"].double()[tokens]
    if "model.pos_embed.W_pos" in t0:
        X = X + t0["model.pos_embed.W_pos"].double()[: tokens.shape[1]]
    return X, target.double(), cfg


def stage_metrics(run_dir, n_data: int = 2048) -> dict:
    """Every stage-1/stage-2 quantity at every checkpoint (lists aligned with ``steps``)."""
    store = RunStore(run_dir)
    X, y, cfg = data(store, n_data)
    scalar = cfg["model"].get("head") == "scalar"
    steps = store.checkpoint_steps()
    Ws = [weights(store.load_checkpoint(s)[0]) for s in steps]
    out: dict = {"steps": steps, "scalar_head": scalar}
    loss = {r["step"]: r["loss"] for r in store.read_metrics()}
    out["loss"] = [loss.get(s, float("nan")) for s in steps]
    w0 = Ws[0]
    cat = lambda w, names: torch.cat([w[n].flatten() for n in names])  # noqa: E731
    out["rel_change_outer"] = [relative_change(cat(w, OUTER), cat(w0, OUTER)) for w in Ws]
    out["rel_change_attn"] = [relative_change(cat(w, ATTN), cat(w0, ATTN)) for w in Ws]
    QK = torch.stack([w["W_Q"] @ w["W_K"].T for w in Ws])
    out["norm_W_Q"] = [w["W_Q"].norm().item() for w in Ws]
    for name, mats in (("QK", QK), ("W_Q", torch.stack([w["W_Q"] for w in Ws])),
                       ("W_K", torch.stack([w["W_K"] for w in Ws])), ("W_V", torch.stack([w["W_V"] for w in Ws])),
                       ("W1", torch.stack([w["W1"] for w in Ws]))):
        for m in ("effective_rank", "stable_rank", "top1_energy"):
            out[f"{m}.{name}"] = rank.METRICS[m](mats).tolist()
    if scalar:
        v = th.target_direction(X, y)
        out["v"] = v.tolist()
        out["energy"] = [th.energy(v, w["W_V"], w["W1"], w["W2"]).item() for w in Ws]
        cons = [torch.cat(th.conservation(v, w["W_V"], w["W1"], w["W2"])) for w in Ws]
        scale = [cat(w, OUTER).pow(2).sum().item() for w in Ws]
        out["conservation_drift"] = [((c - cons[0]).abs().max() / max(s0, 1e-300)).item() for c, s0 in zip(cons, scale)]
        A = [th.sign_conditions(v, w["W_V"], w["W1"], w["W2"]) for w in Ws]
        out["A1"], out["A2"] = [a[0] for a in A], [a[1] for a in A]
        out["cos_WV_cols_v"] = [mean_abs_cos(w["W_V"].T, v) for w in Ws]
        # Thm 1 of [CR]: gradient ascent on E in rescaled time tau = lr c step, c = ||sum_i y_i sum_j X_ij|| / (n s)
        # (at uniform attention and f ~ 0, -dL/dW = c dE/dW), so dE/dtau >= 3 E^{4/3} (docs/rank_collapse.md)
        lr = float(next(iter(cfg["train"]["lr"].values())))
        c = (torch.einsum("n,nsd->d", y, X).norm() / (X.shape[0] * X.shape[1])).item()
        out["energy_tau"] = [lr * c * s for s in steps]
        out["energy_growth"] = energy_growth(out["energy_tau"], out["energy"])
        out["cos_WV_rows_W1W2"] = [mean_abs_cos(w["W_V"], w["W1"] @ w["W2"]) for w in Ws]
        Fs = [th.stage2_F(X, y, w["W_V"], w["W1"], w["W2"]) for w in Ws]
        out["sigma1_F"] = [torch.linalg.svdvals(F)[0].item() for F in Fs]
        out["sigma_gap_F"] = [(lambda s: (s[0] / s[1]).item())(torch.linalg.svdvals(F)) for F in Fs]
        out["cos_QK_F"] = [rank.rank1_alignment(qk, *_uv(F)).item() for qk, F in zip(QK, Fs)]
    out["t1"], out["t2"] = boundary(steps, out["rel_change_outer"]), boundary(steps, out["rel_change_attn"])
    out["t1_interp"], out["t2_interp"] = onset(steps, out["rel_change_outer"]), onset(steps, out["rel_change_attn"])
    if scalar:
        F1 = Fs[steps.index(out["t1"])]  # F frozen once the outer weights have condensed (stage-2 premise)
        out["cos_QK_F_t1"] = [rank.rank1_alignment(qk, *_uv(F1)).item() for qk in QK]
    return out


def _uv(F):
    u, _, v = rank.top_singular_pair(F)
    return u, v


def energy_growth(tau: list[float], E: list[float]) -> list[float]:
    """[CR] Thm 1 integrated between consecutive checkpoints: dE/dtau >= 3 E^{4/3} <=> d(E^{-1/3})/dtau <= -1, so
    (E_a^{-1/3} - E_b^{-1/3}) / (tau_b - tau_a) >= 1 (nan where E <= 0 at either end). Exactly 1 on the balanced
    scalar flow E = u^3, du/dtau = u^2."""
    out = []
    for a, b, ea, eb in zip(tau, tau[1:], E, E[1:]):
        out.append((ea ** (-1 / 3) - eb ** (-1 / 3)) / (b - a) if ea > 0 and eb > 0 and b > a else float("nan"))
    return out


def boundary(steps: list[int], series: list[float], frac: float = 0.5) -> int:
    """First step where ``series`` reaches ``frac`` of its final value."""
    s = np.asarray(series)
    return int(steps[int(np.argmax(s >= frac * s[-1]))]) if s[-1] > 0 else steps[-1]


def onset(steps: list[int], series: list[float], frac: float = 0.5) -> float:
    """``boundary`` between checkpoints: the (fractional) step where ``series``, linear between the two checkpoints
    that bracket the crossing, reaches ``frac`` of its final value. Breaks the ties that ``boundary`` reports when
    two series cross within the same checkpoint interval (docs/rank_collapse.md "Stage boundaries")."""
    s = np.asarray(series, dtype=float)
    if not s[-1] > 0:
        return float(steps[-1])
    target = frac * s[-1]
    i = int(np.argmax(s >= target))
    if i == 0:
        return float(steps[0])
    return float(steps[i - 1] + (target - s[i - 1]) / (s[i] - s[i - 1]) * (steps[i] - steps[i - 1]))


def growth_rate(steps: list[int], norms: list[float], lo: int, hi: int) -> float:
    """Slope of ln ||W_Q||_F against step between checkpoints ``lo`` and ``hi`` (least squares)."""
    t = np.asarray(steps, dtype=float)
    sel = (t >= lo) & (t <= hi)
    return float(np.polyfit(t[sel], np.log(np.asarray(norms)[sel]), 1)[0]) if sel.sum() >= 2 else float("nan")


def escape_step(steps: list[int], loss: list[float], frac: float = 0.9) -> float:
    """First checkpoint where the loss is below ``frac`` x its initial value (nan if never)."""
    l0 = loss[1] if np.isnan(loss[0]) else loss[0]
    for s, l in zip(steps, loss):
        if l < frac * l0:
            return float(s)
    return float("nan")


def loglog_slope(eps: list[float], t_esc: list[float], n_boot: int = 2000, seed: int = 0) -> dict:
    """Slope of log t_escape against log eps, with a 95 % bootstrap interval over the (eps, t) pairs."""
    x, y = np.log(np.asarray(eps)), np.log(np.asarray(t_esc))
    ok = np.isfinite(y)
    x, y = x[ok], y[ok]
    slope = float(np.polyfit(x, y, 1)[0])
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, len(x), len(x))
        if len(set(x[i])) >= 2:
            boots.append(np.polyfit(x[i], y[i], 1)[0])
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"slope": slope, "ci95": [float(lo), float(hi)], "n": int(len(x))}


# ---------------------------------------------------------------------------------------------------
# Stage 2 in its regime (docs/rank_collapse.md "Stage 2"): Assumption 2 measured, Thm 3's rates.

DELTA = 0.1  # small-regime threshold on the score spread ||W_Q W_K^T||_2 max_i ||x_i||^2 / sqrt(d)


def score_scale(QK: Tensor, X: Tensor) -> float:
    """||W_Q W_K^T||_2 max ||x||^2 / sqrt(d): a bound on |x_q W_Q W_K^T x_k^T| / sqrt(d) over the data."""
    d = X.shape[-1]
    return (torch.linalg.matrix_norm(QK, ord=2) * X.norm(dim=-1).max() ** 2 / d**0.5).item()


def _fit_slope(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    return float(np.polyfit(x, y, 1)[0]) if len(x) >= 2 else float("nan")


def _outer_grad_ratio(store: RunStore, step: int, chunks: list) -> float:
    """||dL/d(W_V, W1, W2)|| / ||dL/d(W_Q, W_K)|| at a checkpoint, by autograd on the data (the mean over
    equal-size chunks)."""
    from sslens.losses import last_token_exp

    model = store.load_model(step)
    names = compat.leaves(model)  # 3.x names on both lines (4.x layouts there: the norms below are layout-free)
    attn = [names[n] for n in ("blocks.0.attn.W_Q", "blocks.0.attn.W_K")]
    outer = [p for n, p in names.items() if p.requires_grad and n not in ("blocks.0.attn.W_Q", "blocks.0.attn.W_K")]
    g = None
    for tokens, y in chunks:
        gi = torch.autograd.grad(last_token_exp(model(tokens), y.to(model.cfg.dtype)), attn + outer)
        g = gi if g is None else [a + b for a, b in zip(g, gi)]
    na = torch.sqrt(sum((x.double() ** 2).sum() for x in g[:2])).item()
    no = torch.sqrt(sum((x.double() ** 2).sum() for x in g[2:])).item()
    return no / max(na, 1e-300)


N_POP = 2**19  # fresh sequences for the reported F when the run samples fresh batches (F is the population's)
F_WINDOW = 150  # steps before t_end over which F is averaged for the reported alignment (fresh batches)
N_SERIES = 2**17  # fresh sequences for F at every checkpoint (the series, rates and windows)
N_POP_G = 2**16  # fresh sequences for the autograd force G (a mean over chunks)
POP_SEED = 12345  # the reported F's sample; the independent recomputation (alignment_fresh) uses another


def _fresh_task(cfg: dict):
    return build_task({k: v for k, v in cfg["task"].items() if k not in ("n_train", "data_seed")})


def token_sample(task, n: int = N_POP, seed: int = POP_SEED, chunk: int = 65536) -> list[tuple[Tensor, Tensor, Tensor]]:
    """``n`` fresh sequences of ``task`` as (token counts [k, vocab], last token [k], label [k]) chunks."""
    g = torch.Generator().manual_seed(seed)
    out, left = [], n
    while left > 0:
        k = min(chunk, left)
        tok, y = task.batch(k, g)
        C = torch.zeros(k, task.vocab, dtype=torch.float64).scatter_add_(1, tok, torch.ones(tok.shape, dtype=torch.float64))
        out.append((C, tok[:, -1], y.double()))
        left -= k
    return out


def population_F(tensors: dict, sample: list, seq_len: int) -> Tensor:
    """F of docs/theory.md §2.3 (2.3.2) at a checkpoint's weights over a ``token_sample``. With X_ij =
    E[t_ij] and e = E w (w = W_V W1 W2): Xbar_i w = ebar_i = c_i e / s, M_i w = E^T (c_i * (e - ebar_i)), so
    F = E^T K E / (n s sqrt(d)) with K = sum_i y_i L1_i onehot(t_is) (c_i * (e - ebar_i))^T [vocab, vocab]:
    O(n vocab) per checkpoint on the same sample (equal to ``stage2_F`` on X = E[tokens]; tested)."""
    P = tensors.get("model.pos_embed.W_pos")
    require(P is None or not P.any(), "pos", "a model with positional embeddings", "the binary task's pos=False model")
    w = weights(tensors)
    E = tensors["model.embed.W_E"].double()
    e = E @ (w["W_V"] @ w["W1"] @ w["W2"])
    K = torch.zeros(E.shape[0], E.shape[0], dtype=torch.float64)
    n = 0
    for C, last, y in sample:
        eb = C @ e / seq_len
        a = y * torch.exp(-y * eb)
        K.index_add_(0, last, a[:, None] * C * (e[None, :] - eb[:, None]))
        n += len(y)
    return E.T @ K @ E / (n * seq_len * E.shape[1] ** 0.5)


def _fixed(cfg: dict) -> bool:
    return bool(cfg["task"].get("n_train"))


def stage2(run_dir, delta: float = DELTA, n_data: int = 2048, n_pop: int = N_POP, n_series: int = N_SERIES,
           n_pop_G: int = N_POP_G) -> dict:
    """Stage-2 quantities of a scalar-head run at every checkpoint and the derived rates.

    Rules (documented in docs/rank_collapse.md):
    - small regime: score spread ``score_scale`` < ``delta``; **end of stage 2** ``t_end`` = the last
      checkpoint before the score spread first reaches ``delta``;
    - stage-2 start ``t1``: outer relative change at half its value at ``t_end``;
    - growth window: checkpoints in [t1, t_end] with ||W_Q||_F >= 3 x its initial value (the random init
      part no longer dominates); rate of ln||W_Q|| per unit of lr x step (least squares) against the mean
      sigma1(F(t)) over the window;
    - misalignment mis(t) = sqrt(1 - cos^2(W_Q W_K^T, u1 v1^T of F(t))); its decay rate per lr x step is
      fitted from the first checkpoint of the growth window to the first one where mis is within 2x of its
      minimum over [t1, t_end], against the mean sigma1 - sigma2 of F;
    - time to leave the small regime (lr x steps from t1 to t_end) against ln(1/eps_attn) / sigma1;
    - F: the training set's when the run has a fixed set (full-batch GD); with fresh batches every step
      (SGD on the population loss) the population F, on ``n_series`` fresh sequences at every checkpoint;
      the reported alignment ``cos_end`` against the mean of F over the checkpoints of the ``F_WINDOW``
      steps up to t_end on ``n_pop`` fresh sequences (SGD noise in the outer weights turns F(t)'s top pair
      from checkpoint to checkpoint; W_Q W_K^T integrates F); the misalignment uses the same trailing mean.
    """
    store = RunStore(run_dir)
    X, y, cfg = data(store, n_data)
    tokens = _tokens(store, n_data)
    mc = cfg["model"]
    lr = float(next(iter(cfg["train"]["lr"].values())))
    steps = store.checkpoint_steps()
    Ws = [weights(store.load_checkpoint(s)[0]) for s in steps]
    QK = [w["W_Q"] @ w["W_K"].T for w in Ws]
    if _fixed(cfg):  # full-batch GD on a fixed training set: Thm 3's F is the training set's
        Fs = [th.stage2_F(X, y, w["W_V"], w["W1"], w["W2"]) for w in Ws]
    else:  # fresh batches every step: gradient flow on the population loss, F on n_pop fresh sequences
        sample = token_sample(_fresh_task(cfg), n_series)
        Fs = [population_F(store.load_checkpoint(s)[0], sample, X.shape[1]) for s in steps]
    sv = [torch.linalg.svdvals(F) for F in Fs]
    cos = [rank.rank1_alignment(q, *_uv(F)).item() for q, F in zip(QK, Fs)]
    scale = [score_scale(q, X) for q in QK]
    i_end = next((i - 1 for i, r in enumerate(scale) if r >= delta), len(steps) - 1)
    i_end = max(i_end, 0)
    cat = lambda w, names: torch.cat([w[n].flatten() for n in names])  # noqa: E731
    rel_outer = [relative_change(cat(w, OUTER), cat(Ws[0], OUTER)) for w in Ws]
    ref = rel_outer[i_end]
    i1 = int(np.argmax(np.asarray(rel_outer[: i_end + 1]) >= 0.5 * ref)) if ref > 0 else 0
    nq = [w["W_Q"].norm().item() for w in Ws]
    nk = [w["W_K"].norm().item() for w in Ws]
    time = [lr * s for s in steps]
    grow = [i for i in range(i1, i_end + 1) if nq[i] >= 3 * nq[0]]
    rate = _fit_slope([time[i] for i in grow], [np.log(nq[i]) for i in grow]) if len(grow) >= 2 else float("nan")
    s1 = float(np.mean([sv[i][0].item() for i in grow])) if grow else float("nan")
    if _fixed(cfg):
        cos_bar = cos
    else:  # against the trailing mean of F over F_WINDOW steps (the SGD noise averaged, as W_Q W_K^T does)
        Fbar = [sum(F for F, t in zip(Fs, steps) if s - F_WINDOW <= t <= s) / sum(s - F_WINDOW <= t <= s for t in steps)
                for s in steps]
        cos_bar = [rank.rank1_alignment(q, *_uv(F)).item() for q, F in zip(QK, Fbar)]
    mis = [float(np.sqrt(max(1 - c * c, 1e-300))) for c in cos_bar]
    mwin = misalignment_window(mis, i1, i_end)
    decay = -_fit_slope([time[i] for i in mwin], [np.log(mis[i]) for i in mwin]) if len(mwin) >= 2 else float("nan")
    gap = float(np.mean([(sv[i][0] - sv[i][1]).item() for i in mwin])) if mwin else float("nan")
    eps_attn = mc.get("init_attn") or init_std_of(mc)
    t_leave = time[i_end] - time[i1]
    s1_end = sv[i_end][0].item()
    # the reported alignment at t_end: F on the training set (fixed set) or on n_pop fresh sequences
    # fresh batches: SGD noise turns F's top pair by up to ~0.2 between checkpoints 10 steps apart while
    # W_Q W_K^T integrates F (2.3.1); the frozen F of the theory is the mean of F over the F_WINDOW steps to t_end
    fwin = [steps[i_end]] if _fixed(cfg) else [s for s in steps if steps[i_end] - F_WINDOW <= s <= steps[i_end]]
    cos_end = cos[i_end] if _fixed(cfg) else _alignment_on(store, steps[i_end], fwin, token_sample(_fresh_task(cfg), n_pop))
    # Assumption 2: outer directions frozen, attention small, outer gradients dominate
    wvec = [w["W_V"] @ w["W1"] @ w["W2"] for w in Ws]
    ang = []
    for i in range(grow[0] if grow else i1, i_end):
        c = torch.dot(wvec[i], wvec[i + 1]) / (wvec[i].norm() * wvec[i + 1].norm())
        ang.append(float(torch.arccos(c.clamp(-1, 1))) / max(steps[i + 1] - steps[i], 1))
    outer_norm = [float(np.sqrt(sum(w[n].norm().item() ** 2 for n in OUTER))) for w in Ws]
    gi = sorted({i1, (i1 + i_end) // 2, i_end})
    gdata = [(tokens, y)] if _fixed(cfg) else _fresh_chunks(cfg, n_pop_G)
    gratio = {steps[i]: _outer_grad_ratio(store, steps[i], gdata) for i in gi}
    # the exact force G = -dL/d(W_Q W_K^T) (analyses/qk_gradient.py) on the growth window: tanh' included
    gwin = grow[:: max(1, len(grow) // 4)] if grow else []
    sG = {steps[i]: _sigma1_G(store, steps[i], gdata) for i in gwin}
    return {
        "steps": steps, "lr": lr, "delta": delta, "batch": int(cfg["train"]["batch"]), "fixed_set": _fixed(cfg), "cos_end": cos_end, "F_window": fwin, "cos_QK_Fbar": cos_bar, "n_series": n_series,
        "F_sample": "the training set" if _fixed(cfg) else (f"{n_pop} fresh sequences (seed {POP_SEED}), averaged over "
                                                            f"the checkpoints {fwin[0]}..{fwin[-1]}"), "score_scale": scale, "cos_QK_F": cos, "misalignment": mis,
        "sigma1_F": [s[0].item() for s in sv], "sigma2_F": [s[1].item() for s in sv], "norm_W_Q": nq, "norm_W_K": nk,
        "norm_outer": outer_norm, "rel_change_outer": rel_outer, "t1": steps[i1], "t_end": steps[i_end],
        "i1": i1, "i_end": i_end, "growth_window": [steps[i] for i in grow], "growth_rate": rate, "sigma1_window": s1,
        "misalignment_window": [steps[i] for i in mwin], "misalignment_decay": decay, "sigma_gap_window": gap,
        "eps_attn": float(eps_attn), "t_leave": t_leave, "t_leave_pred": float(np.log(1 / eps_attn) / s1_end),
        "sigma1_end": s1_end, "outer_angle_per_step_max": max(ang) if ang else float("nan"),
        "outer_angle_per_step": ang, "attn_over_outer_norm_t1": (nq[i1] + nk[i1]) / outer_norm[i1],
        "attn_over_outer_norm_end": (nq[i_end] + nk[i_end]) / outer_norm[i_end],
        "grad_ratio_outer_over_attn": gratio, "grad_ratio_end": gratio[steps[i_end]], "sigma1_G": sG,
        "outer_angle_total": _angle(wvec[grow[0] if grow else i1], wvec[i_end]),
        "sigma1_G_window": float(np.mean(list(sG.values()))) if sG else float("nan"),
    }


def misalignment_window(mis: list[float], i1: int, i_end: int, hi: float = 0.9) -> list[int]:
    """Checkpoint indices of the misalignment-decay fit: the first contiguous stretch of [i1, i_end] with
    2 x floor <= mis <= ``hi`` (floor = min of mis over [i1, i_end]), i.e. the decay before mis first reaches
    its floor; later stretches (plateaus after the floor) are left out."""
    floor = min(mis[i1: i_end + 1])
    ok = [2 * floor <= mis[i] <= hi for i in range(i1, i_end + 1)]
    if not any(ok):
        return []
    start = i1 + ok.index(True)
    stop = start
    while stop + 1 <= i_end and ok[stop + 1 - i1]:
        stop += 1
    return list(range(start, stop + 1))


def _fresh_chunks(cfg: dict, n: int, chunk: int = 16384, seed: int = POP_SEED + 1) -> list:
    task, g = _fresh_task(cfg), torch.Generator().manual_seed(seed)
    out = []
    for _ in range(max(1, n // chunk)):
        tok, y = task.batch(min(chunk, n), g)
        out.append((tok, y.double()))
    return out


def _sigma1_G(store: RunStore, step: int, chunks: list) -> float:
    """sigma1 of G = -dL/d(W_Q W_K^T) by autograd, the mean over equal-size data chunks."""
    from sslens.analyses.qk_gradient import qk_gradient
    from sslens.losses import last_token_exp

    model = store.load_model(step)
    G = sum(qk_gradient(model, t, y, last_token_exp)[0, 0] for t, y in chunks) / len(chunks)
    return torch.linalg.matrix_norm(G, ord=2).item()


def init_std_of(model_cfg: dict) -> float:
    from sslens.models.rank_collapse import init_std

    return init_std(model_cfg["d"], model_cfg.get("gamma"), model_cfg.get("eps"))


def _tokens(store: RunStore, n_data: int) -> Tensor:
    task = build_task(store.read_config()["task"])
    fixed = task.training_set() if hasattr(task, "training_set") else None
    return (fixed if fixed is not None else task.batch(n_data, torch.Generator().manual_seed(12345)))[0]


def _angle(a: Tensor, b: Tensor) -> float:
    return float(torch.arccos((torch.dot(a, b) / (a.norm() * b.norm())).clamp(-1, 1)))


def _alignment_on(store: RunStore, step: int, window: list[int], sample: list) -> float:
    """cos(W_Q W_K^T at ``step``, u1 v1^T of the mean of F over the checkpoints ``window`` on ``sample``)."""
    s = store.read_config()["task"]["seq_len"]
    F = sum(population_F(store.load_checkpoint(t)[0], sample, s) for t in window) / len(window)
    w = weights(store.load_checkpoint(step)[0])
    return rank.rank1_alignment(w["W_Q"] @ w["W_K"].T, *_uv(F)).item()


def alignment_fresh(run_dir, step: int, window: list[int], n: int = N_POP, seed: int = 777) -> float:
    """cos(W_Q W_K^T at ``step``, u1 v1^T of F averaged over the checkpoints ``window``) with F on ``n`` fresh
    sequences drawn with ``seed`` (independent of ``stage2``'s sample): the reported alignment recomputed."""
    store = RunStore(run_dir)
    return _alignment_on(store, step, window, token_sample(_fresh_task(store.read_config()), n, seed))
