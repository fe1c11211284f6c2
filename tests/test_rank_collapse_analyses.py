"""Stage metrics of a real (tiny) rank-collapse run, recomputed independently; the report is offline."""

import json

import pytest
import torch

from sslens.analyses.rank_collapse import boundary, onset, stage_metrics
from sslens.analyses.report import external_resources
from sslens.cli import main
from sslens.models.rank_collapse import rank_collapse_config
from sslens.store import RunStore
from sslens.tasks import build_task
from sslens.train import TrainConfig, train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("cr") / "run"
    cfg = TrainConfig(model=rank_collapse_config(d=8, d_vocab=16, head="scalar", n_ctx=6, gamma=None, eps=0.05, pos=False, dtype="float64"),
                      task={"kind": "binary", "vocab": 16, "seq_len": 6, "signal": 0.6}, steps=120, batch=256,
                      lr={"*": 5.0}, seed=0, checkpoint_every=10, record_n=0)
    train(cfg, out=d, progress=False)
    return d


def test_stage_metrics_match_independent_computation(run):
    m = stage_metrics(run)
    store = RunStore(run)
    tokens, y = build_task(store.read_config()["task"]).batch(2048, torch.Generator().manual_seed(12345))
    t, _ = store.load_checkpoint(m["steps"][-1])
    X = t["model.embed.W_E"].double()[tokens]
    v = torch.einsum("n,nsd->d", y.double(), X)
    v = v / v.norm()
    E = v @ t["model.blocks.0.attn.W_V"][0].double() @ t["model.blocks.0.mlp.W_in"].double() @ t["model.unembed.W_U"][:, 0].double()
    assert m["energy"][-1] == pytest.approx(E.item(), rel=1e-9)
    QK = t["model.blocks.0.attn.W_Q"][0].double() @ t["model.blocks.0.attn.W_K"][0].double().T
    s = torch.linalg.svdvals(QK)
    p = s / s.sum()
    assert m["effective_rank.QK"][-1] == pytest.approx(torch.exp(-(p * p.log()).sum()).item(), rel=1e-9)
    # stage 1 happened: the loss fell, the energy grew, and the outer weights moved more than attention
    assert m["loss"][-1] < 0.9 and m["energy"][-1] > 100 * abs(m["energy"][0])
    assert m["rel_change_outer"][-1] > m["rel_change_attn"][-1]


def test_analyze_cli(run):
    assert main(["analyze", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    names = [r["check"] for r in metrics["checks"]]
    assert any("A1" in n for n in names) and any("Thm 3" in n for n in names) and any("t1 < t2" in n for n in names)
    assert external_resources((run / "report.html").read_text()) == []


def test_onset_interpolates_and_breaks_checkpoint_ties():
    """a(s) = s and b(s) = s - 4 (b(0) = 0) on checkpoints 8 apart: both reach half their final value between
    steps 16 and 24, so ``boundary`` ties them at 24; linear interpolation gives the exact crossings 20 and 22."""
    steps = list(range(0, 41, 8))
    a = [float(s) for s in steps]
    b = [0.0] + [float(s - 4) for s in steps[1:]]
    assert boundary(steps, a) == boundary(steps, b) == 24
    assert onset(steps, a) == pytest.approx(20.0) and onset(steps, b) == pytest.approx(22.0)
    assert onset(steps, [0.0] * 6) == 40.0  # never moved: the last step, as boundary
    assert onset(steps, [1.0] * 6) == 0.0  # at half its final value from the start


def test_energy_growth_exact_on_the_balanced_flow():
    """E = u^3 with du/dtau = k u^2 (balanced scalar weights under gradient ascent on E for k = 1): E^{-1/3} = 1/u
    falls at rate k exactly, so the integrated Thm 1 ratio is k; E <= 0 at an end gives nan."""
    from sslens.analyses.rank_collapse import energy_growth

    tau = [0.0, 0.5, 1.0, 3.0, 3.5]
    for k in (1.0, 2.5):
        u = [1 / (10.0 - k * t) for t in tau]  # u(0) = 0.1, blows up at tau = 10 / k
        assert energy_growth(tau, [x**3 for x in u]) == pytest.approx([k] * 4, rel=1e-9)
    g = energy_growth([0.0, 1.0, 2.0], [-1e-3, 1e-3, 2e-3])
    assert g[0] != g[0] and g[1] == pytest.approx(1e-3 ** (-1 / 3) - 2e-3 ** (-1 / 3))


def test_energy_time_scale_is_the_loss_gradient_at_small_init(run):
    """-dL/dW_V at the first checkpoint (attention uniform, f ~ 0) equals c dE/dW_V, c = ||sum y X|| / (n s): the
    rescaled time tau = lr c step of the energy_growth check (autograd on the model and data, not the formula)."""
    from sslens.losses import last_token_exp
    from sslens.theory import rank_collapse as th

    m = stage_metrics(run)
    store = RunStore(run)
    tokens, y = build_task(store.read_config()["task"]).batch(2048, torch.Generator().manual_seed(12345))
    model = store.load_model(0)
    W_V = model.blocks[0].attn.W_V
    (gV,) = torch.autograd.grad(last_token_exp(model(tokens), y.to(model.cfg.dtype)), [W_V])
    t, _ = store.load_checkpoint(0)
    X = t["model.embed.W_E"].double()[tokens]
    v = torch.tensor(m["v"], dtype=torch.float64)
    Wv = W_V[0].detach().double().requires_grad_()
    (gE,) = torch.autograd.grad(th.energy(v, Wv, t["model.blocks.0.mlp.W_in"].double(), t["model.unembed.W_U"][:, 0].double()), [Wv])
    c = m["energy_tau"][1] / (m["steps"][1] * float(next(iter(store.read_config()["train"]["lr"].values()))))
    assert c == pytest.approx((torch.einsum("n,nsd->d", y.double(), X).norm() / (X.shape[0] * X.shape[1])).item(), rel=1e-9)
    cos = torch.nn.functional.cosine_similarity(-gV[0].double().flatten(), gE.flatten(), dim=0).item()
    ratio = (-gV[0].double().flatten() @ gE.flatten() / (gE.norm() ** 2)).item()
    assert cos > 0.95 and ratio == pytest.approx(c, rel=0.1)
