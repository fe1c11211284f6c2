"""`sslens analyze` on recordings of models no sslens code built, compared with TransformerLens's own numbers;
a known-answer previous-token + induction circuit; the same numbers from a checkpoint series."""

import json

import pytest
import torch
from transformer_lens import FactoredMatrix, HookedTransformer, HookedTransformerConfig

from sslens.analyses.checkpoints import analyze_series
from sslens.analyses.report import external_resources
from sslens.analyses.series import analyze_recording, repeated_random_tokens
from sslens.checkpoints import load_probe, open_series, save_config
from sslens.cli import main
from sslens.hooks import CircuitRecorder
from sslens.hooks.recorder import Recording
from sslens.metrics import detection_patterns, pattern_scores

CONFIGS = {
    "ln_mlp": dict(n_layers=2, d_model=16, d_head=4, n_heads=2, d_mlp=32, d_vocab=40, n_ctx=12, act_fn="gelu",
                   normalization_type="LN"),
    "rotary_rms_gqa_gated": dict(n_layers=2, d_model=16, d_head=4, n_heads=4, n_key_value_heads=2, d_mlp=32, d_vocab=40,
                                 n_ctx=12, act_fn="silu", gated_mlp=True, normalization_type="RMS",
                                 positional_embedding_type="rotary", rotary_dim=4),
    "attn_only_bf16": dict(n_layers=2, d_model=16, d_head=4, n_heads=2, d_vocab=40, n_ctx=12, attn_only=True,
                           normalization_type=None, dtype=torch.bfloat16),
}


def erank(s):
    p = s / s.sum(-1, keepdim=True)
    return torch.exp(-torch.xlogy(p, p).sum(-1))


def f64(fm: FactoredMatrix) -> FactoredMatrix:
    return FactoredMatrix(fm.A.detach().double(), fm.B.detach().double())


