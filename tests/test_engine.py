"""The count engine equals the HookedTransformer Y/Z model: loss and gradients on the same sequences,
100 SGD-momentum steps of whole runs, run stores that every analysis reads, exact sampling."""

import pytest
import torch

from sslens import compat
from sslens.analyses.c_n import trajectory
from sslens.data import sample, syn_medium, syn_small
from sslens.engine import counts_of, loss_from_counts, train_many
from sslens.errors import SslensError
from sslens.losses import last_token_ce
from sslens.models import scan_snap, scan_snap_config
from sslens.store import RunStore
from sslens.tasks import SequenceClassTask
from sslens.train import TrainConfig, train


def test_loss_and_gradients_equal_hooked_transformer(gen):
    s = syn_medium(3, T=40)
    R = 3
    Z = torch.randn(R, s.M, s.M, dtype=torch.float64, generator=gen)
    Y = torch.randn(R, s.M, s.M, dtype=torch.float64, generator=gen)
    seqs = [sample(s, 24, gen) for _ in range(R)]
    counts = torch.stack([counts_of(t, s.M, torch.float64) for t, _, _ in seqs])
    query = torch.stack([t[:, -1] for t, _, _ in seqs])
    target = torch.stack([n for _, n, _ in seqs])
    Zr, Yr = Z.clone().requires_grad_(), Y.clone().requires_grad_()
    loss = loss_from_counts(Zr, Yr, counts, query, target)
    loss.sum().backward()
    for r in range(R):
        model = scan_snap(s.M, n_ctx=40, dtype="float64", Z=Z[r], Y=Y[r])
        ref = last_token_ce(model(seqs[r][0]), seqs[r][1])
        ref.backward()
        assert abs(ref.item() - loss[r].item()) < 1e-6
        g = compat.grads(model)  # 3.x names and layouts on both TransformerLens lines
        assert torch.allclose(g["blocks.0.attn.W_Q"][0], Zr.grad[r], atol=1e-6)
        assert torch.allclose(g["unembed.W_U"], Yr.grad[r], atol=1e-6)


def cfg(spec, seed, eta_Z, eta_Y, init="random", momentum=0.9, steps=100, dtype="float64"):
    return TrainConfig(model=scan_snap_config(spec.M, n_ctx=spec.T, init=init, dtype=dtype),
                       task=SequenceClassTask(spec).to_dict(), steps=steps, batch=16,
                       lr={"blocks.0.attn.W_Q": eta_Z, "unembed.W_U": eta_Y}, momentum=momentum, seed=seed, record_n=0)


def test_100_sgd_momentum_steps_equal_the_hooked_transformer_runs():
    s = syn_small(T=16)
    cfgs = [cfg(s, 1, 1.0, 3.0), cfg(s, 2, 2.0, 2.0, init="zero", momentum=0.0)]
    res = train_many(cfgs, progress=False)
    for c, r in zip(cfgs, res):
        model, _ = train(c, progress=False)
        assert torch.allclose(model.blocks[0].attn.W_Q[0], r["Z"], atol=1e-5)
        assert torch.allclose(model.unembed.W_U, r["Y"], atol=1e-5)
        assert r["diverged_at"] is None


@pytest.mark.parametrize("optimizer,schedule,clip", [("adam", "constant", None), ("adamw", "warmup_cosine", 0.5),
                                                     ("sgd", "warmup_cosine", 0.1)])
def test_adam_adamw_schedules_and_clipping_equal_the_hooked_transformer_runs(optimizer, schedule, clip):
    s = syn_small(T=16)
    cfgs = [cfg(s, seed, 0.05 * seed, 0.1, steps=40) for seed in (1, 2)]
    for c in cfgs:
        c.optimizer, c.lr_schedule, c.grad_clip, c.warmup_steps = optimizer, schedule, clip, 5
        c.weight_decay = 0.01
        c.momentum = 0.9 if optimizer == "sgd" else 0.0
    res = train_many(cfgs, progress=False)
    for c, r in zip(cfgs, res):
        model, _ = train(c, progress=False)
        assert torch.allclose(model.blocks[0].attn.W_Q[0], r["Z"], atol=1e-6)
        assert torch.allclose(model.unembed.W_U, r["Y"], atol=1e-6)


