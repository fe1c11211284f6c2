"""Train many Y/Z-model runs at once with the count engine; write the same run stores as ``sslens.train``.

Exactness: each run draws its init and batches from ``torch.Generator(seed)`` exactly as
``sslens.train.train`` does (init Z then Y, then ``task.batch`` each step), so with ``sampler="tokens"``
an engine run sees the very sequences of the HookedTransformer run with the same config; runs that
share (seed, init) share one data stream (sampled once). ``sampler="counts"`` draws the counts directly
(same distribution, a different stream; see ``sampler.py``). Optimizers: SGD (momentum, weight decay),
Adam, AdamW, constant or warmup-cosine rates, gradient clipping -- as ``sslens.train`` applies them.
"""

from __future__ import annotations

import fnmatch
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor

from sslens import compat
from sslens.engine.blocks import ClassBlocks, loss_and_grads_blocks
from sslens.engine.grad import loss_and_grads
from sslens.engine.optim import BatchedOptimizer, per_run
from sslens.engine.sampler import CountBatch, Supports
from sslens.errors import SslensError, require
from sslens.models.scan_snap import DTYPES, TRAINABLE, frozen_params, init_Z_Y, scan_snap
from sslens.progress import bar as progress_bar
from sslens.store import RunStore, deferred_fsync
from sslens.tasks import SequenceClassTask, build_task
from sslens.theory.c_n import composition, distinct_entropy
from sslens.train import TrainConfig, lr_factor

if TYPE_CHECKING:
    from sslens.compat import HookedModel as HookedTransformer

SAMPLERS = ("tokens", "counts")
CHECKPOINTS = ("ends", "end")
PRODUCTS = ("auto", "blocks", "dense")
W_Q, W_U = TRAINABLE  # "blocks.0.attn.W_Q" (Z), "unembed.W_U" (Y)


def rate_of(lr: dict, name: str) -> float:
    """The rate ``sslens.train.param_groups`` gives parameter ``name`` (exact name, else first pattern)."""
    if name in lr:
        return float(lr[name])
    rate = next((v for k, v in lr.items() if fnmatch.fnmatchcase(name, k)), None)
    if rate is None:
        raise SslensError("lr", f"no rate for parameter {name}", "a pattern matching it, e.g. '*'")
    return float(rate)


def group_key(cfg: TrainConfig) -> tuple:
    """Runs with equal keys can share one engine batch."""
    m = cfg.model
    return (repr(cfg.task), m.get("M"), m.get("n_ctx"), m.get("dtype", "float32"), cfg.steps, cfg.batch, cfg.optimizer)


def engine_ok(cfg: TrainConfig) -> bool:
    """Whether the count engine can train ``cfg`` (the Y/Z model on sequence classes)."""
    return cfg.model.get("kind") == "scan_snap" and cfg.task.get("kind") == "sequence_classes"


def _check(cfgs: list[TrainConfig]) -> None:
    require(len(cfgs) >= 1, "configs", "no runs", "one or more TrainConfig")
    for i, c in enumerate(cfgs):
        require(c.model.get("kind") == "scan_snap", f"configs[{i}].model.kind", f"got {c.model.get('kind')!r}", "scan_snap")
        require(c.task.get("kind") == "sequence_classes", f"configs[{i}].task.kind", f"got {c.task.get('kind')!r}", "sequence_classes")
        for name in TRAINABLE:
            rate_of(c.lr, name)
        k0, k = group_key(cfgs[0]), group_key(c)
        for field, a, b in zip(("task", "model.M", "model.n_ctx", "model.dtype", "steps", "batch", "optimizer"), k0, k):
            require(a == b, f"configs[{i}].{field}", "differs within one engine batch", "the value of configs[0] (group runs by sslens.engine.runner.group_key)")


