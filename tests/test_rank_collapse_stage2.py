"""Stage 2 in the theory's regime on a real (small) run; checks.json rows recomputed independently."""

import json
import math

import pytest
import torch

from sslens.analyses.checks import provenance, read_checks, table_rows, validate, write_checks
from sslens.analyses.rank_collapse import stage2
from sslens.errors import SslensError
from sslens.models.rank_collapse import rank_collapse
from sslens.reproduce.rank_collapse import stage2_rows, theory_config
from sslens.store import RunStore
from sslens.tasks import build_task
from sslens.train import train


@pytest.fixture(scope="module")
def theory_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cr2")
    d = out / "binary-tanh"
    train(theory_config(220, "tanh", 1e-3, 0.03, n_train=256, every=10), out=d, progress=False)
    m = stage2(d)
    write_checks(out, stage2_rows([m], ["binary-tanh"], "tanh"), provenance([0]))
    return out, m


def test_alignment_row_recomputed_from_checkpoint(theory_run):
    """cr.stage2.alignment from the run's own checkpoint: the training set rebuilt from config.json, F of
    docs/theory.md §2.3 written out here, u1 v1^T by SVD."""
    out, m = theory_run
    row = {r["id"]: r for r in read_checks(out)["checks"]}["cr.stage2.alignment"]
    store = RunStore(out / row["run"])
    cfg = store.read_config()
    torch.manual_seed(0)
    tokens, y = build_task(cfg["task"]).training_set()
    t, _ = store.load_checkpoint(row["step"])
    E = t["model.embed.W_E"].double()
    X = E[tokens]
    n, s, d = X.shape
    W_Q, W_K = t["model.blocks.0.attn.W_Q"][0].double(), t["model.blocks.0.attn.W_K"][0].double()
    w = t["model.blocks.0.attn.W_V"][0].double() @ t["model.blocks.0.mlp.W_in"].double() @ t["model.unembed.W_U"].double()[:, 0]
    F = torch.zeros(d, d, dtype=torch.float64)
    for i in range(n):
        L1 = math.exp(-y[i].item() * (X[i].mean(0) @ w).item())
        Xc = X[i] - X[i].mean(0)
        F += y[i].item() * L1 * torch.outer(X[i, -1], w) @ (Xc.T @ Xc)
    F /= n * s * math.sqrt(d)
    U, S, Vh = torch.linalg.svd(F)
    A = W_Q @ W_K.T
    cos = (U[:, 0] @ A @ Vh[0]).item() / A.norm().item()
    assert abs(cos - row["measured"]) < 0.05
    assert abs(cos - row["measured"]) < 1e-8  # same formula, same data: agrees to rounding
    # the theory's regime: W_Q W_K^T aligned with F's top pair at the end of stage 2, still small there
    assert row["pass"] is True and row["measured"] >= 0.95
    assert m["score_scale"][m["i_end"]] < m["delta"] <= m["score_scale"][m["i_end"] + 1]


def test_stage2_rates_and_assumption2(theory_run):
    _, m = theory_run
    # ln||W_Q|| grows at the exact force's top singular value (per lr x step), within 20 %
    assert m["growth_rate"] / m["sigma1_G_window"] == pytest.approx(1.0, abs=0.2)
    # Assumption 2 measured: attention tiny against the outer weights at t1, outer direction frozen in stage 2
    assert m["attn_over_outer_norm_t1"] < 0.05 and m["outer_angle_total"] < 0.1


def test_checks_json_schema(theory_run, tmp_path):
    out, _ = theory_run
    data = json.loads((out / "checks.json").read_text())
    assert data["schema"] == 1 and data["provenance"]["seeds"] == [0]
    assert data["provenance"]["transformer_lens"] and data["provenance"]["sslens"]
    for r in data["checks"]:
        assert set(r) >= {"id", "check", "measured", "predicted", "tolerance", "pass", "regime", "run", "step"}
        assert r["pass"] in (True, False, "reported")
    assert any(r["pass"] == "reported" for r in data["checks"])
    assert all(t["result"] in ("PASS", "FAIL", "reported") for t in table_rows(data["checks"]))
    with pytest.raises(SslensError):
        validate({"id": "x", "check": "c", "measured": 1.0})
    with pytest.raises(SslensError):
        validate({"id": "x", "check": "c", "measured": 1.0, "predicted": 1, "tolerance": "", "pass": None,
                  "regime": "", "run": "r", "step": 0})
    row = {"id": "x", "check": "c", "measured": float("nan"), "predicted": 1, "tolerance": "", "pass": "reported",
           "regime": "", "run": "r", "step": 0}
    assert validate(row)["measured"] == "nan"
    with pytest.raises(SslensError):
        write_checks(tmp_path, [row, row], {})


def test_separate_init_scales_and_no_activation(gen):
    m = rank_collapse(d=32, d_vocab=40, head="scalar", n_ctx=4, gamma=None, eps=None, init_attn=1e-4, init_outer=0.1,
                      pos=False, act="none", dtype="float64", generator=gen)
    assert m.blocks[0].attn.W_Q.std().item() == pytest.approx(1e-4, rel=0.1)
    assert m.blocks[0].attn.W_V.std().item() == pytest.approx(0.1, rel=0.1)
    assert m.blocks[0].mlp.W_in.std().item() == pytest.approx(0.1, rel=0.1)
    tokens = torch.randint(0, 40, (5, 4), generator=gen)
    a = m.blocks[0].attn
    X = m.W_E.detach()[tokens]
    sc = X[:, -1:] @ a.W_Q[0].detach() @ a.W_K[0].detach().T @ X.transpose(1, 2) / math.sqrt(32)
    f = (torch.softmax(sc, -1) @ X @ a.W_V[0].detach() @ m.blocks[0].mlp.W_in.detach() @ m.unembed.W_U.detach())[:, 0, 0]
    assert torch.allclose(m(tokens)[:, -1, 0], f, atol=1e-10)  # no tanh
    with pytest.raises(SslensError) as e:
        rank_collapse(d=8, act="relu")
    assert e.value.field == "act"
    for bad in (-1.0, float("nan"), 1e308):
        with pytest.raises(SslensError) as e:
            rank_collapse(d=8, init_attn=bad)
        assert e.value.field == "init_attn"


def test_rows_over_seeds_carry_median_interval_and_run_lists(theory_run):
    """Several seeds: the measured value is the median, the interval [min, max], run/step are lists."""
    _, m = theory_run
    m2 = {**m, "cos_QK_F": [c * 0.5 for c in m["cos_QK_F"]]}
    m3 = {**m, "cos_QK_F": [c * 0.9 for c in m["cos_QK_F"]]}
    rows = {r["id"]: r for r in stage2_rows([m, m2, m3], ["a", "b", "c"], "tanh")}
    r = rows["cr.stage2.alignment"]
    c = m["cos_QK_F"][m["i_end"]]
    assert r["measured"] == pytest.approx(0.9 * c) and r["interval"] == pytest.approx([0.5 * c, c])
    assert r["n_seeds"] == 3 and r["run"] == ["a", "b", "c"] and r["step"] == [m["t_end"]] * 3
    assert r["pass"] == (0.9 * c >= 0.95)