@pytest.fixture(scope="module", params=list(CONFIGS))
def trained(request, tmp_path_factory):
    """A plain loop with the recorder attached; returns (model at the last recorded step, run dir, probe)."""
    d = tmp_path_factory.mktemp(request.param)
    cfg = HookedTransformerConfig(**CONFIGS[request.param], seed=0, device="cpu")
    model = HookedTransformer(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    probe = repeated_random_tokens(40, 12, n=3, seed=1)
    rec = CircuitRecorder(model, store=d / "run", schedule=[0, 1, 3], probe_tokens=probe).attach(opt)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        loss = model(torch.randint(0, 40, (8, 12), generator=g), return_type="loss")
        loss.backward()
        opt.step()
        opt.zero_grad()
    rec.detach()
    return request.param, model, d / "run", probe


def test_analyze_equals_transformer_lens(trained, tmp_path):
    name, model, run, probe = trained
    assert not (run / "config.json").exists()  # no sslens config
    assert main(["analyze", str(run), "--out", str(tmp_path), "--quiet", "--layers", "1", "--heads", "0", "1"]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())["series"][0]
    assert m["steps"] == [0, 1, 3]
    bf16 = model.cfg.dtype == torch.bfloat16
    tol = dict(rel=3e-2, abs=3e-2) if bf16 else dict(rel=1e-5, abs=1e-6)  # bf16: the recorded dense QK is rounded
    ref = model  # TransformerLens's composition scores run no SVD in bf16 on CPU: compare with a float32 copy
    if bf16:
        ref = HookedTransformer(HookedTransformerConfig(**{**CONFIGS[name], "dtype": torch.float32}, device="cpu"))
        ref.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    for l in range(model.cfg.n_layers):
        for c, fm in (("QK", ref.QK[l]), ("OV", ref.OV[l])):
            s = f64(fm).svd()[1].detach()  # TransformerLens's own circuit, its own SVD
            assert m["head"][f"{c}.effective_rank"][-1][l] == pytest.approx(erank(s).tolist(), **tol)
            assert m["head"][f"{c}.stable_rank"][-1][l] == pytest.approx(((s**2).sum(-1) / s[:, 0] ** 2).tolist(), **tol)
            assert m["head"][f"{c}.top1_energy"][-1][l] == pytest.approx((s[:, 0] ** 2 / (s**2).sum(-1)).tolist(), **tol)
    for mode in "QKV":
        want = ref.all_composition_scores(mode).detach().double()
        assert torch.tensor(m["composition"][mode][-1], dtype=torch.float64) == pytest.approx(want, **tol), mode
    _, cache = model.run_with_cache(probe)
    for l in range(model.cfg.n_layers):
        a = cache["pattern", l].float()
        ent = (-(a * torch.log(a + 1e-8)).sum(-1)).mean(dim=(0, 2))
        assert m["head"]["entropy"][-1][l] == pytest.approx(ent.tolist(), rel=1e-5)
    page = (tmp_path / "report.html").read_text()
    assert external_resources(page) == [] and "L1H1 step 3" in page and "L0H0 step" not in page
    # the tidy frame carries the same number
    df = analyze_recording(run, progress=False).to_pandas()
    assert set(df.columns) == {"step", "layer", "head", "metric", "value"}
    row = df[(df["step"] == 3) & (df["layer"] == 1) & (df["head"] == 0) & (df["metric"] == "QK.effective_rank")]
    assert row.value.item() == pytest.approx(m["head"]["QK.effective_rank"][-1][1][0])


def test_checkpoint_series_gives_the_same_numbers(trained, tmp_path):
    """A checkpoint of the same model, analysed through analyze-checkpoints with the recording's probe."""
    name, model, run, probe = trained
    ck = tmp_path / "ckpts"
    save_config(model, ck)
    torch.save(model.state_dict(), ck / "step_3.pt")
    (tmp_path / "probe.txt").write_text("\n".join(" ".join(map(str, r)) for r in probe.tolist()))
    c = analyze_series(open_series(str(ck)), probe=load_probe(tmp_path / "probe.txt"), progress=False).to_json()
    r = analyze_recording(run, progress=False)
    tol = dict(rel=3e-2, abs=3e-2) if model.cfg.dtype == torch.bfloat16 else dict(rel=1e-5, abs=1e-6)
    assert c["steps"] == [3]
    for metric in ("QK.effective_rank", "OV.stable_rank", "entropy", "induction"):
        assert torch.tensor(c["head"][metric][-1]) == pytest.approx(r.head[metric][-1].float(), **tol), metric
    for mode in "QKV":
        assert torch.tensor(c["composition"][mode][-1]) == pytest.approx(r.composition[mode][-1].float(), **tol)
    if not model.cfg.attn_only:
        W = model.blocks[0].mlp.W_in.detach().double()
        Wn = W.T / W.T.norm(dim=1, keepdim=True)
        assert c["layer"]["mlp_condensation"][-1][0] == pytest.approx(torch.linalg.eigvalsh(Wn @ Wn.T)[-1].item() / W.shape[1], rel=1e-6)


# ---------------------------------------------------------------------------------------- known answer
def induction_model() -> HookedTransformer:
    """Hand-set 2-layer attn-only model: L0H0 attends exactly to the previous position and copies its token into
    'previous token' dims; L1H0 attends exactly to positions whose previous token equals the current token."""
    n_ctx, V, big = 12, 10, 400.0
    cfg = HookedTransformerConfig(n_layers=2, d_model=n_ctx + 2 * V, d_head=16, n_heads=2, d_vocab=V, n_ctx=n_ctx,
                                  attn_only=True, normalization_type=None, seed=0, device="cpu")
    m = HookedTransformer(cfg)
    P, T, R = 0, n_ctx, n_ctx + V  # position, token, previous-token dims
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.embed.W_E[:] = torch.eye(cfg.d_model)[T:T + V]
        m.pos_embed.W_pos[:] = torch.eye(cfg.d_model)[P:P + n_ctx]
        a0, a1 = m.blocks[0].attn, m.blocks[1].attn
        for p in range(n_ctx):
            a0.W_K[0, P + p, p] = 1.0
            if p >= 1:
                a0.W_Q[0, P + p, p - 1] = big  # q_i . k_j = big [j == i - 1]
        for t in range(V):
            a0.W_V[0, T + t, t] = 1.0
            a0.W_O[0, t, R + t] = 1.0  # copy the attended token into the previous-token dims
            a1.W_Q[0, T + t, t] = big
            a1.W_K[0, R + t, t] = 1.0  # q_i . k_j = big [tok_i == prev_tok_j]
        a1.W_K[0, P + 0, V] = 1.0
        a1.b_Q[0, V] = -big  # position 0 has no previous token
        m.unembed.W_U[:] = torch.randn(cfg.d_model, V, generator=torch.Generator().manual_seed(0))
    return m


def test_known_previous_token_and_induction_heads(tmp_path):
    m = induction_model()
    probe = repeated_random_tokens(10, 12, n=4, seed=3)
    CircuitRecorder(m, store=tmp_path / "run", schedule=[], probe_tokens=probe).record(0)
    assert main(["analyze", str(tmp_path / "run"), "--quiet"]) == 0
    h = json.loads((tmp_path / "run" / "metrics.json").read_text())["series"][0]["head"]
    assert h["previous_token"][0][0][0] == pytest.approx(1.0, abs=1e-6)
    assert h["induction"][0][1][0] == pytest.approx(1.0, abs=1e-6)
    assert h["previous_token"][0][0][1] < 0.5 and h["induction"][0][1][1] < 0.5  # zero heads: uniform attention
    assert h["induction"][0][0][0] < 0.2 and h["previous_token"][0][1][0] < 0.5
    # same answer from a checkpoint series with the default repeated-random-tokens probe
    save_config(m, tmp_path / "ck")
    torch.save(m.state_dict(), tmp_path / "ck" / "step_0.pt")
    r = analyze_series(open_series(str(tmp_path / "ck")), progress=False)
    assert r.head["previous_token"][0, 0, 0].item() == pytest.approx(1.0, abs=1e-6)
    assert r.head["induction"][0, 1, 0].item() == pytest.approx(1.0, abs=1e-6)
    # K-composition: the induction head reads the previous-token head's output through its keys, and only it
    K = torch.nan_to_num(r.composition["K"][0])  # a zero head's score is 0/0
    assert K[0, 0, 1, 0] > 0.3 and K[0, 0, 1, 0] == K.max()
    assert r.composition["Q"][0][0, 0, 1, 0].abs() < 1e-12  # its queries read token dims, which L0H0 never writes


# ---------------------------------------------------------------------------------------- recorder defaults
def test_analyze_a_recording_written_with_the_recorder_defaults(tmp_path):
    """A plain loop on a rotary/RMS/GQA/gated model with ``CircuitRecorder(model, store=DIR).attach(opt)`` and
    nothing else: factored weights, QK/OV spectra, scores, default repeated-random probe. ``sslens analyze DIR``
    equals TransformerLens's own circuits, eigenvalues, composition scores and patterns at the last step."""
    cfg = HookedTransformerConfig(**CONFIGS["rotary_rms_gqa_gated"], seed=0, device="cpu")
    model = HookedTransformer(cfg)
    W0 = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    rec = CircuitRecorder(model, store=tmp_path / "run", verbose=False).attach(opt)
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        model(torch.randint(0, 40, (8, 12), generator=g), return_type="loss").backward()
        opt.step()
        opt.zero_grad()
    rec.detach()
    assert main(["analyze", str(tmp_path / "run"), "--quiet"]) == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())["series"][0]
    assert m["steps"] == [0, 1, 2, 4] and m["head_ids"] == [0, 1, 2, 3] and m["meta"]["eig_space"] == "recorded"
    for l in range(2):
        s = f64(model.QK[l]).svd()[1].detach()
        assert m["head"]["QK.effective_rank"][-1][l] == pytest.approx(erank(s).tolist(), rel=1e-5)
        s = f64(model.OV[l]).svd()[1].detach()
        assert m["head"]["OV.stable_rank"][-1][l] == pytest.approx(((s**2).sum(-1) / s[:, 0] ** 2).tolist(), rel=1e-5)
        E = model.W_E.detach().double()
        lam = torch.linalg.eigvals(E @ f64(model.QK[l]).AB @ E.T)  # dense [head, vocab, vocab] eigenvalues
        assert m["head"]["qk_eig"][-1][l] == pytest.approx((lam.sum(-1).real / lam.abs().sum(-1)).tolist(), abs=1e-5)
    for mode in "QKV":
        want = model.all_composition_scores(mode).detach().double()
        assert torch.tensor(m["composition"][mode][-1], dtype=torch.float64) == pytest.approx(want, rel=1e-5, abs=1e-6)
    probe = Recording(tmp_path / "run").at(4)["probe.tokens"]
    assert probe.shape == (4, 12) and torch.equal(probe[:, :6], probe[:, 6:])  # the default repeated probe
    _, cache = model.run_with_cache(probe)
    for l in range(2):
        a = cache["pattern", l]
        assert m["head"]["entropy"][-1][l] == pytest.approx((-(a * torch.log(a + 1e-8)).sum(-1)).mean(dim=(0, 2)).tolist(),
                                                           rel=1e-5)
    W = model.blocks[1].attn.W_Q.detach()  # GQA: W_Q has a row per query head
    rc = ((W - W0["blocks.1.attn.W_Q"]).norm() / W0["blocks.1.attn.W_Q"].norm()).item()
    assert m["rel_change"]["blocks.1.attn.W_Q"][-1] == pytest.approx(rc, rel=1e-5)
    assert m["rel_change"]["blocks.1.attn.W_Q"][0] == 0


