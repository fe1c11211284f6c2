"""Per-head metrics of attention circuits and patterns, shared by every analysis in sslens.

Pure tensor functions (no model, no files): singular values of factored circuits, rank metrics from
singular values (``analyses/rank.py``, docs/theory.md §3), attention entropy (Scan&Snap Fig. 10),
attention mass by key token, previous-token and prefix-matching (induction) scores from
TransformerLens's ``head_detector`` detection patterns, eigenvalue scores of the induction-heads work
(Elhage et al. 2021; Olsson et al. 2022), head composition scores (``transformer_lens.utils``), and a
condensation index of MLP neurons (Chen & Luo; docs/theory.md §3).
"""

from __future__ import annotations

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from sslens.analyses import rank

RANK_METRICS = ("effective_rank", "stable_rank", "top1_energy")


def attention_entropy(pattern: Float[Tensor, "probe head q k"]) -> Float[Tensor, " head"]:
    """-sum_j a_ij log(a_ij + 1e-8), mean over probe sequences and query positions (Scan&Snap Fig. 10).

    The one entropy of attention in sslens; computed in float32 at least (bf16 patterns are cast).
    """
    p = pattern.float() if pattern.dtype in (torch.bfloat16, torch.float16) else pattern
    return -(p * torch.log(p + 1e-8)).sum(-1).mean(dim=(0, 2))


def repeat_kv(W: Tensor, n_heads: int) -> Tensor:
    """Grouped-query attention: K/V weights ``[kv_head, ...]`` repeated to ``[head, ...]``.

    As TransformerLens does it (``repeat_interleave`` on the head dim).
    """
    if W.shape[0] == n_heads:
        return W
    return torch.repeat_interleave(W, n_heads // W.shape[0], dim=0)


def factored_singular_values(
    A: Float[Tensor, "... m r"], B: Float[Tensor, "... r n"]
) -> Float[Tensor, "... r"]:
    """Singular values of ``A @ B`` (e.g. QK = W_Q W_K^T, OV = W_V W_O) without forming the m x n product.

    A = Q_a R_a and B^T = Q_b R_b (thin QR), so A B = Q_a (R_a R_b^T) Q_b^T: the singular values are those
    of the r x r core. float64 throughout.
    """
    A, B = A.to(torch.float64), B.to(torch.float64)
    Ra = torch.linalg.qr(A, mode="r").R
    Rb = torch.linalg.qr(B.transpose(-2, -1), mode="r").R
    return torch.linalg.svdvals(Ra @ Rb.transpose(-2, -1))


def rank_metrics(s: Float[Tensor, "... k"]) -> dict[str, Tensor]:
    """Effective rank (Roy & Vetterli), stable rank and top-1 energy from singular values ``s``.

    Reuses ``analyses/rank.py`` on diag(s) (whose singular values are s), so the definitions stay in one
    place (docs/theory.md §3).
    """
    D = torch.diag_embed(s.to(torch.float64).abs())
    return {m: rank.METRICS[m](D) for m in RANK_METRICS}


def eigenvalue_score(eig: Tensor) -> Tensor:
    """Eigenvalue score sum_i lambda_i / sum_i |lambda_i| (real part), docs/theory.md §3.6.

    +1 for a positive (copying / matching) circuit, -1 for a negative one (Elhage et al. 2021,
    "Summarizing OV/QK matrices"). 0 for the zero matrix.
    """
    num = eig.sum(-1).real if eig.is_complex() else eig.sum(-1)
    den = eig.abs().sum(-1)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(den)).to(torch.float64)


def detection_patterns(tokens: Int[Tensor, "probe pos"]) -> dict[str, Float[Tensor, "probe pos pos"]]:
    """TransformerLens ``head_detector`` detection patterns per probe sequence.

    Previous-token, duplicate-token and induction (the duplicate pattern shifted right by one: attend to the
    token after the previous occurrence of the current token, i.e. Olsson et al.'s prefix-matching target).
    """
    from transformer_lens import head_detector as hd

    toks = tokens.detach().cpu()
    out = {"prev_token": [], "duplicate_token": [], "prefix_matching": []}
    for t in toks:
        out["prev_token"].append(hd.get_previous_token_head_detection_pattern(t))
        out["duplicate_token"].append(hd.get_duplicate_token_head_detection_pattern(t))
        out["prefix_matching"].append(hd.get_induction_head_detection_pattern(t))
    return {k: torch.stack(v) for k, v in out.items()}


