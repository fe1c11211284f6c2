"""Scan&Snap closed forms (theory.md 1.3): h, gamma (Thm 1), B_n and chi (Thm 4), t0, Thm 3 and Thm 2.

Time ``t`` is in optimizer steps with per-step rates eta_Y, eta_Z (gradient flow with dt = 1 step).
All functions are vectorised over ``t`` (numpy arrays or scalars, float64).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def h(s: ArrayLike, M: int, eta_Y: float, iters: int = 200) -> np.ndarray:
    """h(s) solving e^{M h} + (M-1) M h = M eta_Y s + 1 (Thm 1), by bisection (the left side is increasing).

    Bracket: 0 <= h <= min((R-1)/((M-1)M), ln(R)/M) with R = M eta_Y s + 1, since e^{Mh} >= 1 and (M-1)Mh >= 0.
    """
    s = np.asarray(s, dtype=np.float64)
    R = M * eta_Y * s + 1.0
    lo = np.zeros_like(R)
    hi = np.minimum((R - 1.0) / ((M - 1) * M), np.log(R) / M)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        f = np.exp(M * mid) + (M - 1) * M * mid - R
        lo = np.where(f < 0, mid, lo)
        hi = np.where(f < 0, hi, mid)
    return 0.5 * (lo + hi)


def gamma(t: ArrayLike, M: int, K: int, eta_Y: float) -> np.ndarray:
    """gamma(t) = (M-1)^2 h(t/K) / ((M-1) + e^{M h(t/K)}) (Thm 1): grows ~ eta_Y t / K, then decays."""
    hh = h(np.asarray(t, dtype=np.float64) / K, M, eta_Y)
    return (M - 1) ** 2 * hh / ((M - 1) + np.exp(M * hh))


def snap_time(M: int, K: int, eta_Y: float) -> float:
    """t0 = 2 K ln M / eta_Y (Thm 4; the (1 + o(1)) factor dropped): attention freezes after t0."""
    return 2.0 * K * np.log(M) / eta_Y


def scan_time(M: int, K: int, eta_Y: float) -> float:
    """t0' = K ln M / eta_Y: end of the scan phase where B_n grows like O(ln t)."""
    return K * np.log(M) / eta_Y


def B_n(t: ArrayLike, M: int, K: int, eta_Y: float, eta_Z: float, C0: float = 1.0) -> np.ndarray:
    """B_n(t) = 1/4 ln(C0 + 2 (eta_Z/eta_Y) K (M-1)^2 h^2(t/K)) (Thm 4).

    C0 = rho0^4 / K is the paper's constant of integration; the default C0 = 1 makes B_n(0) = 0, i.e.
    B_n is the attention logit gained since t = 0.
    """
    hh = h(np.asarray(t, dtype=np.float64) / K, M, eta_Y)
    return 0.25 * np.log(C0 + 2.0 * (eta_Z / eta_Y) * K * (M - 1) ** 2 * hh**2)


def chi(t: ArrayLike, M: int, K: int, eta_Y: float, eta_Z: float, C0: float = 1.0) -> np.ndarray:
    """chi(t) = e^{2 Delta z} of the dominant token with Delta z = B_n (Thm 4): ~t while scanning, O(ln t) after the snap."""
    return np.exp(2.0 * B_n(t, M, K, eta_Y, eta_Z, C0))


def thm3_z_from_one(z_ref: ArrayLike, P_ref: float, P: ArrayLike) -> np.ndarray:
    """Thm 3 from zero init: 1 - e^{-2 z_l} = (P_l / P_ref)^2 (1 - e^{-2 z_ref}) -> every distinct token's z.

    Returns +inf where the right side reaches 1 (z_l diverges before z_ref gets there).
    """
    rhs = (np.asarray(P, dtype=np.float64) / P_ref) ** 2 * (1.0 - np.exp(-2.0 * np.asarray(z_ref, dtype=np.float64)))
    with np.errstate(divide="ignore"):
        return np.where(rhs < 1.0, -0.5 * np.log1p(-np.minimum(rhs, 1.0)), np.inf)


def thm3_invariant(dz: ArrayLike, P: ArrayLike) -> np.ndarray:
    """(1 - e^{-2 dz_l}) / P(l|n)^2: the same for every distinct token of a class (Thm 3, zero init)."""
    dz = np.asarray(dz, dtype=np.float64)
    return -np.expm1(-2.0 * dz) / np.asarray(P, dtype=np.float64) ** 2


def thm2_signs(distinct_mask: ArrayLike) -> np.ndarray:
    """Thm 2: sign of dz_ml/dt: +1 for a distinct token, -1 for a common token."""
    return np.where(np.asarray(distinct_mask, dtype=bool), 1, -1)
