"""Scan&Snap closed forms (docs/theory.md §1.3): h, gamma (Thm 1), B_n and chi (Thm 4), t0, Thm 3 and Thm 2.

Time ``t`` is gradient-flow time with per-unit rates eta_Y, eta_Z: for plain SGD one step is one unit
of t. For SGD with heavy-ball momentum see :func:`momentum_time` (steps -> gradient-flow time).
All functions are vectorised over ``t`` / token arrays (numpy, float64) and accept scalars.

Choices where docs/theory.md is silent (also in docs/scan_snap.md):
- B_n's constant of integration C0 = rho0^4/K is not fixed by the paper for a given run; the default
  C0 = 1 makes B_n(0) = 0 and chi(0) = 1, i.e. B_n is the logit gained since t = 0 (zero init).
- chi(t) = e^{2 B_n(t)}: the dominant token's growth factor e^{2 Delta z} with Delta z = B_n.
- t0 drops the (1 + o(1)) factor: t0 = 2 K ln M / eta_Y.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from sslens.errors import require


def _check(M: int, K: int | None = None, eta_Y: float | None = None, eta_Z: float | None = None) -> None:
    require(int(M) == M and M >= 2, "M", f"got {M!r}", "an int >= 2")
    if K is not None:
        require(int(K) == K and K >= 1, "K", f"got {K!r}", "an int >= 1")
    if eta_Y is not None:
        require(np.isfinite(eta_Y) and eta_Y > 0, "eta_Y", f"got {eta_Y!r}", "a finite rate > 0")
    if eta_Z is not None:
        require(np.isfinite(eta_Z) and eta_Z >= 0, "eta_Z", f"got {eta_Z!r}", "a finite rate >= 0")


def _times(t: ArrayLike, name: str = "t") -> np.ndarray:
    t = np.asarray(t, dtype=np.float64)
    require(bool(np.all(np.isfinite(t) & (t >= 0))), name, "negative or non-finite time", "finite values >= 0")
    return t


def h(s: ArrayLike, M: int, eta_Y: float, iters: int = 200) -> np.ndarray:
    """h(s) solving e^{M h} + (M-1) M h = M eta_Y s + 1 (Thm 1), by vectorised bisection.

    The left side is strictly increasing in h, so the root is unique. Bracket: 0 <= h <=
    min((R-1)/((M-1)M), ln(R)/M) with R = M eta_Y s + 1 (each term of the left side is >= its floor).
    200 halvings reach float64 resolution for any bracket; no derivative, so no divergence.
    """
    _check(M, eta_Y=eta_Y)
    s = _times(s, "s")
    R = M * eta_Y * s + 1.0
    lo = np.zeros_like(R)
    hi = np.minimum((R - 1.0) / ((M - 1) * M), np.log(R) / M)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        f = np.exp(M * mid) + (M - 1) * M * mid - R
        lo = np.where(f < 0, mid, lo)
        hi = np.where(f < 0, hi, mid)
    return np.asarray(0.5 * (lo + hi))


def gamma(t: ArrayLike, M: int, K: int, eta_Y: float) -> np.ndarray:
    """gamma(t) = (M-1)^2 h(t/K) / ((M-1) + e^{M h(t/K)}) (Thm 1): grows ~ eta_Y t / K, then decays."""
    _check(M, K, eta_Y)
    hh = h(_times(t) / K, M, eta_Y)
    return np.asarray((M - 1) ** 2 * hh / ((M - 1) + np.exp(M * hh)))


def snap_time(M: int, K: int, eta_Y: float) -> float:
    """t0 = 2 K ln M / eta_Y (Thm 4; the (1 + o(1)) factor dropped): attention freezes after t0."""
    _check(M, K, eta_Y)
    return 2.0 * K * np.log(M) / eta_Y


def scan_time(M: int, K: int, eta_Y: float) -> float:
    """t0' = K ln M / eta_Y: end of the scan phase where B_n grows like O(ln t)."""
    _check(M, K, eta_Y)
    return K * np.log(M) / eta_Y


def B_n(t: ArrayLike, M: int, K: int, eta_Y: float, eta_Z: float, C0: float = 1.0) -> np.ndarray:
    """B_n(t) = 1/4 ln(C0 + 2 (eta_Z/eta_Y) K (M-1)^2 h^2(t/K)) (Thm 4).

    C0 = rho0^4 / K is the paper's constant of integration; the default C0 = 1 makes B_n(0) = 0, i.e.
    B_n is the attention logit gained since t = 0.
    """
    _check(M, K, eta_Y, eta_Z)
    require(C0 > 0, "C0", f"got {C0!r}", "> 0")
    hh = h(_times(t) / K, M, eta_Y)
    return np.asarray(0.25 * np.log(C0 + 2.0 * (eta_Z / eta_Y) * K * (M - 1) ** 2 * hh**2))