def detection_scores(
    pattern: Float[Tensor, "probe head q k"], tokens: Int[Tensor, "probe pos"], dets: dict | None = None
) -> dict[str, Float[Tensor, " head"]]:
    """Attention mass on each detection pattern's targets.

    Averaged over the query positions that have a target (so a perfect head scores 1 whatever the probe length;
    NaN when no position has one).

    On a repeated-random-tokens probe ``prefix_matching`` is the prefix-matching score of Olsson et al.
    (2022) and ``prev_token`` the previous-token score.
    """
    dets = detection_patterns(tokens) if dets is None else dets
    p = pattern.to(torch.float64)
    out = {}
    for name, det in dets.items():
        det = det.to(torch.float64)
        has = det.sum(-1) > 0  # [probe, q]
        mass = einops.einsum(p, det, "b h q k, b q k -> b h q")
        n = has.sum()
        nan = torch.full((p.shape[1],), float("nan"), dtype=torch.float64)
        out[name] = (mass * has[:, None, :]).sum(dim=(0, 2)) / n if n > 0 else nan
    return out


def key_token_mass(
    pattern: Float[Tensor, "probe head q k"], tokens: Int[Tensor, "probe pos"], vocab: Int[Tensor, " t"]
) -> Float[Tensor, "head t"]:
    """Attention mass that each head puts on keys holding each token id of ``vocab``.

    Averaged over probe sequences and query positions (sums to 1 over all token ids of the probe).
    """
    p = pattern.to(torch.float64).mean(2)  # [probe, head, k]
    idx = torch.searchsorted(vocab, tokens.to(vocab.dtype))  # vocab is sorted and holds every probe token
    out = torch.zeros(p.shape[0], p.shape[1], vocab.numel(), dtype=torch.float64)
    out.scatter_add_(2, einops.repeat(idx, "b k -> b h k", h=p.shape[1]), p)
    return out.mean(0)


def composition_scores(
    W_Q: Float[Tensor, "layer head d_model d_head"],
    W_K: Float[Tensor, "layer head d_model d_head"],
    W_V: Float[Tensor, "layer head d_model d_head"],
    W_O: Float[Tensor, "layer head d_head d_model"],
) -> dict[str, Float[Tensor, "layer head layer head"]]:
    """Q-, K- and V-composition scores of every head pair, exactly as ``HookedTransformer.all_composition_scores``.

    ``transformer_lens.utils.composition_scores(OV, right)`` on FactoredMatrix circuits, zero unless the
    right head's layer is later than the left head's (Elhage et al. 2021).
    """
    from transformer_lens import FactoredMatrix

    QK = FactoredMatrix(W_Q.to(torch.float64), W_K.to(torch.float64).transpose(-2, -1))
    OV = FactoredMatrix(W_V.to(torch.float64), W_O.to(torch.float64))
    return _composition(QK, OV)


def composition_scores_dense(
    QK: Float[Tensor, "layer head d_model d_model"], OV: Float[Tensor, "layer head d_model d_model"]
) -> dict[str, Float[Tensor, "layer head layer head"]]:
    """:func:`composition_scores` from dense circuits.

    ||OV_1 R_2||_F / (||OV_1||_F ||R_2||_F), the quantity
    ``transformer_lens.utils.composition_scores`` computes (its SVD collapse keeps Frobenius norms), without
    the d_model x d_model SVDs a FactoredMatrix of a dense matrix would run.
    """
    QK, OV = QK.to(torch.float64), OV.to(torch.float64)
    L = QK.shape[0]
    mask = torch.arange(L)[:, None, None, None] < torch.arange(L)[None, None, :, None]
    nOV = torch.linalg.matrix_norm(OV)
    out = {}
    for mode, right in (("Q", QK), ("K", QK.transpose(-2, -1)), ("V", OV)):
        prod = torch.zeros(mask.shape[0], OV.shape[1], *right.shape[:2], dtype=torch.float64)
        for l1 in range(L - 1):  # one left head at a time: memory of one [layer, head, d, d] product
            for h1 in range(OV.shape[1]):
                prod[l1, h1, l1 + 1:] = torch.linalg.matrix_norm(OV[l1, h1] @ right[l1 + 1:])
        s = prod / nOV[:, :, None, None] / torch.linalg.matrix_norm(right)[None, None]
        out[mode] = torch.where(mask, s, torch.zeros_like(s))
    return out


def _composition(QK, OV) -> dict[str, Tensor]:
    from transformer_lens import utilities as tl_utils  # both lines (4.x removed transformer_lens.utils)

    L = QK.shape[0]
    mask = torch.arange(L)[:, None, None, None] < torch.arange(L)[None, None, :, None]
    out = {}
    for mode, right in (("Q", QK), ("K", QK.T), ("V", OV)):
        s = tl_utils.composition_scores(OV, right, broadcast_dims=True)
        out[mode] = torch.where(mask, s, torch.zeros_like(s))
    return out


def condensation_index(W_in: Float[Tensor, "d_model d_mlp"]) -> float:
    """Condensation index lambda_max(C) / n of the neurons' cosine matrix C (``analyses/condensation.py``).

    1 when every neuron's input weights lie on one line (full condensation), about 1/n + O(1/sqrt(d)) for random neurons.
    """
    from sslens.analyses.condensation import cosine_matrix

    C = cosine_matrix(W_in.T)
    return (torch.linalg.eigvalsh(C)[-1] / C.shape[0]).item()
