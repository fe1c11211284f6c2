"""Rank metrics of matrices (docs/theory.md Part 3) and their trajectories over a recording.

All functions take a batch of matrices ``[..., m, n]`` and use the singular values s_1 >= s_2 >= ...
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor


def _ratio(a: Tensor, b: Tensor) -> Tensor:
    """A / b, and 0 where b = 0 (the zero matrix has rank 0 by every measure here)."""
    return torch.where(b > 0, a / b.clamp_min(torch.finfo(b.dtype).tiny), torch.zeros_like(a))


def singular_values(A: Float[Tensor, "... m n"]) -> Float[Tensor, "... k"]:
    """Singular values in float64, descending."""
    return torch.linalg.svdvals(A.to(torch.float64))


def effective_rank(A: Float[Tensor, "... m n"]) -> Float[Tensor, "..."]:
    """Roy & Vetterli (2007): p_k = s_k / sum s, erank = exp(-sum p_k log p_k)."""
    s = singular_values(A)
    tot = s.sum(-1, keepdim=True)
    p = s / tot.clamp_min(torch.finfo(s.dtype).tiny)
    return torch.where(tot[..., 0] > 0, torch.exp(-torch.xlogy(p, p).sum(-1)), torch.zeros_like(tot[..., 0]))


def stable_rank(A: Float[Tensor, "... m n"]) -> Float[Tensor, "..."]:
    """||A||_F^2 / ||A||_2^2."""
    s = singular_values(A)
    return _ratio((s**2).sum(-1), s[..., 0] ** 2)


def numerical_rank(A: Float[Tensor, "... m n"], tau: float = 1e-6) -> Tensor:
    """#{s_i > tau * s_1}."""
    s = singular_values(A)
    return (s > tau * s[..., :1]).sum(-1)


def top1_energy(A: Float[Tensor, "... m n"]) -> Float[Tensor, "..."]:
    """s_1^2 / sum s_i^2."""
    s = singular_values(A)
    return _ratio(s[..., 0] ** 2, (s**2).sum(-1))


def top_singular_pair(A: Float[Tensor, "... m n"]) -> tuple[Tensor, Tensor, Tensor]:
    """u_1, s_1, v_1 of A."""
    U, S, Vh = torch.linalg.svd(A.to(torch.float64), full_matrices=False)
    return U[..., :, 0], S[..., 0], Vh[..., 0, :]


def distance_to_rank1(A: Float[Tensor, "... m n"]) -> Float[Tensor, "..."]:
    """||A/||A||_F - u1 v1^T||_F (0 iff A has rank one)."""
    A = A.to(torch.float64)
    u, _, v = top_singular_pair(A)
    An = A / torch.linalg.matrix_norm(A, keepdim=True)
    return torch.linalg.matrix_norm(An - u[..., :, None] * v[..., None, :])


def rank1_alignment(A: Float[Tensor, "... m n"], u: Float[Tensor, "... m"], v: Float[Tensor, "... n"]) -> Float[Tensor, "..."]:
    """|<A/||A||_F, u v^T>| for unit u, v: cosine between A and the rank-one target u v^T (CR Thm 3)."""
    A = A.to(torch.float64)
    u = u.to(torch.float64) / u.norm(dim=-1, keepdim=True)
    v = v.to(torch.float64) / v.norm(dim=-1, keepdim=True)
    inner = torch.einsum("...m,...mn,...n->...", u, A, v)
    return inner.abs() / torch.linalg.matrix_norm(A)


METRICS = {
    "effective_rank": effective_rank,
    "stable_rank": stable_rank,
    "numerical_rank": numerical_rank,
    "top1_energy": top1_energy,
    "distance_to_rank1": distance_to_rank1,
}


@dataclass
class RankTrajectory:
    """Rank metrics of named matrices over steps: ``values[name][metric]`` is ``[n_steps, ...]``."""

    steps: list[int]
    values: dict[str, dict[str, Tensor]]

    def plot(self, metric: str = "effective_rank", ax=None):
        """One line per matrix (and head) of ``metric`` against step (linear axis for evenly spaced steps, else log); the Axes.

        Without ``ax`` a new pyplot figure is made (shown inline in notebooks); the backend is left alone.
        """
        from sslens.analyses.report import legend, step_axis

        if ax is None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(figsize=(5, 3.2), layout="constrained")
        for name, ms in self.values.items():
            v = ms[metric].reshape(len(self.steps), -1)
            for h in range(v.shape[1]):
                ax.plot(self.steps, v[:, h].float().numpy(), label=name if v.shape[1] == 1 else f"{name}[{h}]")
        step_axis(ax, self.steps)
        ax.set_xlim(left=min(self.steps, default=0))
        ax.set_ylabel(metric.replace("_", " "))
        legend(ax, fontsize=7)
        return ax


def trajectory(source, names: list[str] | None = None, metrics: list[str] | None = None) -> RankTrajectory:
    """Rank metrics of recorded matrices (default: every ``*.QK`` and ``*.OV``) over the recorded steps.

    ``source`` is a run directory, a :class:`sslens.store.RunStore`, a ``CircuitRecorder`` or a ``Recording``.
    """
    from sslens.hooks.recorder import Recording

    rec = source if isinstance(source, Recording) else Recording(source)
    names = names or [k for k in rec.keys() if k.endswith(".QK") or k.endswith(".OV")]
    metrics = metrics or list(METRICS)
    values = {}
    for name in names:
        A = rec.get(name)
        values[name] = {m: METRICS[m](A) for m in metrics}
    return RankTrajectory(rec.steps, values)
