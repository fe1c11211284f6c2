"""Gradient descent on the Y/Z model's population loss in the long-sequence limit (T -> infinity).

Each class enters with its expected counts P(.|n) (scale-free: b = P e^z / sum = c_n exactly, docs/theory.md
§1.3) and classes weigh equally, so ``counts.loss_from_counts`` on the K classes is the population loss
E_n[CE] and a step of plain gradient descent is one unit of gradient-flow time at rates eta_Y, eta_Z (no
sampling noise; Thm 4's setting). R runs (one per eta_Y) are batched; zero init.
"""

from __future__ import annotations

import numpy as np
import torch

from sslens.data.sequence_classes import SequenceClassSpec
from sslens.engine.counts import loss_from_counts
from sslens.errors import require


def population_descent(spec: SequenceClassSpec, eta_Y: list[float], eta_Z: float, steps: int, every: int = 1,
                       keep_c: bool = False) -> dict:
    """Plain GD from Z = Y = 0 for each eta_Y in ``eta_Y`` (float64).

    Returns ``steps`` (the recorded steps, every ``every`` and the last), ``speed`` [n_rec - 1, R, K] = TV(c_n(s_i),
    c_n(s_{i-1})) / (s_i - s_{i-1}) (the snap rule's speed, ``analyses.scan_snap_checks.snap_step``), ``dz_top``
    [n_rec, R, K] = z of each class's most likely distinct token (log chi = 2 dz_top), ``loss`` [n_rec, R], ``gamma``
    [n_rec, R, K] = the back-propagated signal of Thm 1 (``thm1_gamma``), and with ``keep_c`` ``c`` [n_rec, R, K, M].
    """
    require(len(eta_Y) >= 1 and all(e > 0 for e in eta_Y), "eta_Y", f"got {eta_Y!r}", "one or more rates > 0")
    require(eta_Z >= 0, "eta_Z", f"got {eta_Z!r}", "a rate >= 0 (0: attention frozen, Thm 1's limit)")
    require(isinstance(steps, int) and steps >= 1, "steps", f"got {steps!r}", "an int >= 1")
    R, K, M = len(eta_Y), spec.K, spec.M
    P = spec.P()
    logP = torch.log(P)  # -inf off each class's support
    counts = P.expand(R, K, M)
    require(len(set(spec.queries)) == K, "spec", "classes share a query token", "one query token per class")
    query = torch.arange(K).expand(R, K)  # Z holds the K query rows only (the others never get a gradient)
    target = torch.tensor(spec.nexts).expand(R, K)
    top = torch.tensor([d[int(np.argmax(P[k, d].numpy()))] for k, d in enumerate(spec.distinct)])
    Z = torch.zeros(R, K, M, dtype=torch.float64, requires_grad=True)
    Y = torch.zeros(R, M, M, dtype=torch.float64, requires_grad=True)
    eY = torch.tensor(eta_Y, dtype=torch.float64)[:, None, None]
    rec, speed, dz, losses, cs, gam, prev = [], [], [], [], [], [], None
    for s in range(steps + 1):
        loss = loss_from_counts(Z, Y, counts, query, target)
        if s % every == 0 or s == steps:
            with torch.no_grad():
                c = torch.softmax(Z + logP, dim=-1)  # [R, K, M]: c_n of theory.c_n.composition on the query rows
                if prev is not None:
                    speed.append((0.5 * (c - prev).abs().sum(-1) / (s - rec[-1])).numpy())
                rec.append(s)
                prev = c
                dz.append(Z[:, torch.arange(K), top].numpy().copy())
                gam.append(thm1_gamma(c, Y.detach(), target[0]).numpy())
                losses.append(loss.detach().numpy().copy())
                if keep_c:
                    cs.append(c)
        if s == steps:
            break
        gZ, gY = torch.autograd.grad(loss.sum(), (Z, Y))
        with torch.no_grad():
            Z -= eta_Z * gZ
            Y -= eY * gY
    out = {"steps": rec, "speed": np.stack(speed) if speed else np.zeros((0, R, K)), "dz_top": np.stack(dz),
           "loss": np.stack(losses), "gamma": np.stack(gam)}
    if keep_c:
        out["c"] = torch.stack(cs)
    return out


def thm1_gamma(c: torch.Tensor, Y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Thm 1's gamma measured: -(M-1)/M <g_n, f_n>, g_n = dCE_n/df_n = Y (softmax(Y^T f_n) - e_n), f_n = c_n/||c_n||.

    With Z frozen, orthonormal f_n and Y(0) = 0, Y = sum_k f_k u_k^T and g_n = (M gamma / (M-1)) (-f_n + sum_{k != n}
    f_k / (M-1)) exactly (docs/scan_snap.md "Theorem 1"). c [R, K, M], Y [R, M, M], target [K] -> [R, K].
    """
    with torch.no_grad():
        M = c.shape[-1]
        f = c / c.norm(dim=-1, keepdim=True)
        p = torch.softmax(torch.bmm(f, Y), dim=-1)  # [R, K, M]: (Y^T f_n)^T
        p[:, torch.arange(c.shape[1]), target] -= 1.0
        g = torch.bmm(p, Y.transpose(1, 2))  # [R, K, M]: (Y (p - e))^T
        return -(M - 1) / M * (g * f).sum(-1)
