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