def test_engine_run_store_is_a_normal_run_store(tmp_path):
    s = syn_small(T=24)
    c = cfg(s, 3, 1.0, 2.0, dtype="float32", steps=30)
    c.record_n = 6
    (res,) = train_many([c], [tmp_path / "run"], progress=False, record="schedule")
    store = RunStore(tmp_path / "run")
    assert store.complete and store.checkpoint_steps() == [0, 30]
    model = store.load_model()
    assert torch.allclose(model.blocks[0].attn.W_Q[0], res["Z"]) and torch.allclose(model.unembed.W_U, res["Y"])
    # the loss of the stored model on a fixed batch equals the engine's own loss on it
    tokens, nxt, _ = sample(s, 32, torch.Generator().manual_seed(5))
    with torch.no_grad():
        a = last_token_ce(model(tokens), nxt).item()
        b = loss_from_counts(res["Z"][None], res["Y"][None], counts_of(tokens, s.M)[None], tokens[None, :, -1], nxt[None]).item()
    assert abs(a - b) < 1e-5
    assert [r["step"] for r in store.read_metrics()] == list(range(1, 31))
    traj = trajectory(tmp_path / "run")  # recordings by the real CircuitRecorder on the schedule
    assert traj.steps == c.schedule()
    assert torch.allclose(traj.z[-1], res["Z"].double(), atol=1e-6)


def test_counts_equal_per_token_counts_and_statistics():
    """The engine counts the very tokens the per-token sampler draws; their statistics are Multinomial(T-1, P)."""
    s = syn_small()
    g = torch.Generator().manual_seed(0)
    tokens, nxt, klass = sample(s, 3000, g)
    c = counts_of(tokens, s.M, torch.float64)
    assert torch.equal(c, torch.stack([torch.bincount(t[:-1], minlength=s.M) for t in tokens]).double())
    P = s.P()
    for k in range(s.K):
        ck = c[klass == k]
        n = ck.shape[0]
        mean, var = ck.mean(0), ck.var(0)
        Em, Ev = 127 * P[k], 127 * P[k] * (1 - P[k])
        # mean within 5 standard errors (false alarm per token ~6e-7)
        assert torch.all((mean - Em).abs() <= 5 * (Ev / n).sqrt() + 1e-12)
        # variance within 25 % where the token occurs (a chi-square band far wider than its spread at n ~ 1500)
        sel = P[k] > 0
        assert torch.all((var[sel] / Ev[sel] - 1).abs() < 0.25)


def test_unsupported_configs_name_the_field():
    s = syn_small(T=8)
    bad = cfg(s, 1, 1.0, 1.0)
    bad.model = {**bad.model, "kind": "standard"}
    with pytest.raises(SslensError, match=r"^configs\[0\]\.model\.kind"):
        train_many([bad], progress=False)
    adam = cfg(s, 1, 1.0, 1.0)
    adam.optimizer = "adam"
    with pytest.raises(SslensError, match=r"^configs\[1\]\.optimizer"):
        train_many([cfg(s, 1, 1.0, 1.0), adam], progress=False)
    with pytest.raises(SslensError, match=r"^configs\[1\]\.steps"):
        train_many([cfg(s, 1, 1.0, 1.0), cfg(s, 1, 1.0, 1.0, steps=5)], progress=False)