def chi(t: ArrayLike, M: int, K: int, eta_Y: float, eta_Z: float, C0: float = 1.0) -> np.ndarray:
    """chi(t) = e^{2 B_n(t)} (Thm 4, Fig. 3): ~t while scanning, O(ln t) after the snap."""
    return np.asarray(np.exp(2.0 * B_n(t, M, K, eta_Y, eta_Z, C0)))


def momentum_time(steps: ArrayLike, momentum: float) -> np.ndarray:
    """Gradient-flow time reached after ``steps`` steps of torch SGD with heavy-ball momentum beta.

    Under a constant gradient, step j moves (1 - beta^j)/(1 - beta) times a plain step, so
    tau(k) = sum_{j=1..k} (1 - beta^j)/(1 - beta) = (k - beta (1 - beta^k)/(1 - beta)) / (1 - beta);
    tau(k) = k for beta = 0 and ~ k/(1 - beta) for large k. (sslens' choice; the paper states its
    theory for gradient flow and runs its experiments with momentum 0.9.)
    """
    require(0 <= momentum < 1, "momentum", f"got {momentum!r}", "0 <= momentum < 1")
    k = _times(steps, "steps")
    if momentum == 0:
        return k
    b = momentum
    return np.asarray((k - b * (1 - b**k) / (1 - b)) / (1 - b))


def steps_for_time(tau: float, momentum: float) -> float:
    """Inverse of :func:`momentum_time`: the (fractional) step count at which gradient-flow time is ``tau``."""
    if momentum == 0:
        return float(tau)
    require(np.isfinite(tau) and tau >= 0, "tau", f"got {tau!r}", "a finite time >= 0")
    lo, hi = 0.0, float(tau) + 1.0  # momentum_time is increasing; widen hi until it brackets tau
    while momentum_time(hi, momentum) < tau:
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if momentum_time(mid, momentum) < tau else (lo, mid)
    return float(0.5 * (lo + hi))


def thm3_z_from_one(z_ref: ArrayLike, P_ref: float, P: ArrayLike) -> np.ndarray:
    """Thm 3 from zero init: 1 - e^{-2 z_l} = (P_l / P_ref)^2 (1 - e^{-2 z_ref}) -> every distinct token's z.

    Returns +inf where the right side reaches 1 (z_l diverges before z_ref gets there).
    """
    rhs = (np.asarray(P, dtype=np.float64) / P_ref) ** 2 * (1.0 - np.exp(-2.0 * np.asarray(z_ref, dtype=np.float64)))
    with np.errstate(divide="ignore"):
        return np.where(rhs < 1.0, -0.5 * np.log1p(-np.minimum(rhs, 1.0)), np.inf)


def thm3_z_general(
    z_ref: ArrayLike, z_ref0: float, P_ref: float, P: ArrayLike, z0: ArrayLike
) -> np.ndarray:
    """Thm 3, general init: f_l^2/f_ref^2 - 1 = (f_l^2(0)/f_ref^2(0) - 1) e^{2 (z_l(t) - z_l(0))}.

    With f_l proportional to c_l = P_l e^{z_l} / sum, write a = (P_l/P_ref)^2 e^{-2 z_ref(t)} and
    b = (r0^2 - 1) e^{-2 z_l(0)}, r0 = (P_l/P_ref) e^{z_l(0) - z_ref(0)}; then e^{2 z_l(t)} = 1/(a - b).
    Reduces to :func:`thm3_z_from_one` at zero init. +inf where a <= b (z_l would have diverged).
    """
    z_ref = np.asarray(z_ref, dtype=np.float64)
    P = np.asarray(P, dtype=np.float64)
    z0 = np.asarray(z0, dtype=np.float64)
    r0sq = (P / P_ref) ** 2 * np.exp(2.0 * (z0 - z_ref0))
    a = (P / P_ref) ** 2 * np.exp(-2.0 * z_ref)
    b = (r0sq - 1.0) * np.exp(-2.0 * z0)
    d = a - b
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(d > 0, -0.5 * np.log(np.where(d > 0, d, 1.0)), np.inf)


def thm3_invariant(dz: ArrayLike, P: ArrayLike) -> np.ndarray:
    """(1 - e^{-2 dz_l}) / P(l|n)^2: the same for every distinct token of a class (Thm 3, zero init)."""
    dz = np.asarray(dz, dtype=np.float64)
    return -np.expm1(-2.0 * dz) / np.asarray(P, dtype=np.float64) ** 2


def thm2_signs(distinct_mask: ArrayLike) -> np.ndarray:
    """Thm 2: sign of dz_ml/dt: +1 for a distinct token, -1 for a common token."""
    return np.where(np.asarray(distinct_mask, dtype=bool), 1, -1)