def test_a_subset_recording_keeps_model_layer_and_head_indices(tmp_path):
    cfg = HookedTransformerConfig(**CONFIGS["ln_mlp"], seed=0, device="cpu")
    model = HookedTransformer(cfg)
    CircuitRecorder(model, store=tmp_path / "run", layers=[1], heads=[1], schedule=[], verbose=False).record(0)
    assert main(["analyze", str(tmp_path / "run"), "--quiet", "--layers", "1", "--heads", "1"]) == 0
    df = analyze_recording(tmp_path / "run", progress=False).to_pandas()
    assert set(df["layer"].dropna()) == {1} and set(df["head"].dropna()) == {1}
    s = f64(model.QK[1]).svd()[1].detach()[1]
    got = df[(df.metric == "QK.effective_rank")].value.item()
    assert got == pytest.approx(erank(s).item(), rel=1e-5)
    assert "L1H1 step 0" in (tmp_path / "run" / "report.html").read_text()


def test_an_sslens_run_gets_its_theory_report_and_the_series_analysis(tmp_path):
    run = tmp_path / "ss"
    argv = ["train", "scan-snap", "--preset", "syn-small", "--batch", "4", "--seq-len", "6", "--steps", "4",
            "--checkpoint-every", "2", "--quiet", "--out", str(run)]
    assert main(argv) == 0
    assert main(["analyze", str(run), "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert {"metrics.json", "report.html", "series.json", "series.html"} <= {p.name for p in (tmp_path / "a").iterdir()}
    assert "checks" in json.loads((tmp_path / "a" / "metrics.json").read_text())  # the theory analyzer's own
    s = json.loads((tmp_path / "a" / "series.json").read_text())["series"][0]
    from sslens.store import RunStore

    model = RunStore(run).load_model()  # the final weights = the last recorded step
    step = s["steps"][-1]
    assert step == 4
    sv = f64(model.QK[0]).svd()[1].detach()
    # the recorder stores float32 spectra: effective rank to float32 precision of the small singular values
    assert s["head"]["QK.effective_rank"][-1][0] == pytest.approx(erank(sv).tolist(), rel=1e-4)


def test_a_spectra_only_recording_uses_the_recorded_scalars(tmp_path):
    """No weights, no patterns: rank metrics from QK/OV.sv, entropy/induction from the recorder's scalars (the
    definitions of sslens.metrics, the analysis' own), condensation from its cos_top1."""
    model = HookedTransformer(HookedTransformerConfig(**CONFIGS["ln_mlp"], seed=0, device="cpu"))
    CircuitRecorder(model, store=tmp_path / "run", spectra_only=True, mlp=True, schedule=[], verbose=False).record(0)
    assert main(["analyze", str(tmp_path / "run"), "--quiet"]) == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())["series"][0]
    assert m["meta"]["pattern_scores"] == "recorder scalars (no patterns stored)" and m["composition"] == {}
    probe = Recording(tmp_path / "run").at(0)["probe.tokens"]
    probe.shape[1] // 2
    _, cache = model.run_with_cache(probe)
    for l in range(2):
        a = cache["pattern", l]
        got = pattern_scores(a, detection_patterns(probe))
        for name in ("entropy", "induction", "previous_token", "duplicate_token"):
            assert m["head"][name][0][l] == pytest.approx(got[name].tolist(), rel=1e-5), name
        s = f64(model.QK[l]).svd()[1].detach()
        assert m["head"]["QK.effective_rank"][0][l] == pytest.approx(erank(s).tolist(), rel=1e-5)
        W = model.blocks[l].mlp.W_in.detach().double().T
        Wn = W / W.norm(dim=1, keepdim=True)
        assert m["layer"]["mlp_condensation"][0][l] == pytest.approx(torch.linalg.eigvalsh(Wn @ Wn.T)[-1].item() / W.shape[0],
                                                                     rel=1e-5)
