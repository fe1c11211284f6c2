"""Theory checks on the user's own model (issue 22 item 5): each with its measured assumption, 'outside' otherwise."""

import math
import warnings

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sslens.analyses import entropy_bound, qk_gradient
from sslens.analyses.own_checks import model_checks, qk_rank_check
from sslens.analyses.series import SeriesResult
from sslens.checkpoints import open_series, save_config


def result(entropy0: float, ranks: list[float]) -> SeriesResult:
    S = len(ranks)
    r = SeriesResult(name="x", steps=list(range(S)), n_layers=1, n_heads=2, layer_ids=[0], head_ids=[0, 1])
    r.head["QK.effective_rank"] = torch.tensor(ranks, dtype=torch.float64)[:, None, None].expand(S, 1, 2).clone()
    r.head["entropy"] = torch.full((S, 1, 2), entropy0, dtype=torch.float64)
    r.probe = torch.zeros(1, 8, dtype=torch.long)
    return r


def test_qk_rank_check_measures_its_small_init_assumption():
    uniform = sum(math.log(q + 1) for q in range(8)) / 8  # uniform causal attention over 8 positions
    row = qk_rank_check(result(uniform, [4.0, 3.0, 2.5, 2.8]))  # last state 2.8 <= 0.9 x 4.0
    assert row["pass"] is True and row["measured"] == 2.8 and row["step"] == 3 and "small init" in row["regime"]
    assert qk_rank_check(result(uniform, [2.0, 2.5, 3.0]))["pass"] is False  # rank rose: the prediction fails
    # noise below the start (the minimum of any noisy series is) is not a collapse; the last state decides
    assert qk_rank_check(result(uniform, [64.0, 63.9999, 64.0, 63.99]))["pass"] is False
    assert qk_rank_check(result(uniform, [4.0, 1.0, 3.9]))["pass"] is False  # came back
    out = qk_rank_check(result(0.5 * uniform, [4.0, 3.0, 2.5]))  # attention far from uniform: not small init
    assert out["pass"] == "outside" and out["regime"].startswith("not small init")


def write(d, fields, n=3):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(HookedTransformerConfig(**fields, seed=0, device="cpu"))
    save_config(model, d)
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        torch.save(model.state_dict(), d / f"step_{i}.pt")
        with torch.no_grad():
            for name, p in model.named_parameters():
                if not name.endswith(("b_Q", "b_K")) or fields.get("bias_step"):
                    p.add_(0.05 * torch.randn(p.shape, generator=g))


def test_model_checks_on_a_checkpoint_series(tmp_path):
    base = dict(n_layers=2, d_model=16, d_head=4, n_heads=2, d_vocab=20, n_ctx=8, attn_only=True,
                normalization_type=None)
    (tmp_path / "a").mkdir()
    write(tmp_path / "a", base)
    series = open_series(str(tmp_path / "a"))
    probe = torch.randint(0, 20, (2, 8), generator=torch.Generator().manual_seed(3))
    rows = {r["id"]: r for r in model_checks(series, probe)}
    eb = rows["own.entropy_bound"]
    want = min(float((b["entropy"] - b["bound"]).min())
               for b in (entropy_bound.head_entropy_bounds(series.load(s), probe) for s in series.steps))
    assert eb["pass"] is True and abs(eb["measured"] - want) < 1e-12 and eb["measured"] >= 0
    al = rows["own.qk_gradient_alignment"]
    m0, m1 = series.load(0), series.load(1)
    cos = qk_gradient.alignment(qk_gradient.qk_product(m1) - qk_gradient.qk_product(m0), qk_gradient.qk_gradient(m0, probe))
    assert al["pass"] == "reported" and torch.allclose(torch.tensor(al["measured"], dtype=torch.float64), cos)
    # nonzero query/key biases: the heads are not x W_Q W_K^T x^T, both checks say so
    (tmp_path / "b").mkdir()
    write(tmp_path / "b", {**base}, n=2)
    sd = torch.load(tmp_path / "b" / "step_1.pt")
    sd["blocks.0.attn.b_Q"] = sd["blocks.0.attn.b_Q"] + 0.1
    torch.save(sd, tmp_path / "b" / "step_1.pt")
    rows = {r["id"]: r for r in model_checks(open_series(str(tmp_path / "b")), probe)}
    assert rows["own.entropy_bound"]["pass"] == "outside" and "bias" in rows["own.entropy_bound"]["regime"]


