"""``sslens train scan-snap ...``: one Scan&Snap run into a run directory."""

from __future__ import annotations

import argparse

from sslens.argtypes import min2_int, positive_float, positive_int, seed_int, step_count, unit_float
from sslens.constants import DTYPE_NAMES, INITS, OPTIMIZERS, PRESETS, Y_PARAM, Z_PARAM

EXAMPLE = """\
example:
  sslens train scan-snap --preset syn-medium --num-last 3 --eta-y 10 --eta-z 1 --steps 200 --out runs/med3
  sslens train scan-snap --out runs/med3 --steps 200 --resume     # continue it after a kill"""


def _check_size(a: argparse.Namespace) -> None:
    """Refuse, before building anything, a --num-last / --batch / --seq-len whose memory exceeds the machine's."""
    from sslens.data.sequence_classes import N_COMMON, N_DISTINCT_PER_CLASS
    from sslens.memory import check_memory
    from sslens.models.scan_snap import scan_snap_config

    K = 2 * a.num_last if a.preset == "syn-medium" else 2
    M = N_COMMON + N_DISTINCT_PER_CLASS * K + K // (2 if a.preset == "syn-medium" else 1) + K
    model = scan_snap_config(M, n_ctx=a.seq_len, init=a.init, dtype=a.dtype)
    check_memory(model, 1, field="--num-last" if a.preset == "syn-medium" else "--seq-len")
    check_memory(model, a.batch, field="--batch")


def scan_snap_train_config(a: argparse.Namespace):
    """The TrainConfig of the CLI flags (eta_Z on W_Q = Z, eta_Y on W_U = Y)."""
    from sslens.data.sequence_classes import preset
    from sslens.models.scan_snap import scan_snap_config
    from sslens.tasks import SequenceClassTask
    from sslens.train import TrainConfig

    _check_size(a)
    spec = preset(a.preset, num_last=a.num_last, T=a.seq_len)
    return TrainConfig(
        model=scan_snap_config(spec.M, n_ctx=spec.T, init=a.init, dtype=a.dtype),
        task=SequenceClassTask(spec).to_dict(),
        steps=a.steps,
        batch=a.batch,
        optimizer=a.optimizer,
        lr={Z_PARAM: a.eta_z, Y_PARAM: a.eta_y},
        momentum=a.momentum if a.optimizer == "sgd" else 0.0,
        weight_decay=a.weight_decay,
        seed=a.seed,
        checkpoint_every=a.checkpoint_every,
    )


def add_scan_snap_flags(p: argparse.ArgumentParser) -> None:
    """The flags of one Scan&Snap run (docs/theory.md §1.1-1.2)."""
    p.add_argument("--preset", choices=PRESETS, default="syn-small",
                   help="data: syn-small (M=34, 2 classes) or syn-medium (Fig. 6; size set by --num-last)")
    p.add_argument("--num-last", type=positive_int, default=1, help="syn-medium: number of query tokens")
    p.add_argument("--eta-y", type=positive_float, default=1.0, help="learning rate eta_Y of the decoder Y (W_U)")
    p.add_argument("--eta-z", type=positive_float, default=1.0, help="learning rate eta_Z of the attention Z (W_Q)")
    p.add_argument("--steps", type=step_count, default=100, help="optimizer steps")
    p.add_argument("--batch", type=positive_int, default=128, help="sequences per step")
    p.add_argument("--seq-len", type=min2_int, default=128, help="T: contextual tokens + the query")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="sgd (theory), adam (Fig. 5) or adamw")
    p.add_argument("--momentum", type=unit_float, default=0.9, help="SGD momentum (ignored by adam/adamw)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="weight decay (decoupled for adamw)")
    p.add_argument("--init", choices=INITS, default="zero", help="zero (Fig. 4) or nn.Linear's default (Fig. 6)")
    p.add_argument("--seed", type=seed_int, default=2, help="seed of the init and the data stream (0 .. 2**63-1)")
    p.add_argument("--dtype", choices=DTYPE_NAMES, default="float32", help="parameter dtype")
    p.add_argument("--checkpoint-every", type=positive_int, default=10, help="steps between resumable checkpoints")


def register(sub) -> None:
    """Add ``train`` and its model verbs."""
    p = sub.add_parser("train", help="train a model into a run directory",
                       description="Train a model into a run directory (config.json, checkpoints/, recordings/, "
                                   "metrics.jsonl); a killed run resumes with --resume.", epilog=EXAMPLE)
    models = p.add_subparsers(dest="model", required=True, metavar="MODEL", parser_class=type(p))
    ss = models.add_parser("scan-snap", help="the Scan&Snap Y/Z model on sequence classes", epilog=EXAMPLE,
                           description="Train the Scan&Snap Y/Z model (docs/theory.md §1.1) on sequence classes, "
                                       "recording Z, Y and attention at log-spaced steps.")
    add_scan_snap_flags(ss)
    ss.add_argument("--out", required=True, help="run directory to create (or to continue with --resume)")
    ss.add_argument("--resume", action="store_true", help="continue a killed run from its last checkpoint")
    ss.add_argument("--quiet", action="store_true", help="no progress bar")
    ss.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    """Train, print where the run went and its final loss."""
    from sslens.store import check_out_path
    from sslens.train import train

    check_out_path(a.out, field="--out", kind="run")  # before building anything
    cfg = scan_snap_train_config(a)
    _, store = train(cfg, out=a.out, resume=a.resume, progress=not a.quiet)
    rows = store.read_metrics()
    tail = f" (final loss {rows[-1]['loss']:.3g} at step {rows[-1]['step']})" if rows else ""
    print(f"run written to {store.path}{tail}")
    return 0
