"""The batched checkpoint-series analysis (analyses/batched.py) gives the per-checkpoint path's numbers.

The per-checkpoint path (one model load + CircuitRecorder.record per checkpoint) is the reference. Tolerance:
rel 1e-5, abs 1e-6 -- the reference computes singular values and eigenvalue scores in float32 (the recorder's
dtype), the batched path the singular values in float64 (QR core) and eigenvalues without eigenvectors.
"""

import re

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sslens.analyses import batched
from sslens.analyses.checkpoints import analyze_series
from sslens.checkpoints import open_series, save_config
from sslens.cli import main
from sslens.errors import SslensError

CONFIGS = {
    "ln_mlp": dict(n_layers=2, d_model=16, d_head=4, n_heads=2, d_mlp=32, d_vocab=40, n_ctx=12, act_fn="gelu",
                   normalization_type="LN"),
    "attn_only": dict(n_layers=2, d_model=16, d_head=4, n_heads=3, d_vocab=40, n_ctx=12, attn_only=True,
                      normalization_type=None),
    "rotary_rms_gqa_gated": dict(n_layers=2, d_model=16, d_head=4, n_heads=4, n_key_value_heads=2, d_mlp=32,
                                 d_vocab=40, n_ctx=12, act_fn="silu", gated_mlp=True, normalization_type="RMS",
                                 positional_embedding_type="rotary", rotary_dim=4),
}
TOL = dict(rel=1e-5, abs=1e-6)


def write_series(d, fields, n=5, reorder_at=None):
    """``n`` state dicts (``step_{i}.pt``) of a model whose weights drift; one saved with its keys in reverse order."""
    model = HookedTransformer(HookedTransformerConfig(**fields, seed=0, device="cpu"))
    save_config(model, d)
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        sd = model.state_dict()
        if i == reorder_at:  # a different pickle: read through torch.load, not the template
            sd = dict(reversed(list(sd.items())))
        torch.save(sd, d / f"step_{i}.pt")
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def assert_same(a, b):
    assert a.steps == b.steps and a.n_layers == b.n_layers and a.n_heads == b.n_heads
    assert a.meta == b.meta and a.notes == b.notes and a.key_tokens == b.key_tokens
    assert set(a.head) == set(b.head)
    for m in b.head:
        assert torch.isnan(a.head[m]).equal(torch.isnan(b.head[m])), m
        assert a.head[m].nan_to_num() == pytest.approx(b.head[m].nan_to_num(), **TOL), m
    assert set(a.composition) == set(b.composition)
    for m in b.composition:
        assert a.composition[m].nan_to_num() == pytest.approx(b.composition[m].nan_to_num(), **TOL), m
    assert set(a.scalars) == set(b.scalars) and "loss" in b.scalars  # the recorder's probe loss on the reference path
    for m in b.scalars:
        assert a.scalars[m].nan_to_num() == pytest.approx(b.scalars[m].nan_to_num(), **TOL), m
    assert set(a.layer) == set(b.layer)
    for m in b.layer:
        assert a.layer[m].nan_to_num() == pytest.approx(b.layer[m].nan_to_num(), **TOL), m
    assert sorted(a.rel_change) == sorted(b.rel_change)
    for k in b.rel_change:
        assert a.rel_change[k].nan_to_num() == pytest.approx(b.rel_change[k].nan_to_num(), **TOL), k
    assert a.key_mass.nan_to_num() == pytest.approx(b.key_mass.nan_to_num(), **TOL)
    assert {s: sorted(p) for s, p in a.patterns.items()} == {s: sorted(p) for s, p in b.patterns.items()}
    for s in b.patterns:
        for l in b.patterns[s]:
            assert torch.equal(a.patterns[s][l], b.patterns[s][l])
    assert {l: sorted(d) for l, d in a.neurons.items()} == {l: sorted(d) for l, d in b.neurons.items()}
    for l in b.neurons:
        for s in b.neurons[l]:
            assert torch.equal(a.neurons[l][s], b.neurons[l][s])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_batched_equals_the_per_checkpoint_path(name, tmp_path):
    write_series(tmp_path, CONFIGS[name], reorder_at=2)
    s = open_series(str(tmp_path))
    assert batched.supported(s)
    fast = batched.analyze_stacked(s, progress=False, chunk=2)  # 3 chunks: chunk boundaries are exercised
    ref = analyze_series(s, progress=False, batched=False)
    assert_same(fast, ref)
    assert not torch.isnan(fast.head["QK.effective_rank"]).any() and fast.rel_change