def test_head_labels_on_hand_built_heads():
    from sslens.analyses.labels import CLEAR, composition_edges, head_labels, uniform_null

    P = 6
    probe = torch.arange(2 * P).remainder(P)[None]  # one period of P distinct ids, repeated: no chance repeats
    null = uniform_null(probe)
    # uniform causal attention: previous-token mass 1/(q+1) at every q >= 1 (independent formula)
    assert abs(null["previous_token"] - sum(1 / (q + 1) for q in range(1, 2 * P)) / (2 * P - 1)) < 1e-12
    r = SeriesResult(name="x", steps=[0, 10, 20], n_layers=1, n_heads=4, layer_ids=[0], head_ids=[0, 1, 2, 3])
    r.probe = probe
    prev = [[0.10, 0.50, 0.90],  # head 0: rises far above its start and the null: previous-token head
            [0.95, 0.90, 0.85],  # head 1: the largest score, but it fell below its initial value: no label
            [0.10, 0.15, 0.20],  # head 2: rises, but not a quarter of the way from its baseline to 1
            [0.05, 0.05, 0.05]]  # head 3: flat
    r.head["previous_token"] = torch.tensor(prev, dtype=torch.float64).T[:, None, :].clone()
    got = head_labels(r)
    assert [(h["head"], h["label"]) for h in got] == [(0, "previous_token")]
    base = max(0.10, null["previous_token"])
    assert got[0]["baseline"] == base and got[0]["score"] >= base + CLEAR * (1 - base)
    assert composition_edges(r) == []  # no weights, no composition: nothing claimed


def test_no_induction_label_in_layer_0():
    """A rising induction score labels a layer-1 head but never a layer-0 one (it cannot K-compose)."""
    from sslens.analyses.labels import head_labels

    P = 6
    r = SeriesResult(name="x", steps=[0, 10], n_layers=2, n_heads=1, layer_ids=[0, 1], head_ids=[0])
    r.probe = torch.arange(2 * P).remainder(P)[None]
    r.head["induction"] = torch.tensor([[[0.05], [0.05]], [[0.90], [0.90]]], dtype=torch.float64)  # [step, layer, head]
    assert [(h["layer"], h["label"]) for h in head_labels(r)] == [(1, "induction")]


def test_a_composition_edge_stands_out_of_its_random_baseline():
    from sslens.analyses.labels import composition_edges, composition_null
    from sslens.metrics import composition_scores

    g = torch.Generator().manual_seed(0)
    L, H, d, dh = 2, 2, 16, 4
    W_Q, W_K, W_V = (torch.randn(L, H, d, dh, generator=g, dtype=torch.float64) for _ in range(3))
    W_O = torch.randn(L, H, dh, d, generator=g, dtype=torch.float64)
    W_O[0, 0] = torch.eye(d, dtype=torch.float64)[:dh]  # L0H0 writes into dims 0..3 ...
    W_K[1, 0] = torch.eye(d, dtype=torch.float64)[:, :dh]  # ... which L1H0's keys read: K-composition
    comp = composition_scores(W_Q, W_K, W_V, W_O)
    r = SeriesResult(name="x", steps=[0], n_layers=L, n_heads=H, layer_ids=[0, 1], head_ids=[0, 1])
    r.composition = {m: v[None] for m, v in comp.items()}
    r.meta["dims"] = {"d_model": d, "d_head": dh}
    edges = composition_edges(r)
    null = composition_null(2, d, dh)
    top = edges[0]
    assert (top["mode"], top["from_layer"], top["from_head"], top["layer"], top["head"]) == ("K", 0, 0, 1, 0)
    assert top["score"] > null["K"] == top["baseline"]
    others = [float(comp[m][0, h1, 1, h2]) for m in "QKV" for h1 in range(H) for h2 in range(H) if (m, h1, h2) != ("K", 0, 0)]
    assert top["score"] > max(others)  # the planted edge is the strongest pair
    assert all(e["score"] > e["baseline"] for e in edges)
