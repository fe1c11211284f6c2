"""Content hashes per checkpoint (sslens.integrity): a byte copy and a re-saved copy of two checkpoints of a
state-dict series are exactly the two duplicate pairs of metrics.json; the hash follows the tensors, not the file;
an sslens run series is hashed too; `--dedupe` analyses each distinct state once with the same metrics."""

import json
import shutil

import torch
from safetensors.torch import save_file

from sslens import compat
from sslens.checkpoints import open_series, save_config
from sslens.cli import main
from sslens.integrity import distinct_steps, duplicate_groups, series_hashes, state_hash

FIELDS = dict(n_layers=1, d_model=16, d_head=8, n_heads=2, d_mlp=32, d_vocab=40, n_ctx=8, act_fn="gelu",
              normalization_type="LN", device="cpu")


def test_state_hash_follows_tensors_not_files(tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = {"b": torch.randn(3, 4, generator=g), "a": torch.arange(5), "h": torch.randn(2, generator=g).half()}
    torch.save(sd, tmp_path / "x.pt")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "x.safetensors"))
    reloaded = torch.load(tmp_path / "x.pt", weights_only=True)
    # a non-contiguous view (another storage layout) and another key order hash equal
    view = {"h": sd["h"], "a": sd["a"], "b": sd["b"].T.contiguous().T}
    from safetensors.torch import load_file

    assert state_hash(sd) == state_hash(reloaded) == state_hash(view) == state_hash(load_file(str(tmp_path / "x.safetensors")))
    for changed in ({**sd, "b": sd["b"].clone().index_put_((torch.tensor([0]), torch.tensor([0])), torch.tensor(9.0))},
                    {**sd, "a": sd["a"].to(torch.int32)}, {**sd, "b": sd["b"].reshape(4, 3)}, {**sd, "c": sd["a"]}):
        assert state_hash(changed) != state_hash(sd)
    assert duplicate_groups({0: "x", 1: "y", 2: "x", 3: "z", 4: "y", 5: "x"}) == [[0, 2, 5], [1, 4]]
    assert distinct_steps({0: "x", 1: "y", 2: "x", 3: "z"}) == [0, 1, 3]


def test_state_dict_series_byte_copy_and_resaved_copy_are_the_two_duplicate_pairs(tmp_path):
    d = tmp_path / "ckpts"
    steps = [0, 10, 20, 30, 40, 50]
    d.mkdir()
    for s in [0, 10, 20, 40]:
        model = compat.build_from_config({**FIELDS, "seed": s + 1})
        torch.save(compat.state_dict_3x(model), d / f"step_{s}.pt")
    save_config(model, d)
    shutil.copyfile(d / "step_10.pt", d / "step_30.pt")  # a byte copy
    sd = torch.load(d / "step_20.pt", weights_only=True)
    torch.save({k: v.clone() for k, v in reversed(list(sd.items()))}, d / "step_50.pt")  # re-saved: other bytes
    assert (d / "step_50.pt").read_bytes() != (d / "step_20.pt").read_bytes()
    series = open_series(str(d))
    assert series.steps == steps
    assert duplicate_groups(series_hashes(series.steps, series.tensors)) == [[10, 30], [20, 50]]

    out = tmp_path / "rep"
    assert main(["analyze-checkpoints", str(d), "--out", str(out), "--quiet"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["duplicates"] == [[10, 30], [20, 50]]
    html = (out / "report.html").read_text()
    assert html.index("DUPLICATES in ckpts: steps 10, 30") < html.index("Weights are analysed")  # at the top
    rank = m["series"][0]["head"]["QK.effective_rank"]
    assert rank[1] == rank[3] and rank[2] == rank[5]

    assert main(["analyze-checkpoints", str(d), "--dedupe", "--out", str(tmp_path / "dd"), "--quiet"]) == 0
    dd = json.loads((tmp_path / "dd" / "metrics.json").read_text())
    assert dd["duplicates"] == [[10, 30], [20, 50]] and dd["series"][0]["steps"] == [0, 10, 20, 40]
    torch.testing.assert_close(torch.tensor(dd["series"][0]["head"]["QK.effective_rank"]),
                               torch.tensor([rank[i] for i in (0, 1, 2, 4)]), rtol=1e-12, atol=0)


def test_run_series_is_hashed(tmp_path):
    from sslens.data import syn_small
    from sslens.models.standard import standard_config
    from sslens.store import RunStore
    from sslens.tasks import SequenceClassTask
    from sslens.train import TrainConfig, train

    s = syn_small(T=8)
    cfg = TrainConfig(model=standard_config(s.M, d_model=8, d_mlp=16, n_ctx=8), task=SequenceClassTask(s).to_dict(),
                      steps=4, batch=4, optimizer="sgd", lr={"*": 0.0}, record_n=0, checkpoint_every=2)
    train(cfg, out=tmp_path / "run", progress=False)
    series = open_series(str(tmp_path / "run"))
    hashes = series_hashes(series.steps, series.tensors)
    assert series.steps == RunStore(tmp_path / "run").checkpoint_steps() and len(hashes) >= 2
    assert len(set(hashes.values())) == 1  # lr 0: every checkpoint holds the initial weights