def test_a_given_probe_and_a_diverged_checkpoint(tmp_path):
    """A non-repeated probe (detection scores from a second, repeated-tokens probe) and a NaN checkpoint."""
    write_series(tmp_path, CONFIGS["ln_mlp"])
    sd = torch.load(tmp_path / "step_3.pt", weights_only=True)
    sd["blocks.1.attn.W_Q"][0, 0, 0] = float("nan")
    torch.save(sd, tmp_path / "step_3.pt")
    probe = torch.randint(0, 40, (3, 12), generator=torch.Generator().manual_seed(5))
    s = open_series(str(tmp_path))
    fast = batched.analyze_stacked(s, probe=probe, progress=False, threads=1)
    ref = analyze_series(s, probe=probe, progress=False, batched=False)
    assert torch.isnan(fast.head["entropy"][3]).all() and torch.isnan(fast.head["QK.stable_rank"][3]).all()
    assert not torch.isnan(fast.head["induction"][4]).any()
    assert [n for n in fast.notes if n.startswith("step 3: non-finite values in blocks.1.attn.W_Q")]
    fast.notes = [n for n in fast.notes if not n.startswith("step 3")]  # the reference names recorder keys
    ref.notes = [n for n in ref.notes if not n.startswith("step 3")]
    assert_same(fast, ref)


def test_condensation_index_from_the_small_gram_matrix():
    from sslens.metrics import condensation_index

    V = torch.randn(3, 20, 8, dtype=torch.float64)  # [ckpt, neuron, d]: the small Gram matrix is 8 x 8
    Vn = V / V.norm(dim=-1, keepdim=True)
    want = [torch.linalg.eigvalsh(v @ v.T)[-1].item() / 20 for v in Vn]  # the n x n cosine matrix
    assert condensation_index(V).tolist() == pytest.approx(want, rel=1e-10)
    assert condensation_index(V[0]).item() == pytest.approx(want[0], rel=1e-10)
    parallel = torch.randn(20, 1) * torch.randn(1, 8).sign()  # every neuron on one line: index 1
    assert condensation_index(parallel[None]).item() == pytest.approx(1.0, rel=1e-6)


