"""Train many Y/Z-model runs at once with the count engine; write the same run stores as ``sslens.train``.

Exactness: each run draws its init and batches from ``torch.Generator(seed)`` exactly as
``sslens.train.train`` does (init Z then Y, then ``task.batch`` each step), so an engine run sees the
same sequences as the HookedTransformer run with the same config, and runs that share (seed, init)
share one data stream (sampled once). Only the model math changes: counts instead of positions.
Supported: SGD with momentum and weight decay, constant rates (the Scan&Snap setting); anything else
raises naming the field.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sslens.engine.counts import loss_from_support, support_counts, support_of
from sslens.errors import SslensError, require
from sslens.models.scan_snap import DTYPES, init_Z_Y, scan_snap
from sslens.store import RunStore
from sslens.tasks import build_task
from sslens.train import TrainConfig, training_state

SAME = ("steps", "batch")


def _check(cfgs: list[TrainConfig]) -> None:
    require(len(cfgs) >= 1, "configs", "no runs", "one or more TrainConfig")
    c0 = cfgs[0]
    for i, c in enumerate(cfgs):
        require(c.model.get("kind") == "scan_snap", f"configs[{i}].model.kind", f"got {c.model.get('kind')!r}", "scan_snap")
        require(c.optimizer == "sgd", f"configs[{i}].optimizer", f"got {c.optimizer!r}", "sgd (the engine implements SGD with momentum)")
        require(c.lr_schedule == "constant", f"configs[{i}].lr_schedule", f"got {c.lr_schedule!r}", "constant")
        require(c.grad_clip is None, f"configs[{i}].grad_clip", f"got {c.grad_clip!r}", "None")
        unknown = set(c.lr) - {"blocks.0.attn.W_Q", "unembed.W_U"}
        require(not unknown, f"configs[{i}].lr", f"unsupported keys {sorted(unknown)}", "blocks.0.attn.W_Q, unembed.W_U")
        for f in SAME:
            require(getattr(c, f) == getattr(c0, f), f"configs[{i}].{f}", "differs within one engine batch", f"{getattr(c0, f)!r} like configs[0]")
        require(c.task == c0.task, f"configs[{i}].task", "differs within one engine batch", "the same task (group runs by spec)")
        for k in ("M", "n_ctx", "dtype"):
            require(c.model.get(k) == c0.model.get(k), f"configs[{i}].model.{k}", "differs within one engine batch", repr(c0.model.get(k)))


def train_many(
    cfgs: list[TrainConfig],
    outs: list[str | Path] | None = None,
    progress: bool = True,
    record: str = "ends",
) -> list[dict]:
    """Train every config with the count engine; returns per run ``{"Z", "Y", "losses", "diverged_at"}``.

    ``outs`` (one directory per run) writes run stores: config.json, checkpoints at 0 and the end
    (model parameters in the HookedTransformer's names; no optimizer state), metrics.jsonl, COMPLETE, and
    recordings made by the real CircuitRecorder at ``record`` = "ends" (0 and last) or "schedule"
    (the config's schedule).
    """
    _check(cfgs)
    require(record in ("ends", "schedule"), "record", f"got {record!r}", "ends, schedule")
    c0 = cfgs[0]
    task = build_task(c0.task)
    spec = task.spec
    M, dtype = c0.model["M"], DTYPES[c0.model.get("dtype", "float32")]
    R = len(cfgs)

    # one data stream per (seed, init), drawn exactly as sslens.train.train draws it
    keys = sorted({(c.seed, c.model.get("init", "zero")) for c in cfgs})
    gens, Z0, Y0 = {}, {}, {}
    for key in keys:
        g = torch.Generator().manual_seed(key[0])
        Z0[key], Y0[key] = init_Z_Y(M, key[1], g, dtype)
        gens[key] = g
    stream = torch.tensor([keys.index((c.seed, c.model.get("init", "zero"))) for c in cfgs])
    Z = torch.stack([Z0[(c.seed, c.model.get("init", "zero"))] for c in cfgs]).clone()
    Y = torch.stack([Y0[(c.seed, c.model.get("init", "zero"))] for c in cfgs]).clone()
    eta_Z = torch.tensor([c.lr["blocks.0.attn.W_Q"] for c in cfgs], dtype=dtype)[:, None, None]
    eta_Y = torch.tensor([c.lr["unembed.W_U"] for c in cfgs], dtype=dtype)[:, None, None]
    mom = torch.tensor([c.momentum for c in cfgs], dtype=dtype)[:, None, None]
    wd = torch.tensor([c.weight_decay for c in cfgs], dtype=dtype)[:, None, None]
    buf_Z, buf_Y = torch.zeros_like(Z), torch.zeros_like(Y)
    alive = torch.ones(R, dtype=torch.bool)
    diverged_at = [None] * R
    snaps = {0: (Z.clone(), Y.clone())}
    sched = [set(c.schedule()) if record == "schedule" else {0, c.steps} for c in cfgs]
    want = set().union(*sched)
    losses = torch.empty(c0.steps, R, dtype=torch.float64)

    sup_k, mask_k = support_of(spec)
    klass_of = {(c.m, c.n): k for k, c in enumerate(spec.classes)}
    bar = tqdm(range(c0.steps), disable=not progress, desc=f"engine M={M} R={R}", unit="step", dynamic_ncols=True)
    for step in bar:
        batches = [task.batch(c0.batch, gens[k]) for k in keys]
        sups, cnts = [], []
        for t, n in batches:
            kl = torch.tensor([klass_of[(int(m), int(nn))] for m, nn in zip(t[:, -1].tolist(), n.tolist())])
            sups.append(sup_k[kl])
            cnts.append(support_counts(t, sup_k[kl], mask_k[kl], dtype))
        sup, counts = torch.stack(sups)[stream], torch.stack(cnts)[stream]
        query = torch.stack([t[:, -1] for t, _ in batches])[stream]
        target = torch.stack([n for _, n in batches])[stream]
        Zg, Yg = Z.requires_grad_(True), Y.requires_grad_(True)
        loss = loss_from_support(Zg, Yg, counts, sup, query, target)
        gZ, gY = torch.autograd.grad(loss.sum(), [Zg, Yg])
        Z, Y = Z.detach(), Y.detach()
        losses[step] = loss.detach().double()
        bad = ~torch.isfinite(loss.detach()) & alive
        for r in torch.nonzero(bad).flatten().tolist():
            diverged_at[r] = step + 1
        alive &= ~bad
        a = alive.to(dtype)[:, None, None]
        with torch.no_grad():
            gZ = torch.nan_to_num(gZ + wd * Z)
            gY = torch.nan_to_num(gY + wd * Y)
            buf_Z = torch.where(a > 0, mom * buf_Z + gZ, buf_Z)
            buf_Y = torch.where(a > 0, mom * buf_Y + gY, buf_Y)
            Z = Z - a * eta_Z * buf_Z
            Y = Y - a * eta_Y * buf_Y
        if step + 1 in want:
            snaps[step + 1] = (Z.clone(), Y.clone())
        if progress and step % 10 == 0:
            bar.set_postfix(loss=f"{loss.detach().mean().item():.3g}", alive=int(alive.sum()))
    bar.close()

    results = [{"Z": Z[r], "Y": Y[r], "losses": losses[:, r].tolist(), "diverged_at": diverged_at[r]} for r in range(R)]
    if outs is not None:
        require(len(outs) == R, "outs", f"{len(outs)} directories for {R} runs", "one per config")
        template = scan_snap(M, n_ctx=c0.model.get("n_ctx", spec.T), dtype=c0.model.get("dtype", "float32"))
        for r, (cfg, out) in enumerate(zip(cfgs, outs)):
            steps = sorted(s for s in sched[r] if s in snaps)
            write_store(out, cfg, template, {s: (snaps[s][0][r], snaps[s][1][r]) for s in steps}, results[r], task)
    return results


def write_store(out, cfg: TrainConfig, model, weights: dict, result: dict, task) -> None:
    """A run store like sslens.train writes: config, checkpoints (0, end), recordings, metrics, COMPLETE."""
    from sslens.hooks.recorder import CircuitRecorder

    store = RunStore(out)
    config = {"train": cfg.to_dict(), "model": cfg.model, "task": cfg.task, "engine": "counts"}
    if result["diverged_at"] is not None:
        config["diverged_at"] = result["diverged_at"]  # no COMPLETE marker either
    store.write_config(config)
    probe, probe_target = task.batch(cfg.probe_batch, torch.Generator().manual_seed(cfg.seed + 7_654_321))
    rec = CircuitRecorder(model, store=store, schedule=[], probe_tokens=probe, probe_target=probe_target)
    last = result["diverged_at"] - 1 if result["diverged_at"] else cfg.steps
    dummy = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    for step, (Z, Y) in weights.items():
        if step > last:
            continue
        with torch.no_grad():
            model.blocks[0].attn.W_Q[0].copy_(Z)
            model.unembed.W_U.copy_(Y)
        if cfg.record_n > 0:
            rec.record(step)
        if step in (0, last) or step == cfg.steps:
            tensors, meta = training_state(model, dummy, torch.Generator().manual_seed(cfg.seed))
            tensors = {k: v for k, v in tensors.items() if k.startswith("model.")}
            store.save_checkpoint(step, tensors, {"engine": "counts"})
    store.append_metrics({"step": i + 1, "loss": l} for i, l in enumerate(result["losses"][:last]))
    if result["diverged_at"] is None:
        store.mark_complete({"steps": cfg.steps, "engine": "counts"})


__all__ = ["train_many", "write_store"]