def train_many(
    cfgs: list[TrainConfig],
    outs: list[str | Path] | None = None,
    progress: bool | None = None,
    record: str = "ends",
    sampler: str = "tokens",
    checkpoints: str = "ends",
    on_step: Callable[[int], None] | None = None,
    products: str = "auto",
) -> list[dict]:
    """Train every config with the count engine; returns per run ``{"Z", "Y", "losses", "diverged_at"}``.

    ``outs`` (one directory per run) writes run stores: config.json, checkpoints at 0 and the end
    (``checkpoints="ends"``) or only the end (``"end"``), each with every HookedTransformer parameter
    (no optimizer state), metrics.jsonl, COMPLETE, and -- when the config records (``record_n > 0``) --
    recordings by the real CircuitRecorder at ``record`` = "ends" (0 and last) or "schedule".
    ``on_step(n_runs)`` is called after every step (sweep progress). ``products``: the decoder products on the
    class blocks of the supports (``blocks``, sslens.engine.blocks), dense (``dense``), or blocks where the spec
    has them and they do fewer multiply-adds (``auto``); the same numbers up to rounding.
    """
    _check(cfgs)
    require(record in ("ends", "schedule"), "record", f"got {record!r}", "ends, schedule")
    require(sampler in SAMPLERS, "sampler", f"got {sampler!r}", ", ".join(SAMPLERS))
    require(checkpoints in CHECKPOINTS, "checkpoints", f"got {checkpoints!r}", ", ".join(CHECKPOINTS))
    require(products in PRODUCTS, "products", f"got {products!r}", ", ".join(PRODUCTS))
    c0 = cfgs[0]
    task = build_task(c0.task)
    assert isinstance(task, SequenceClassTask)
    spec, supports = task.spec, Supports(task.spec)
    M, dtype = c0.model["M"], DTYPES[c0.model.get("dtype", "float32")]
    require(M == spec.M, "configs[0].model.M", f"{M} but the task has {spec.M} tokens", str(spec.M))
    R, steps = len(cfgs), c0.steps

    # one data stream per (seed, init), drawn exactly as sslens.train.train draws it
    def key(c):
        return (c.seed, c.model.get("init", "zero"))

    keys = sorted({key(c) for c in cfgs})
    gens, inits = {}, {}
    for k in keys:
        g = torch.Generator().manual_seed(k[0])
        inits[k] = init_Z_Y(M, k[1], g, dtype)
        gens[k] = g
    stream = torch.tensor([keys.index(key(c)) for c in cfgs])
    Z = torch.stack([inits[key(c)][0] for c in cfgs])
    Y = torch.stack([inits[key(c)][1] for c in cfgs])
    # Y as ClassBlocks pieces when the block products are cheaper (docs/engine.md, "Block products"); else dense
    blocks = ClassBlocks.of(supports) if products != "dense" else None
    require(products != "blocks" or blocks is not None, "products", "blocks, but the task's class supports are not "
            "common tokens + disjoint equal-sized distinct blocks", "auto, dense")
    if products == "auto" and blocks is not None and not blocks.worth_it(M, c0.batch):
        blocks = None
    # Z's rows of query tokens and Y's rows of contextual tokens get gradients; the other rows (Z_rest, Y_rest)
    # never do, so they only move under weight decay and skip the optimizer when every run's decay is 0
    qrows = sorted(set(spec.queries))
    zorder = torch.tensor(qrows + sorted(set(range(M)) - set(qrows)))
    zinv, qpos = torch.argsort(zorder), torch.full((M,), -1, dtype=torch.long)
    qpos[qrows] = torch.arange(len(qrows))
    Zp = Z[:, zorder]
    Y_pieces = blocks.split(Y) if blocks is not None else [Y]
    live = [Zp[:, : len(qrows)].contiguous(), *Y_pieces[:2]]
    still = [Zp[:, len(qrows) :].contiguous(), *Y_pieces[2:]]
    lr_Z, lr_Y = (per_run([rate_of(c.lr, n) for c in cfgs], dtype) for n in TRAINABLE)
    lrs = [lr_Z] + [lr_Y] * (len(live) - 1) + [lr_Z] + [lr_Y] * (len(still) - 1)
    decays = any(c.weight_decay != 0 for c in cfgs)
    params = live + still if decays else live
    opt = BatchedOptimizer(
        c0.optimizer, params, lrs[: len(params)],
        per_run([c.momentum for c in cfgs], dtype), per_run([c.weight_decay for c in cfgs], dtype),
        (per_run([c.betas[0] for c in cfgs], dtype), per_run([c.betas[1] for c in cfgs], dtype)),
    )
    zero_grads = [torch.zeros_like(p) for p in still] if decays else []

    def weights(params: list[Tensor]) -> tuple[Tensor, Tensor]:
        """(Z, Y) in token order (copies)."""
        pieces = params if decays else params + still
        n = len(live)
        Z = torch.cat([pieces[0], pieces[n]], dim=1)[:, zinv]
        Y_all = pieces[1:n] + pieces[n + 1 :]
        return Z, blocks.join(Y_all) if blocks is not None else Y_all[0].clone()

    scheduled = any(c.lr_schedule != "constant" for c in cfgs)
    clip = torch.tensor([c.grad_clip if c.grad_clip is not None else float("inf") for c in cfgs], dtype=dtype)
    clipped = bool(torch.isfinite(clip).any())
    alive = torch.ones(R, dtype=torch.bool)
    diverged_at: list[int | None] = [None] * R
    sched = [set(c.schedule()) | {0, steps} if record == "schedule" else {0, steps} for c in cfgs]
    want = set().union(*sched)
    snaps = {0: weights(params)}
    losses = torch.empty(steps, R, dtype=torch.float64)

    def draw(k) -> CountBatch:
        if sampler == "counts":
            return supports.sample_counts(c0.batch, gens[k], dtype)
        tokens, target = task.batch(c0.batch, gens[k])
        return supports.from_tokens(tokens, target, dtype)

    bar = progress_bar(range(steps), progress=progress, desc=f"engine M={M} R={R}", unit="step", dynamic_ncols=True)
    for step in bar:
        batch = CountBatch.stack([draw(k) for k in keys]).index(stream)
        rows = qpos[batch.query]  # each sample's row in Z_Q
        if blocks is not None:
            loss, gZ, gY = loss_and_grads_blocks(params[0], params[1:3], batch, blocks, rows)
            grads = [gZ, *gY]
        else:
            loss, gZ, gY = loss_and_grads(params[0], params[1], batch, rows)
            grads = [gZ, gY]
        grads += zero_grads
        losses[step] = loss.double()
        bad = ~torch.isfinite(loss) & alive
        for r in torch.nonzero(bad).flatten().tolist():
            diverged_at[r] = step + 1  # as sslens.train: the step whose loss is non-finite; no update
        alive &= ~bad
        if not alive.all():  # a dead run's gradients are non-finite; keep them out of the clip norm and buffers
            grads = [g.nan_to_num_() for g in grads]
        if clipped:  # torch.nn.utils.clip_grad_norm_ over both parameters
            total = torch.sqrt(sum(g.square().sum((1, 2)) for g in grads))
            coef = torch.where(torch.isfinite(clip), (clip / (total + 1e-6)).clamp(max=1.0), torch.ones_like(clip))
            grads = [g * coef.view(-1, 1, 1) for g in grads]
        factor = per_run([lr_factor(c, step) for c in cfgs], dtype) if scheduled else 1.0
        params = opt.step(params, grads, alive, factor)
        if step + 1 in want:
            snaps[step + 1] = weights(params)
        if on_step is not None:
            on_step(R)
        if progress and step % 10 == 0:
            bar.set_postfix(loss=f"{loss[alive].mean().item() if alive.any() else float('nan'):.3g}", alive=int(alive.sum()))
    bar.close()

    Z, Y = weights(params)
    results = [{"Z": Z[r], "Y": Y[r], "losses": losses[:, r].tolist(), "diverged_at": diverged_at[r]} for r in range(R)]
    if outs is not None:
        require(len(outs) == R, "outs", f"{len(outs)} directories for {R} runs", "one per config")
        # a real model only to record through the CircuitRecorder; checkpoints need just the frozen weights
        template = scan_snap(M, n_ctx=c0.model.get("n_ctx", spec.T), dtype=c0.model.get("dtype", "float32")) \
            if any(c.record_n > 0 for c in cfgs) else None
        with deferred_fsync():  # one os.sync for the group; COMPLETE markers only after it
            for r, (cfg, out) in enumerate(zip(cfgs, outs)):
                weights = {s: (snaps[s][0][r], snaps[s][1][r]) for s in sorted(sched[r]) if s in snaps}
                write_store(out, cfg, template, weights, results[r], task, sampler, checkpoints, complete=False)
        # the Fig. 6 metric of each final Z (docs/theory.md §1.4), as sweeps' results.csv reads it from checkpoints
        entropy = distinct_entropy(composition(Z.double(), spec.P(), spec.queries), spec.distinct).mean(-1).tolist()
        for cfg, out, res, ent in zip(cfgs, outs, results, entropy):
            if res["diverged_at"] is None:
                with RunStore(out).writing() as store:
                    store.mark_complete({"steps": cfg.steps, "engine": "counts", "sampler": sampler,
                                         "result": {"entropy_distinct": ent}})
    return results