def test_diverged_run_is_frozen_and_reported(tmp_path):
    s = syn_small(T=16)
    good, bad = cfg(s, 1, 1.0, 1.0, steps=20, dtype="float32"), cfg(s, 1, 3e38, 3e38, steps=20, dtype="float32")
    res = train_many([good, bad], [tmp_path / "good", tmp_path / "bad"], progress=False)
    assert res[0]["diverged_at"] is None and res[1]["diverged_at"] is not None
    assert torch.isfinite(res[0]["Z"]).all()  # the other run is untouched
    bad_store = RunStore(tmp_path / "bad")
    assert not bad_store.complete and bad_store.read_config()["diverged_at"] == res[1]["diverged_at"]
    assert len(bad_store.read_metrics()) == res[1]["diverged_at"] - 1
    # the healthy run equals a run trained alone
    (alone,) = train_many([good], progress=False)
    assert torch.allclose(alone["Z"], res[0]["Z"]) and RunStore(tmp_path / "good").complete
    # the diverged run kept its weights through the remaining masked steps (momentum 0.9 included): those of the same
    # run stopped one step before its divergence (its Y already holds inf there: the loss was -0.0, not yet nan)
    t = res[1]["diverged_at"]
    assert 1 < t < 20
    (stopped,) = train_many([cfg(s, 1, 3e38, 3e38, steps=t - 1, dtype="float32")], progress=False)
    assert stopped["diverged_at"] is None
    for k in ("Z", "Y"):
        assert torch.allclose(res[1][k], stopped[k], rtol=1e-6, atol=0, equal_nan=True), k
        assert torch.equal(res[1][k].isnan(), stopped[k].isnan()), k


def test_support_form_equals_dense_counts(gen):
    """The engine's support-restricted loss equals the dense count loss (and so the HookedTransformer)."""
    from sslens.engine.counts import loss_from_support, support_counts, support_of

    s = syn_medium(3, T=30)
    R = 2
    Z = torch.randn(R, s.M, s.M, dtype=torch.float64, generator=gen, requires_grad=True)
    Y = torch.randn(R, s.M, s.M, dtype=torch.float64, generator=gen, requires_grad=True)
    tokens, nxt, klass = sample(s, 20, gen)
    sup_k, mask_k = support_of(s)
    dense = loss_from_counts(Z, Y, counts_of(tokens, s.M, torch.float64).expand(R, -1, -1), tokens[:, -1].expand(R, -1), nxt.expand(R, -1))
    sup = sup_k[klass]
    cs = support_counts(tokens, sup, mask_k[klass], torch.float64)
    assert torch.equal(cs.sum(1), torch.full((20,), 29.0, dtype=torch.float64))  # every contextual token counted once
    sparse = loss_from_support(Z, Y, cs.expand(R, -1, -1), sup.expand(R, -1, -1), tokens[:, -1].expand(R, -1), nxt.expand(R, -1))
    gd = torch.autograd.grad(dense.sum(), [Z, Y])
    gs = torch.autograd.grad(sparse.sum(), [Z, Y])
    assert torch.allclose(dense, sparse, atol=1e-12)
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(gd, gs))


def test_engine_flushes_a_group_once_before_any_complete(tmp_path, monkeypatch):
    """Stores are written without per-file fsync, flushed by one os.sync, and only then marked COMPLETE (a power
    loss mid-write leaves no COMPLETE on an unflushed run); a store written without recording loads as a model."""
    import os

    s = syn_small(T=24)
    cfgs = [cfg(s, 3, 1.0, r, dtype="float32", steps=5) for r in (1.0, 2.0)]
    outs = [tmp_path / "a", tmp_path / "b"]
    fsyncs, syncs = [], []
    real_fsync, real_sync = os.fsync, os.sync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))[1])
    monkeypatch.setattr(os, "sync", lambda: (syncs.append([(d / "COMPLETE").exists() for d in outs]
                                                          + [(d / "metrics.jsonl").exists() for d in outs]), real_sync())[1])
    res = train_many(cfgs, outs, progress=False)
    assert syncs == [[False, False, True, True]]  # one sync, after the files and before any COMPLETE
    assert len(fsyncs) == len(outs)  # one fsync per COMPLETE marker, none for the other files
    for r, d in zip(res, outs):
        store = RunStore(d)
        assert store.complete and store.checkpoint_steps() == [0, 5]
        assert torch.equal(store.load_model().blocks[0].attn.W_Q[0], r["Z"])



