"""The one definition of every per-head metric in sslens (docs/analysis.md "Metric names").

Pure tensor functions (no model, no files), shared by the recorder (``sslens.hooks.recorder``), the series
analysis (``sslens.analyses.series``) and the batched checkpoint path (``sslens.analyses.batched``); every
function takes ``...``-leading shapes, so a stack of checkpoints goes through the same code as one state.

Metric names follow TransformerLens where it has one (``head_detector``'s ``previous_token_head``,
``duplicate_token_head``, ``induction_head``; ``all_composition_scores``): :data:`HEAD_SCORES`.
References: attention entropy (Scan&Snap Fig. 10), detection scores (TransformerLens ``head_detector``; the
induction target is Olsson et al. 2022's prefix matching), eigenvalue scores (Elhage et al. 2021, "Summarizing
OV/QK matrices"), composition (Elhage et al. 2021; ``transformer_lens.utils.composition_scores``), condensation
index (Chen & Luo; docs/theory.md Part 3).
"""

from __future__ import annotations

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

#: pattern scores per head, in the recorder (``scores.blocks.{l}.{name}``) and the analysis (``head[name]``)
DETECTIONS = ("previous_token", "duplicate_token", "induction")
PATTERN_SCORES = ("entropy", *DETECTIONS)
EIGEN_SCORES = ("qk_eig", "ov_eig")
HEAD_SCORES = (*PATTERN_SCORES, *EIGEN_SCORES)
#: names of recordings written before these names (sslens <= the metrics module): old -> new
OLD_NAMES = {"prev_token": "previous_token", "duplicate": "duplicate_token", "prefix_matching": "induction"}


def attention_entropy(pattern: Float[Tensor, "... probe head q k"]) -> Float[Tensor, "... head"]:
    """-sum_k A[q, k] log A[q, k] (0 log 0 = 0), mean over probe sequences and all query positions (Scan&Snap Fig. 10).

    In nats; computed in float32 at least (bf16/fp16 patterns are cast).
    """
    p = pattern.float() if pattern.dtype in (torch.bfloat16, torch.float16) else pattern
    return -torch.special.xlogy(p, p).sum(-1).mean(dim=(-3, -1))  # [..., probe, head, q] -> [..., head]


