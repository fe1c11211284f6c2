"""sslens reproduce wikitext on the shipped WikiText slices (tiny): Fig. 10 numbers recomputed
independently, Fig. 7 views and the [CR] Fig. 3 report offline."""

import json
from pathlib import Path

import pytest
import torch

from sslens.analyses.report import external_resources
from sslens.cli import main
from sslens.data.text import TextTask
from sslens.store import RunStore

DATA = Path(__file__).parent / "data"


def test_reproduce_wikitext_tiny(tmp_path):
    out = tmp_path / "wt"
    assert main(["reproduce", "wikitext", "--out", str(out), "--data-dir", str(tmp_path / "nodata"), "--quiet"]) == 2
    (tmp_path / "d").mkdir()
    for name, src in (("valid.txt", "wikitext-2-valid-slice.txt"), ("test.txt", "wikitext-2-test-slice.txt")):
        (tmp_path / "d" / name).write_bytes((DATA / src).read_bytes())
    assert main(["reproduce", "wikitext", "--out", str(out), "--data-dir", str(tmp_path / "d"), "--steps", "6",
                 "--etas", "1", "3", "--seeds", "2", "--cr-steps", "6", "--quiet"]) == 0
    fig10 = json.loads((out / "fig10.json").read_text())
    assert [r["eta"] for r in fig10["rows"]] == [1.0, 3.0]
    # independent recomputation of one seed's validation attention entropy
    files = {"train": str(tmp_path / "d" / "valid.txt"), "valid": str(tmp_path / "d" / "test.txt")}
    vals = []
    for s in (1, 2):
        model = RunStore(out / f"fig10-eta3-s{s}").load_model()
        x = TextTask(files, split="valid", vocab_split="train", seq_len=35, max_vocab=2000).data[:32]
        _, cache = model.run_with_cache(x)
        a = cache["pattern", 0]
        vals.append((-(a * torch.log(a + 1e-8)).sum(-1)).mean().item())
    assert fig10["rows"][1]["entropy_mean"] == pytest.approx(sum(vals) / 2, rel=1e-5)
    assert fig10["pass"] == (fig10["rows"][0]["entropy_mean"] > fig10["rows"][1]["entropy_mean"])
    f7 = json.loads((out / "fig7.json").read_text())
    assert f7["run"] == "fig10-eta3-s1" and f7["steps"][0] == 0 and len(f7["tv"]) == len(f7["steps"]) - 1
    page = (out / "report.html").read_text()
    assert external_resources(page) == [] and page.count("CircuitsVis.render") == 4  # 1-layer + 3 layers
    assert external_resources((out / "cr-fig3" / "report.html").read_text()) == []
    m = json.loads((out / "cr-fig3" / "metrics.json").read_text())["series"][0]
    assert "QK.effective_rank" in m["head"] and "blocks.1.mlp.W_in" in m["rel_change"]


def test_sparsify_then_freeze_known_answers():
    """Uniform -> one-hot over 4 keys: H falls from ln 4 to ~0; TV per interval 0.75, 0.0, 0.0 -> freezes (ratio 0);
    moving at constant speed instead gives ratio 1 (does not freeze)."""
    import math

    from sslens.reproduce.wikitext import sparsify_then_freeze

    uni = torch.full((1, 1, 2, 4), 0.25)
    one = torch.zeros(1, 1, 2, 4)
    one[..., 0] = 1.0
    c = sparsify_then_freeze(torch.stack([uni, one, one, one]), [0, 1, 2, 3])
    assert c["entropy"][0] == pytest.approx(math.log(4), rel=1e-6) and c["entropy_ratio"] < 1e-6
    assert c["tv"] == pytest.approx([0.75, 0.0, 0.0]) and c["freeze_ratio"] == 0.0 and c["pass"] is True
    mid = [(1 - a) * uni + a * one for a in (0.0, 1 / 3, 2 / 3, 1.0)]
    c = sparsify_then_freeze(torch.stack(mid), [0, 1, 2, 3])
    assert c["freeze_ratio"] == pytest.approx(1.0) and c["sparsifies"] and not c["freezes"] and c["pass"] is False