def test_block_products_equal_dense_and_the_hooked_transformer_runs(gen):
    """The class-block decoder products (engine/blocks.py) give the dense products' loss and gradients, and whole
    runs (SGD momentum + weight decay; AdamW + clipping) equal the HookedTransformer runs."""
    from sslens.data.sequence_classes import SequenceClass, SequenceClassSpec
    from sslens.engine.blocks import ClassBlocks, loss_and_grads_blocks
    from sslens.engine.grad import loss_and_grads
    from sslens.engine.sampler import CountBatch, Supports

    s = syn_medium(3, T=24)
    sup = Supports(s)
    blocks = ClassBlocks.of(sup)
    assert (blocks.c, blocks.d, blocks.K) == (10, 10, 6)
    batch = CountBatch.stack([sup.from_tokens(*sample(s, 32, gen)[:2], dtype=torch.float64) for _ in range(3)])
    Z, Y = (torch.randn(3, s.M, s.M, dtype=torch.float64, generator=gen) for _ in range(2))
    loss, gZ, gY = loss_and_grads(Z, Y, batch)
    Y_C, Y_D, Y_rest = blocks.split(Y)
    loss_b, gZ_b, gY_b = loss_and_grads_blocks(Z, [Y_C, Y_D], batch, blocks)
    assert torch.allclose(loss, loss_b, atol=1e-12) and torch.allclose(gZ, gZ_b, atol=1e-12)
    assert torch.allclose(gY, blocks.join(gY_b + [torch.zeros_like(Y_rest)]), atol=1e-12)  # no gradient in Y_rest
    # float32 logits so far apart that the target's probability underflows: the loss is still log_softmax's
    from sslens.engine.counts import loss_from_support

    Z32, Y32 = Z.float(), 80 * Y.float()
    b32 = CountBatch(batch.support, batch.counts.float(), batch.query, batch.target, batch.klass)
    ref = loss_from_support(Z32, Y32, b32.counts, b32.support, b32.query, b32.target)  # F.cross_entropy
    assert torch.isfinite(ref).all() and ref.min() > 100  # mean losses: many samples far past exp(-87) underflow
    assert torch.allclose(loss_and_grads(Z32, Y32, b32)[0], ref, rtol=1e-5)
    assert torch.allclose(loss_and_grads_blocks(Z32, blocks.split(Y32)[:2], b32, blocks)[0], ref, rtol=1e-5)
    sgd = cfg(s, 1, 2.0, 4.0, steps=15)
    sgd.weight_decay = 0.01
    adamw = cfg(s, 2, 0.05, 0.1, steps=15)
    adamw.optimizer, adamw.grad_clip, adamw.weight_decay, adamw.momentum = "adamw", 0.5, 0.0, 0.0  # rows without
    # gradients skip the optimizer without decay, and take it with decay (sgd)
    for c in (sgd, adamw):
        (r,) = train_many([c], progress=False, products="blocks")
        (d,) = train_many([c], progress=False, products="dense")
        model, _ = train(c, progress=False)
        assert torch.allclose(r["Z"], d["Z"], atol=1e-10) and torch.allclose(r["Y"], d["Y"], atol=1e-10)
        assert torch.allclose(model.blocks[0].attn.W_Q[0], r["Z"], atol=1e-6)
        assert torch.allclose(model.unembed.W_U, r["Y"], atol=1e-6)
    # supports that are not common + disjoint blocks: no block layout, and asking for one names the field
    odd = SequenceClassSpec(M=6, classes=(SequenceClass(4, 5, {0: 1.0, 1: 1.0}), SequenceClass(5, 4, {1: 1.0, 2: 1.0, 3: 1.0})), T=8)
    assert ClassBlocks.of(Supports(odd)) is None
    bad = TrainConfig(model=scan_snap_config(6, n_ctx=8), task=SequenceClassTask(odd).to_dict(), steps=2, batch=4,
                      lr={"*": 1.0}, record_n=0)
    with pytest.raises(SslensError, match=r"^products"):
        train_many([bad], progress=False, products="blocks")