def repeat_kv(W: Tensor, n_heads: int) -> Tensor:
    """Grouped-query attention: K/V weights ``[..., kv_head, ...]`` (head dim first) repeated to ``n_heads``.

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


def eigenvalue_score(eig: Tensor) -> Tensor:
    """Eigenvalue score sum_i lambda_i / sum_i |lambda_i| (real part), docs/theory.md §3.6, float64.

    +1 for a positive (copying / matching) circuit, -1 for a negative one (Elhage et al. 2021,
    "Summarizing OV/QK matrices"). 0 for the zero matrix.
    """
    eig = eig.to(torch.complex128) if eig.is_complex() else eig.to(torch.float64)
    num = eig.sum(-1).real if eig.is_complex() else eig.sum(-1)
    den = eig.abs().sum(-1)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(den)).to(torch.float64)


def qk_eig(
    G_E: Float[Tensor, "*b d_model d_model"], W_Q: Float[Tensor, "*b head d_model d_head"],
    W_K: Float[Tensor, "*b head d_model d_head"],
) -> Float[Tensor, "*b head"]:
    """Eigenvalue score of the token-space QK circuit W_E W_Q W_K^T W_E^T, given ``G_E = W_E^T W_E``.

    Its nonzero eigenvalues are those of the d_head x d_head matrix W_K^T (W_E^T W_E) W_Q.
    """
    return eigenvalue_score(torch.linalg.eigvals(W_K.transpose(-1, -2) @ G_E.unsqueeze(-3) @ W_Q))


def ov_eig(
    M_UE: Float[Tensor, "*b d_model d_model"], W_V: Float[Tensor, "*b head d_model d_head"],
    W_O: Float[Tensor, "*b head d_head d_model"],
) -> Float[Tensor, "*b head"]:
    """Eigenvalue score of the token-space OV circuit W_E W_V W_O W_U (d_vocab_out = d_vocab), given ``M_UE = W_U W_E``.

    Its nonzero eigenvalues are those of the d_head x d_head matrix W_O (W_U W_E) W_V.
    """
    return eigenvalue_score(torch.linalg.eigvals(W_O @ M_UE.unsqueeze(-3) @ W_V))


def detection_patterns(tokens: Int[Tensor, "probe pos"]) -> dict[str, Float[Tensor, "probe pos pos"]]:
    """TransformerLens ``head_detector`` detection patterns per probe sequence, keyed by :data:`DETECTIONS`.

    Previous-token, duplicate-token and induction (the duplicate pattern shifted right by one: attend to the
    token after the previous occurrence of the current token, Olsson et al.'s prefix-matching target).
    """
    from transformer_lens import head_detector as hd

    toks = tokens.detach().cpu()
    fns = (hd.get_previous_token_head_detection_pattern, hd.get_duplicate_token_head_detection_pattern,
           hd.get_induction_head_detection_pattern)
    return {name: torch.stack([fn(t) for t in toks]).to(torch.float64) for name, fn in zip(DETECTIONS, fns)}


def detection_scores(
    pattern: Float[Tensor, "... probe head q k"], dets: dict[str, Float[Tensor, "probe q k"]]
) -> dict[str, Float[Tensor, "... head"]]:
    """Attention mass on each detection pattern's targets, float64.

    Averaged over the (probe, query) positions that have a target, so a perfect head scores 1 whatever the probe
    length (NaN when no position has one). On a repeated-random-tokens probe ``induction`` is the prefix-matching
    score of Olsson et al. (2022) and ``previous_token`` the previous-token score.
    """
    p = pattern.transpose(-4, -3)  # [..., head, probe, q, k]
    out = {}
    for name, det in dets.items():
        n = int((det.sum(-1) > 0).sum())
        b, q, k = det.nonzero(as_tuple=True)
        mass = p[..., b, q, k].to(torch.float64) * det[b, q, k].to(p.device, torch.float64)  # [..., head, nnz]
        out[name] = mass.sum(-1) / n if n > 0 else torch.full(mass.shape[:-1], float("nan"), dtype=torch.float64)
    return out


def pattern_scores(
    pattern: Float[Tensor, "... probe head q k"], dets: dict[str, Float[Tensor, "probe q k"]]
) -> dict[str, Float[Tensor, "... head"]]:
    """:data:`PATTERN_SCORES` of a probe pattern: entropy and the detection scores (``dets`` of its probe)."""
    return {"entropy": attention_entropy(pattern).to(torch.float64), **detection_scores(pattern, dets)}


def key_token_mass(
    pattern: Float[Tensor, "... probe head q k"], tokens: Int[Tensor, "probe k"], vocab: Int[Tensor, " t"]
) -> Float[Tensor, "... head t"]:
    """Attention mass that each head puts on keys holding each token id of ``vocab`` (sorted, holding every probe token).

    Averaged over probe sequences and query positions (sums to 1 over the token ids).
    """
    p = pattern.mean(-2, dtype=torch.float64)  # [..., probe, head, k]
    idx = torch.searchsorted(vocab, tokens.to(vocab.dtype))  # [probe, k]
    idx = einops.repeat(idx, "b k -> b h k", h=p.shape[-2]).expand(*p.shape)
    out = torch.zeros(*p.shape[:-1], vocab.numel(), dtype=torch.float64)
    out.scatter_add_(-1, idx, p)
    return out.mean(-3)


def composition_scores(
    W_Q: Float[Tensor, "layer head d_model d_head"],
    W_K: Float[Tensor, "layer head d_model d_head"],
    W_V: Float[Tensor, "layer head d_model d_head"],
    W_O: Float[Tensor, "layer head d_head d_model"],
) -> dict[str, Float[Tensor, "layer head layer head"]]:
    """Q-, K- and V-composition scores of every head pair: ``HookedTransformer.all_composition_scores``'s numbers.

    ``||OV_1 R_2||_F / (||OV_1||_F ||R_2||_F)`` (Elhage et al. 2021; ``transformer_lens.utils.composition_scores``),
    zero unless the right head's layer is later than the left head's. With OV_1 = A_1 B_1 and R_2 = A_2 B_2
    (d_head-wide factors), ``||A_1 M B_2||_F^2 = tr(M^T (A_1^T A_1) M (B_2 B_2^T))`` with M = B_1 A_2: d_head x d_head
    products only (no SVD; GPT-2 small 3-4x faster than the FactoredMatrix route), exact in float64.
    """
    W_Q, W_K, W_V, W_O = (w.to(torch.float64) for w in (W_Q, W_K, W_V, W_O))
    L, H = W_Q.shape[:2]
    G1 = einops.einsum(W_V, W_V, "l h m d, l h m e -> l h d e")  # A_1^T A_1 of each left head's OV
    nOV = einops.einsum(G1, W_O, W_O, "l h d e, l h d m, l h e m -> l h").sqrt()
    out = {}
    for mode, (A2, B2) in (("Q", (W_Q, W_K.transpose(-2, -1))), ("K", (W_K, W_Q.transpose(-2, -1))), ("V", (W_V, W_O))):
        G2 = einops.einsum(B2, B2, "l h d m, l h e m -> l h d e")  # B_2 B_2^T
        nR = einops.einsum(G2, A2, A2, "l h d e, l h m d, l h m e -> l h").sqrt()
        s = torch.zeros(L, H, L, H, dtype=torch.float64)
        for l1 in range(L - 1):
            for l2 in range(l1 + 1, L):
                M = einops.einsum(W_O[l1], A2[l2], "h d m, k m e -> h k d e")  # B_1 A_2
                GM = einops.einsum(G1[l1], M, "h d c, h k c e -> h k d e")
                sq = einops.einsum(GM, G2[l2], M, "h k d e, k e f, h k d f -> h k")
                s[l1, :, l2] = sq.clamp_min(0).sqrt() / (nOV[l1][:, None] * nR[l2][None, :])
        out[mode] = s
    return out


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


def cosine_matrix(W: Float[Tensor, "... n d"]) -> Float[Tensor, "... n n"]:
    """cos(W_i, W_j) of the rows of W, float64 (a zero row gets cosine 0)."""
    W = W.to(torch.float64)
    Wn = W / W.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    return Wn @ Wn.transpose(-2, -1)


def condensation_index(neurons: Float[Tensor, "... n d"]) -> Float[Tensor, "..."]:
    """Condensation index lambda_max(C) / n of the cosine matrix C of ``n`` neuron vectors (rows), float64.

    1 when every neuron vector lies on one line (full condensation), about 1/n + O(1/sqrt(d)) for random neurons.
    lambda_max(Wn Wn^T) is that of the smaller Gram matrix Wn^T Wn (same nonzero eigenvalues).
    """
    V = neurons.to(torch.float64)
    Vn = V / V.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    n, d = Vn.shape[-2:]
    G = Vn.transpose(-2, -1) @ Vn if d <= n else Vn @ Vn.transpose(-2, -1)
    return torch.linalg.eigvalsh(G)[..., -1] / n


def next_token_loss(
    logits: Float[Tensor, "... pos vocab"], tokens: Int[Tensor, "... pos"], period: int | None = None
) -> dict[str, Float[Tensor, ""]]:
    """Mean next-token cross-entropy ``loss`` (TransformerLens's ``lm_cross_entropy_loss``), float64.

    With ``period`` p (a probe that repeats its first p tokens): also ``loss_in_context``, the mean over the
    predictions of the repeated half (tokens at positions p+1 .. 2p-1, each predictable from the first copy).
    """
    logp = logits.to(torch.float64).log_softmax(-1)[..., :-1, :]
    nll = -logp.gather(-1, tokens[..., 1:, None].to(logp.device))[..., 0]  # [..., pos - 1]: predicts token t+1
    out = {"loss": nll.mean()}
    if period is not None and 1 <= period and 2 * period <= tokens.shape[-1]:
        out["loss_in_context"] = nll[..., period: 2 * period - 1].mean()
    return out
