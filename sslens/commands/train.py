"""``sslens train scan-snap ...``: one Scan&Snap run into a run store."""

from __future__ import annotations

import argparse

from sslens.commands.args import min2_int, positive_float, positive_int, seed_int, unit_float
from sslens.data.sequence_classes import PRESETS, preset
from sslens.models.scan_snap import INITS, scan_snap_config
from sslens.tasks import SequenceClassTask
from sslens.train import TrainConfig, train


def _check_size(a: argparse.Namespace) -> None:
    """Refuse, before building anything, a --num-last / --batch / --seq-len whose memory exceeds the machine's."""
    from sslens.data.sequence_classes import N_COMMON, N_DISTINCT_PER_CLASS
    from sslens.train import check_memory

    K = 2 * a.num_last if a.preset == "syn-medium" else 2
    M = N_COMMON + N_DISTINCT_PER_CLASS * K + K // (2 if a.preset == "syn-medium" else 1) + K
    model = scan_snap_config(M, n_ctx=a.seq_len, init=a.init, dtype=a.dtype)
    check_memory(model, 1, field="--num-last" if a.preset == "syn-medium" else "--seq-len")
    check_memory(model, a.batch, field="--batch")


def scan_snap_train_config(a: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of the CLI flags (eta_Z on W_Q = Z, eta_Y on W_U = Y)."""
    _check_size(a)
    spec = preset(a.preset, num_last=a.num_last, T=a.seq_len)
    return TrainConfig(
        model=scan_snap_config(spec.M, n_ctx=spec.T, init=a.init, dtype=a.dtype),
        task=SequenceClassTask(spec).to_dict(),
        steps=a.steps,
        batch=a.batch,
        optimizer=a.optimizer,
        lr={"blocks.0.attn.W_Q": a.eta_z, "unembed.W_U": a.eta_y},
        momentum=a.momentum if a.optimizer == "sgd" else 0.0,
        seed=a.seed,
        checkpoint_every=a.checkpoint_every,
    )


def add_scan_snap_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=PRESETS, default="syn-small", help="data preset (theory.md 1.2)")
    p.add_argument("--num-last", type=positive_int, default=1, help="Syn-Medium: number of query tokens")
    p.add_argument("--eta-y", type=positive_float, default=1.0, help="learning rate of the decoder Y (W_U)")
    p.add_argument("--eta-z", type=positive_float, default=1.0, help="learning rate of the attention Z (W_Q)")
    p.add_argument("--steps", type=positive_int, default=100)
    p.add_argument("--batch", type=positive_int, default=128)
    p.add_argument("--seq-len", type=min2_int, default=128, help="T: contextual tokens + the query")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    p.add_argument("--momentum", type=unit_float, default=0.9, help="SGD momentum")
    p.add_argument("--init", choices=INITS, default="zero", help="zero (Fig. 4) or nn.Linear default (Fig. 6)")
    p.add_argument("--seed", type=seed_int, default=2, help="0 .. 2**63-1")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--checkpoint-every", type=positive_int, default=10)


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model into a run directory")
    models = p.add_subparsers(dest="model", required=True, metavar="MODEL", parser_class=type(p))
    ss = models.add_parser("scan-snap", help="the Scan&Snap Y/Z model on sequence classes")
    add_scan_snap_flags(ss)
    ss.add_argument("--out", required=True, help="run directory")
    ss.add_argument("--resume", action="store_true", help="continue a killed run from its last checkpoint")
    ss.add_argument("--quiet", action="store_true", help="no progress bar")
    ss.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from sslens.store import check_out_path

    check_out_path(a.out, field="--out")  # before building anything
    cfg = scan_snap_train_config(a)
    _, store = train(cfg, out=a.out, resume=a.resume, progress=not a.quiet)
    rows = store.read_metrics()
    tail = f" (final loss {rows[-1]['loss']:.3g} at step {rows[-1]['step']})" if rows else ""
    print(f"run written to {store.path}{tail}")
    return 0
