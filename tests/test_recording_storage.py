"""Recording storage (issue 9 item 2) and notebook use (item 3): factored weights, spectra, record-time scores,
selections, bytes per step, old recordings, the run lock, one recorder per model, repr / DataFrame / bad keys.
Every number is compared with an independent computation on the live TransformerLens model."""

from __future__ import annotations

import fcntl
import os
import warnings

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sslens.errors import SslensError
from sslens.hooks import CircuitRecorder, Recording
from sslens.hooks.recorder import condensation_scalars
from sslens.metrics import detection_patterns, pattern_scores
from sslens.store import RunStore


def tl_model(seed=0, **kw):
    base = dict(n_layers=2, d_model=16, d_head=8, n_heads=4, d_mlp=32, d_vocab=40, n_ctx=12, act_fn="gelu",
                normalization_type="LN", seed=seed, device="cpu")
    base.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return HookedTransformer(HookedTransformerConfig(**base))


def positivity(lam):
    return (lam.sum(-1).real / lam.abs().sum(-1)).float()


def train_steps(model, opt, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        loss = model(torch.randint(0, model.cfg.d_vocab, (4, model.cfg.n_ctx), generator=g), return_type="loss")
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("kw", [{}, {"n_key_value_heads": 2, "positional_embedding_type": "rotary",
                                     "normalization_type": "RMS"}])
def test_factored_weights_spectra_and_eigen_scores_equal_transformer_lens(kw):
    model = tl_model(**kw)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    W0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    rec = CircuitRecorder(model, schedule=[0, 3], verbose=False).attach(opt)
    train_steps(model, opt, 3)
    r, recording = rec.records[3], Recording(rec)
    for l in range(2):
        a = model.blocks[l].attn
        for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O"):
            assert torch.equal(r[f"blocks.{l}.attn.{name}"], getattr(a, name).detach()), name  # as the model holds them
        QK, OV = model.QK.AB[l].detach(), model.OV.AB[l].detach()
        assert r[f"blocks.{l}.attn.W_K"].shape[0] == 4  # GQA: TL's W_K is already per query head
        assert torch.allclose(recording.get(f"blocks.{l}.QK")[1], QK, atol=1e-6)
        assert torch.allclose(recording.get(f"blocks.{l}.OV")[1], OV, atol=1e-6)
        k = min(model.cfg.d_model, model.cfg.d_head)
        assert torch.allclose(r[f"blocks.{l}.QK.sv"], torch.linalg.svdvals(QK.double())[:, :k].float(), atol=1e-5)
        assert torch.allclose(r[f"blocks.{l}.OV.sv"], torch.linalg.svdvals(OV.double())[:, :k].float(), atol=1e-5)
        # eigenvalue positivity of the dense token-space circuits W_E QK W_E^T and W_E OV W_U (all eigenvalues)
        W_E, W_U = model.W_E.detach().double(), model.W_U.detach().double()
        qk_tok = W_E @ QK.double() @ W_E.T
        ov_tok = W_E @ OV.double() @ W_U
        assert torch.allclose(r[f"scores.blocks.{l}.qk_eig"], positivity(torch.linalg.eigvals(qk_tok)), atol=1e-4)
        assert torch.allclose(r[f"scores.blocks.{l}.ov_eig"], positivity(torch.linalg.eigvals(ov_tok)), atol=1e-4)
    for n, p in model.named_parameters():
        d = (p.detach() - W0[n]).norm()
        assert torch.allclose(r[f"scores.delta.{n}"], d, rtol=1e-5, atol=1e-7), n
        if W0[n].norm() > 0:
            assert torch.allclose(r[f"scores.rel_change.{n}"], d / W0[n].norm(), rtol=1e-5), n
        else:
            assert torch.isnan(r[f"scores.rel_change.{n}"]), n
    assert float(rec.records[0]["scores.delta.blocks.0.attn.W_Q"]) == 0.0


def test_default_probe_and_pattern_scores():
    model = tl_model(n_ctx=20)
    rec = CircuitRecorder(model, verbose=False)
    r = rec.record(0)
    toks, p = r["probe.tokens"], int(r["probe.period"])
    assert toks.shape == (4, 2 * p) and p == 10 and torch.equal(toks[:, :p], toks[:, p:])
    assert torch.equal(CircuitRecorder(tl_model(seed=5, n_ctx=20), verbose=False).probe_tokens, toks)  # seeded
    _, cache = model.run_with_cache(toks)
    for l in range(2):
        A = cache["pattern", l]
        assert torch.allclose(r[f"blocks.{l}.pattern"], A, atol=1e-6)
        # independent loops: targets of TransformerLens's head_detector patterns, averaged over (probe, query)
        # positions with a target; induction: the token after an earlier occurrence of the current token
        ind, dup, prev = [], [], []
        for b in range(toks.shape[0]):
            t = toks[b].tolist()
            for q in range(2 * p):
                earlier = [k for k in range(q) if t[k] == t[q]]
                if earlier:
                    dup.append(sum(A[b, :, q, k] for k in earlier))
                    ind.append(sum(A[b, :, q, k + 1] for k in earlier))
                if q >= 1:
                    prev.append(A[b, :, q, q - 1])
        assert torch.allclose(r[f"scores.blocks.{l}.induction"], torch.stack(ind).mean(0), atol=1e-6)
        assert torch.allclose(r[f"scores.blocks.{l}.duplicate_token"], torch.stack(dup).mean(0), atol=1e-6)
        assert torch.allclose(r[f"scores.blocks.{l}.previous_token"], torch.stack(prev).mean(0), atol=1e-6)
        ent = torch.stack([-(A[:, :, q, : q + 1] * A[:, :, q, : q + 1].log()).sum(-1) for q in range(2 * p)])
        assert torch.allclose(r[f"scores.blocks.{l}.entropy"], ent.mean(dim=(0, 1)), atol=1e-5)
    # the probe loss: TransformerLens's own loss, and on the repeated half (predictions of tokens p+1 .. 2p-1)
    per_tok = model(toks, return_type="loss", loss_per_token=True)  # [probe, pos - 1]
    assert float(r["scores.loss"]) == pytest.approx(per_tok.mean().item(), rel=1e-5)
    assert float(r["scores.loss_in_context"]) == pytest.approx(per_tok[:, p: 2 * p - 1].mean().item(), rel=1e-5)


def test_pattern_scores_known_answers():
    p, P = 5, 10
    ind = torch.zeros(1, 2, P, P)  # head 0: a perfect induction head; head 1: uniform causal attention
    for q in range(P):
        ind[0, 0, q, q - p + 1 if q >= p else 0] = 1.0
        ind[0, 1, q, : q + 1] = 1.0 / (q + 1)
    toks = torch.cat([torch.arange(p), torch.arange(p)])[None]  # p distinct tokens, repeated
    s = pattern_scores(ind, detection_patterns(toks))
    assert s["induction"][0] == 1.0 and s["duplicate_token"][0] == 0.0 and s["entropy"][0] == 0.0
    assert torch.isclose(s["entropy"][1], torch.log(torch.arange(1, P + 1).double()).mean())  # all queries
    assert torch.isclose(s["previous_token"][1], (1.0 / torch.arange(2, P + 1).double()).mean())
    assert torch.isclose(s["duplicate_token"][1], (1.0 / torch.arange(p + 1, P + 1).double()).mean())


def test_selection_spectra_only_mlp_and_estimated_bytes(tmp_path, capfd):
    model = tl_model()
    cases = {
        "default": dict(),
        "sel": dict(layers=[1], heads=[2, 0], mlp="weights", token_subset=torch.tensor([1, 5, 9])),
        "spectra": dict(spectra_only=True, mlp=True),
        "scalars": dict(mlp="scalars", patterns=False),
    }
    for name, kw in cases.items():
        rec = CircuitRecorder(model, store=tmp_path / name, schedule=[0], **kw).attach()
        rec.detach()
        assert f"~{rec.estimate_bytes() / 2**20:.2f} MB per recorded step, 1 recorded steps" in capfd.readouterr().err
        r = Recording(tmp_path / name).at(0)
        assert rec.estimate_bytes() == sum(t.numel() * t.element_size() for t in r.values()), name
    sel = Recording(tmp_path / "sel").at(0)
    assert torch.equal(sel["blocks.1.attn.W_Q"], model.blocks[1].attn.W_Q.detach()[[2, 0]])
    _, cache = model.run_with_cache(sel["probe.tokens"])
    assert torch.allclose(sel["blocks.1.pattern"], cache["pattern", 1][:, [2, 0]], atol=1e-6)
    assert "blocks.0.attn.W_Q" not in sel and "blocks.0.pattern" not in sel
    assert torch.allclose(sel["blocks.1.QK_tok"], (model.W_E[[1, 5, 9]] @ model.QK.AB[1, [2, 0]] @ model.W_E[[1, 5, 9]].T
                                                   / 8**0.5).detach(), atol=1e-5)
    assert torch.equal(sel["blocks.1.mlp.W_in"], model.blocks[1].mlp.W_in.detach())
    df = Recording(tmp_path / "sel").to_pandas()
    assert list(df.columns) == ["step", "layer", "head", "metric", "value"]
    ind = df[(df.metric == "induction") & (df["head"] == 0)]
    assert float(ind.value.iloc[0]) == pytest.approx(float(sel["scores.blocks.1.induction"][1]))
    rc = df[df.metric == "rel_change.attn.W_Q"]
    assert sorted(rc["layer"].tolist()) == [0, 1] and rc["head"].isna().all() and (rc.value == 0.0).all()  # at attach
    per_head = df.dropna(subset=["head"])
    assert sorted(per_head["head"].unique().tolist()) == [0, 2] and set(per_head["layer"]) == {1}
    row = df[(df.metric == "QK.sv1") & (df["head"] == 2)]
    assert float(row.value.iloc[0]) == pytest.approx(float(sel["blocks.1.QK.sv"][0, 0]))
    spec = Recording(tmp_path / "spectra")
    assert not [k for k in spec.keys() if not (k.startswith(("scores.", "probe.", "meta.")) or k.endswith(".sv"))]
    with pytest.raises(SslensError, match="^key: no 'blocks.0.QK' in this recording; allowed: .*blocks.0.QK.sv"):
        spec.get("blocks.0.QK")
    sc = Recording(tmp_path / "scalars").at(0)
    W_in = model.blocks[0].mlp.W_in.detach().double()  # [d_model, d_mlp]: neuron n's input vector is column n
    assert torch.allclose(sc["scores.blocks.0.mlp.W_in.sv"], torch.linalg.svdvals(W_in).float(), atol=1e-5)
    cols = W_in / W_in.norm(dim=0, keepdim=True)
    C = cols.T @ cols
    assert torch.isclose(sc["scores.blocks.0.mlp.W_in.cos_top1"], (torch.linalg.eigvalsh(C)[-1] / 32).float())
    assert "blocks.0.pattern" not in sc and "scores.blocks.0.induction" in sc
    parallel = torch.outer(torch.tensor([1.0, -2.0, 3.0]), torch.randn(5))  # fully condensed neurons
    assert torch.isclose(condensation_scalars(parallel)["cos_top1"], torch.tensor(1.0))


def test_old_dense_recordings_load(tmp_path):
    store = RunStore(tmp_path)
    QK = torch.randn(2, 16, 16)
    store.save_recording(0, {"blocks.0.QK": QK, "blocks.0.OV": QK + 1, "probe.tokens": torch.zeros(1, 3, dtype=torch.long)})
    rec = Recording(tmp_path)
    assert torch.equal(rec.get("blocks.0.QK")[0], QK) and "blocks.0.QK" in rec.keys()
    assert torch.allclose(rec.factored("blocks.0.OV", 0).AB, QK + 1)


def test_second_recorder_replaces_first_and_lock_held_until_detach(tmp_path, monkeypatch):
    model = tl_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    first = CircuitRecorder(model, store=tmp_path, schedule=range(100), verbose=False).attach(opt)
    with pytest.warns(UserWarning, match="already had an attached recorder"):
        second = CircuitRecorder(model, store=tmp_path, schedule=range(100), verbose=False).attach(opt)
    assert first._handle is None and model._sslens_recorder() is second
    writes = []  # a spy on sslens's own store (the writes still happen, to real files)
    orig = RunStore.save_recording
    monkeypatch.setattr(RunStore, "save_recording",
                        lambda self, step, *a, **k: (writes.append(step), orig(self, step, *a, **k)))
    train_steps(model, opt, 3)
    monkeypatch.undo()
    assert Recording(tmp_path).steps == [0, 1, 2, 3]
    assert writes == [1, 2, 3]  # once per step, not twice
    fd = os.open(tmp_path / ".lock", os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):  # another open file description cannot take it while attached
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        second.detach()
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released at detach
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def test_repr_html_and_bad_key(tmp_path):
    model = tl_model()
    CircuitRecorder(model, store=tmp_path, schedule=[0], verbose=False).attach().detach()
    rec = Recording(tmp_path)
    text = repr(rec)
    assert len(text) < 600 and "\n" not in text and "1 steps 0..0" in text and "MB/step" in text
    html = rec._repr_html_()
    assert "<table" in html and "blocks.*.attn.W_Q" in html and len(html) < 4000
    assert rec.key_groups()["blocks.*.attn.W_Q"] == 2
    with pytest.raises(SslensError) as e:
        rec.get("blocks.0.qk")
    assert "\n" not in str(e.value) and "blocks.0.QK, " in str(e.value)
    with pytest.raises(SslensError, match="^step: no recording at step 5; allowed: 0$"):
        rec.factored("blocks.0.QK", 5)


def test_bf16_model_records_in_its_dtype():
    model = tl_model(dtype=torch.bfloat16)
    r = CircuitRecorder(model, verbose=False).record(0)
    assert r["blocks.0.attn.W_Q"].dtype == torch.bfloat16 and r["blocks.0.QK.sv"].dtype == torch.float32
    QK = model.QK.AB[0].detach().float()
    assert torch.allclose(r["blocks.0.QK.sv"], torch.linalg.svdvals(QK)[:, :8], rtol=1e-2, atol=1e-3)


def test_diverged_weights_record_nan_spectra_not_a_crash():
    model = tl_model()
    with torch.no_grad():
        model.blocks[1].attn.W_Q[0, 0, 0] = float("inf")
        model.blocks[0].mlp.W_in[0, 0] = float("nan")
    r = CircuitRecorder(model, verbose=False, mlp="scalars").record(0)
    assert torch.isnan(r["blocks.1.QK.sv"]).all() and torch.isnan(r["scores.blocks.1.qk_eig"]).all()
    assert torch.isnan(r["scores.blocks.0.mlp.W_in.cos_top1"]) and r["scores.blocks.0.mlp.W_in.sv"].shape == (16,)
    ok = torch.linalg.svdvals(model.OV.AB[1].detach().double())[:, :8].float()  # untouched circuits still exact
    assert torch.allclose(r["blocks.1.OV.sv"], ok, atol=1e-5)