def write_store(out, cfg: TrainConfig, model: HookedTransformer | None, weights: dict, result: dict, task, sampler: str = "tokens",
                checkpoints: str = "ends", complete: bool = True) -> None:
    """A run store as sslens.train writes it: config, checkpoints, recordings, metrics, COMPLETE.

    A run whose loss became non-finite at step t keeps config.json (with ``"diverged_at": t``), the
    checkpoints and metrics up to t - 1, and no COMPLETE (``sslens train`` would have raised at t).
    Idempotent: the directory is locked (``RunStore.writing``: one writer, temp files of killed writers
    removed), a stale COMPLETE/DIVERGED is dropped first, and metrics.jsonl is rewritten, never appended to,
    so a re-run or resumed sweep leaves exactly one row per step. ``complete=False`` leaves COMPLETE to the
    caller (written after the files are flushed, :func:`sslens.store.deferred_fsync`).
    """
    store = RunStore(out)
    with store.writing():
        _write_store(store, cfg, model, weights, result, task, sampler, checkpoints, complete)


def _write_store(store: RunStore, cfg: TrainConfig, model: HookedTransformer | None, weights: dict, result: dict, task, sampler: str,
                 checkpoints: str, complete: bool = True) -> None:
    for marker in ("COMPLETE", "DIVERGED"):  # written again below if still true
        (store.path / marker).unlink(missing_ok=True)
    last = result["diverged_at"] - 1 if result["diverged_at"] else cfg.steps
    config = {"train": cfg.to_dict(), "model": cfg.model, "task": cfg.task, "engine": "counts", "sampler": sampler}
    if result["diverged_at"]:
        config["diverged_at"] = result["diverged_at"]
    store.write_config(config)
    frozen = _frozen(cfg.model["M"], cfg.model.get("n_ctx", cfg.task.get("spec", {}).get("T", 128)), cfg.model.get("dtype", "float32"))
    keep = {0, last} if checkpoints == "ends" else {last}
    rec = None
    if cfg.record_n > 0:
        from sslens.hooks.recorder import CircuitRecorder

        require(model is not None, "model", "recording needs the built model", "scan_snap(...) of this config")

        probe, probe_target = task.batch(cfg.probe_batch, torch.Generator().manual_seed(cfg.seed + 7_654_321))
        rec = CircuitRecorder(model, store=store, schedule=[], probe_tokens=probe, probe_target=probe_target)
    for step, (Z, Y) in weights.items():
        if step > last:
            continue
        if rec is not None:
            with torch.no_grad():
                P = compat.params(model)  # 3.x layouts; writable views on 4.x
                P[W_Q][0].copy_(Z)
                P[W_U].copy_(Y)
            rec.record(step)
        if step in keep:
            tensors = {**frozen, f"model.{W_Q}": Z[None].contiguous(), f"model.{W_U}": Y.contiguous()}
            store.save_checkpoint(step, tensors, {"engine": "counts"})
    if last in keep and last not in weights:  # a diverged run's last finite weights are not a snapshot
        pass
    store.write_metrics({"step": i + 1, "loss": v} for i, v in enumerate(result["losses"][:last]))
    if result["diverged_at"] is None and complete:
        store.mark_complete({"steps": cfg.steps, "engine": "counts", "sampler": sampler})


@functools.lru_cache(maxsize=8)
def _frozen(M: int, n_ctx: int, dtype: str) -> dict[str, Tensor]:
    """``frozen_params`` under checkpoint names, built once per shape (only ever written, never modified)."""
    return {f"model.{n}": p for n, p in frozen_params(M, n_ctx, dtype).items()}


def finished(store: RunStore) -> bool:
    """Complete, or diverged (a deterministic outcome: re-running gives the same divergence)."""
    return store.complete or (store.exists() and "diverged_at" in store.read_config())


__all__ = ["train_many", "write_store", "engine_ok", "group_key", "finished", "rate_of", "SAMPLERS"]