def test_analyze_series_dispatches_to_the_batched_path_and_errors_stay_one_line(tmp_path, capsys):
    d = tmp_path / "ck"
    d.mkdir()
    write_series(d, CONFIGS["ln_mlp"], n=3)
    s = open_series(str(d))
    got, fast = analyze_series(s, progress=False), batched.analyze_stacked(s, progress=False)
    assert all(torch.equal(got.head[m].nan_to_num(), fast.head[m].nan_to_num()) for m in fast.head)
    sd = torch.load(d / "step_2.pt", weights_only=True)
    sd["blocks.0.mlp.W_in"] = torch.zeros(16, 33)
    torch.save(sd, d / "step_2.pt")
    with pytest.raises(SslensError, match=r"step_2.pt: blocks.0.mlp.W_in has shape \(16, 33\), the config gives \(16, 32\)"):
        batched.analyze_stacked(open_series(str(d)), progress=False)
    (d / "step_1.pt").write_bytes((d / "step_1.pt").read_bytes()[:300])
    assert main(["analyze-checkpoints", str(d), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "step_1.pt is truncated" in err[0]


def assert_identical(a, b):
    """Every number bitwise equal (NaN where the other is NaN), same notes, keys and order."""
    def eq(x, y):
        return torch.equal(torch.isnan(x), torch.isnan(y)) and torch.equal(x.nan_to_num(), y.nan_to_num())

    assert (a.steps, a.notes, a.meta, a.key_tokens) == (b.steps, b.notes, b.meta, b.key_tokens)
    for d, e in ((a.head, b.head), (a.composition, b.composition), (a.layer, b.layer), (a.rel_change, b.rel_change)):
        assert list(d) == list(e) and all(eq(d[k], e[k]) for k in d)
    assert eq(a.key_mass, b.key_mass)
    assert list(a.neurons) == list(b.neurons) and all(list(a.neurons[l]) == list(b.neurons[l]) for l in a.neurons)
    assert all(torch.equal(a.neurons[l][s], b.neurons[l][s]) for l in a.neurons for s in a.neurons[l])
    assert list(a.patterns) == list(b.patterns)
    assert all(torch.equal(a.patterns[s][l], b.patterns[s][l]) for s in a.patterns for l in a.patterns[s])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_forked_weights_job_gives_the_same_numbers(name, tmp_path):
    """start_weights forks a process (no TransformerLens) for the weight metrics: bitwise the in-process numbers,
    with a file read without the template and a diverged checkpoint."""
    write_series(tmp_path, CONFIGS[name], n=6, reorder_at=2)
    sd = torch.load(tmp_path / "step_4.pt", weights_only=True)
    sd["blocks.1.mlp.W_out" if "mlp" in name else "unembed.W_U"].view(-1)[3] = float("inf")
    torch.save(sd, tmp_path / "step_4.pt")
    job = batched.start_weights(str(tmp_path))
    s = open_series(str(tmp_path))
    fast = batched.analyze_stacked(s, progress=False, job=job)
    assert job.used and job.proc.error is None
    inline = batched.analyze_stacked(s, progress=False, threads=1)
    assert_identical(fast, inline)
    assert torch.isnan(fast.head["QK.stable_rank"][4]).all() and [n for n in fast.notes if n.startswith("step 4:")]


def test_a_job_that_does_not_fit_is_not_used(tmp_path):
    """Another chunk size, other files, or a child that failed: the weight metrics are computed in process."""
    write_series(tmp_path / "a", CONFIGS["ln_mlp"], n=3)
    write_series(tmp_path / "b", CONFIGS["ln_mlp"], n=4)
    s = open_series(str(tmp_path / "a"))
    ref = batched.analyze_stacked(s, progress=False, chunk=2)
    for job, chunk in ((batched.start_weights(str(tmp_path / "a")), 2), (batched.start_weights(str(tmp_path / "b")), 128)):
        assert_identical(batched.analyze_stacked(s, progress=False, chunk=chunk, job=job), ref)
        assert not job.used
    f = tmp_path / "a" / "step_1.pt"
    f.write_bytes(f.read_bytes()[:300])  # the child fails; the parent says why
    job = batched.start_weights(str(tmp_path / "a"))
    with pytest.raises(SslensError, match="step_1.pt is truncated"):
        batched.analyze_stacked(open_series(str(tmp_path / "a")), progress=False, job=job)
    job.close()
    assert batched.start_weights(str(tmp_path / "nowhere")) is None and batched.start_weights("pretrained:gpt2") is None


def test_the_helpers_weight_plots_are_the_reports(tmp_path):
    """The weight plots the helper renders (weights_of_files with the series' name) are byte for byte the PNGs the
    report renders from the finished result, and the report embeds them unchanged."""
    from sslens.analyses.report import png_bytes
    from sslens.analyses.series_report import FIGURE_DPI, plot, write_report

    write_series(tmp_path / "ck", CONFIGS["ln_mlp"], n=4)
    s = open_series(str(tmp_path / "ck"))
    files = [s.files[t] for t in s.steps]
    got = batched.weights_of_files(files, s.steps, None, 12, name=s.name)
    res = batched.analyze_stacked(s, progress=False, threads=1)
    assert sorted(got["rendered"]) == ["composition", "condensation", "rank", "rel_change"]
    for what, png in got["rendered"].items():
        assert png == png_bytes(plot(res, what), FIGURE_DPI), what
    write_report([res], tmp_path / "a", workers=1)
    res.rendered = got["rendered"]
    write_report([res], tmp_path / "b", workers=2)
    strip = lambda p: re.sub(r"circuits-vis-[0-9a-f-]+", "", p.read_text())  # noqa: E731 - random view ids
    assert strip(tmp_path / "a" / "report.html") == strip(tmp_path / "b" / "report.html")
