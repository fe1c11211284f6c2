"""Training: per-parameter learning rates (eta_Y, eta_Z, ...), SGD/Adam/AdamW, seeds, checkpoints, resume.

``train(TrainConfig(...), out="runs/x")`` builds the model and task from their dicts, trains with a
tqdm bar, records circuits with :class:`sslens.hooks.CircuitRecorder`, checkpoints to the run store,
and resumes a killed run bitwise (model, optimizer and RNG state are in every checkpoint).
"""

from __future__ import annotations

import fnmatch
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from sslens import compat
from sslens.configs import build_model, build_task, model_config, task_config
from sslens.constants import LR_SCHEDULES, OPTIMIZERS, PROBE_SEED_OFFSET, SEED_MAX, STEPS_MAX
from sslens.errors import SslensError, TrainingDiverged, choice, require
from sslens.losses import get_loss
from sslens.memory import available_memory, check_memory, estimate_bytes  # noqa: F401 -- re-exported
from sslens.progress import bar as progress_bar
from sslens.schedule import log_schedule
from sslens.store import RunStore, check_out_path, load_params

if TYPE_CHECKING:  # the installed line's model class; TransformerLens is imported when a model is built
    from sslens.compat import HookedModel as HookedTransformer

LR_MAX = float(torch.finfo(torch.float32).max)


@dataclass
class TrainConfig:
    """Everything needed to rebuild a run. ``lr`` maps parameter names (fnmatch patterns) to rates.

    ``model`` and ``task`` stay the plain dicts ``config.json`` stores; they are validated through their
    kind's typed config (:func:`sslens.configs.model_config`, :func:`sslens.configs.task_config`).
    """

    model: dict
    task: dict
    steps: int = 100
    batch: int = 128
    optimizer: str = "sgd"
    lr: dict = field(default_factory=lambda: {"*": 1.0})
    momentum: float = 0.0
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    grad_clip: float | None = None
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    seed: int = 0
    checkpoint_every: int = 0  # 0: about 10 checkpoints per run
    record_n: int = 24  # log-spaced recording points (0: no recorder)
    record_extra: list = field(default_factory=list)  # further steps to record
    probe_batch: int = 8

    def __post_init__(self):
        require(isinstance(self.steps, int) and 1 <= self.steps <= STEPS_MAX, "steps", f"got {self.steps!r}",
                f"an int in 1 .. {STEPS_MAX}")
        require(isinstance(self.batch, int) and self.batch >= 1, "batch", f"got {self.batch!r}", "an int >= 1")
        choice(self.optimizer, "optimizer", OPTIMIZERS)
        choice(self.lr_schedule, "lr_schedule", LR_SCHEDULES)
        require(isinstance(self.lr, dict) and self.lr, "lr", "no learning rates", "{parameter pattern: rate > 0}")
        for k, v in self.lr.items():
            require(isinstance(v, (int, float)) and 0 <= v <= LR_MAX, f"lr[{k}]", f"got {v!r}",
                    f"a rate in [0, {LR_MAX:.3g}] (torch's optimizers pass it as a float32 scalar)")
        require(0 <= self.momentum < 1, "momentum", f"got {self.momentum!r}", "0 <= momentum < 1")
        require(self.weight_decay >= 0, "weight_decay", f"got {self.weight_decay!r}", ">= 0")
        require(self.grad_clip is None or self.grad_clip > 0, "grad_clip", f"got {self.grad_clip!r}", "None or > 0")
        require(isinstance(self.seed, int) and 0 <= self.seed <= SEED_MAX, "seed", f"got {self.seed!r}",
                f"an int in 0 .. {SEED_MAX} (2**63 - 1)")
        require(self.checkpoint_every >= 0, "checkpoint_every", f"got {self.checkpoint_every!r}", "an int >= 0")
        self.betas = tuple(self.betas)
        model_config(self.model)
        task_config(self.task)

    def to_dict(self) -> dict:
        """The JSON-able dict (``config.json``'s ``train``)."""
        # a JSON round trip is the deep copy (json's C code; dataclasses.asdict's recursion on a large task spec
        # was a tenth of a Fig. 6 sweep)
        d = json.loads(json.dumps({f.name: getattr(self, f.name) for f in fields(self)}))
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Validate a dict; an unknown field raises naming it."""
        require(isinstance(d, dict), "train", f"got a {type(d).__name__}", "a JSON object of training fields")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        require(not unknown, unknown[0] if unknown else "", "unknown training field", ", ".join(sorted(names)))
        return cls(**d)

    @property
    def every(self) -> int:
        """Steps between checkpoints."""
        return self.checkpoint_every or max(1, self.steps // 10)

    def schedule(self) -> list[int]:
        """The recorder's steps: ``record_n`` log-spaced ones plus ``record_extra``."""
        if self.record_n <= 0:
            return []
        return sorted(set(log_schedule(self.steps, self.record_n)) | {int(s) for s in self.record_extra if 0 <= s <= self.steps})


def param_groups(model: HookedTransformer, lr: dict[str, float]) -> list[dict]:
    """One optimizer group per trainable parameter, its rate from the first matching pattern in ``lr``.

    Patterns are tried in the mapping's order (exact names first); a trainable parameter that
    matches none raises. E.g. the Y/Z model: ``{"blocks.0.attn.W_Q": eta_Z, "unembed.W_U": eta_Y}``.
    """
    trainable = [(n, p) for n, p in compat.leaves(model).items() if p.requires_grad]  # 3.x names on both lines
    groups = []
    for name, p in trainable:
        rate = lr.get(name)
        if rate is None:
            rate = next((v for k, v in lr.items() if fnmatch.fnmatchcase(name, k)), None)
        if rate is None:
            raise SslensError("lr", f"no rate for parameter {name}", "a pattern matching it, e.g. '*'")
        groups.append({"params": [p], "lr": float(rate), "name": name})
    return groups


def make_optimizer(model: HookedTransformer, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD, Adam or AdamW over :func:`param_groups`."""
    groups = param_groups(model, cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=0.0, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=0.0, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=0.0, betas=cfg.betas, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """Multiplier of every group's rate at ``step`` (constant, or linear warmup then cosine to 0)."""
    if cfg.lr_schedule == "constant":
        return 1.0
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    rest = max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup_steps) / rest))


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` with :func:`lr_factor`: before the optimizer step ``s``, each group's rate is base * factor(s)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(cfg, step))


# ----- checkpoint state -----------------------------------------------------------------------
def training_state(model, optimizer, generator, scheduler=None) -> tuple[dict, dict]:
    """Tensors (model, optimizer, RNG) and JSON metadata (optimizer groups, LR scheduler) for a checkpoint."""
    tensors = {f"model.{n}": p for n, p in compat.state_dict_3x(model).items()}  # 3.x names and layouts
    sd = optimizer.state_dict()
    names = [g.get("name") for g in sd["param_groups"]]
    scalars = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):  # per-parameter state in the 3.x layout (groups are named, one parameter each)
                tensors[f"optim.{pid}.{k}"] = compat.layout_3x(model, names[pid], v) if v.dim() and pid < len(names) else v
            else:
                scalars[f"{pid}.{k}"] = v
    tensors["rng.data"] = generator.get_state()
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    meta = {"param_groups": groups, "optim_scalars": scalars}
    if scheduler is not None:
        meta["lr_scheduler"] = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    return tensors, meta


def restore_state(model, optimizer, generator, tensors: dict, meta: dict, scheduler=None, step: int = 0,
                  cfg: TrainConfig | None = None) -> None:
    """Load a checkpoint's state into model, optimizer, RNG and LR scheduler.

    Checkpoints written before the LambdaLR state was saved get the scheduler positioned at ``step``
    from ``cfg`` (the rates are a function of the step alone).
    """
    load_params(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, key = k.split(".", 2)
            groups = meta["param_groups"]
            name = groups[int(pid)].get("name") if int(pid) < len(groups) else None
            state.setdefault(int(pid), {})[key] = compat.layout_native(model, name, v) if v.dim() and name else v
    for k, v in meta.get("optim_scalars", {}).items():
        pid, key = k.split(".", 1)
        state.setdefault(int(pid), {})[key] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    generator.set_state(tensors["rng.data"])
    if scheduler is None:
        return
    if "lr_scheduler" in meta:
        scheduler.load_state_dict({**meta["lr_scheduler"], "lr_lambdas": [None] * len(optimizer.param_groups)})
    else:  # run directories written before the scheduler state was saved
        scheduler.last_epoch = step
        for g, base in zip(optimizer.param_groups, scheduler.base_lrs):
            g["initial_lr"] = base
            g["lr"] = base * lr_factor(cfg, step)


# ----- the loop -------------------------------------------------------------------------------
def train(
    cfg: TrainConfig | dict,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool | None = None,
) -> tuple[HookedTransformer, RunStore | None]:
    """Train; with ``out`` write a run store. ``resume=True`` continues from the latest checkpoint.

    The run directory is locked for the whole run (one writer: ``sslens.lock``); temp files of a killed
    writer are removed; a non-finite loss marks the run ``DIVERGED`` and raises :class:`TrainingDiverged`.
    Bad input (config, ``out``, memory) is refused before anything is written.
    """
    cfg = TrainConfig.from_dict(cfg) if isinstance(cfg, dict) else cfg
    check_memory(cfg.model, cfg.batch)
    if out is None:
        return _train(cfg, None, resume, progress)
    store = RunStore(check_out_path(out, kind="run"))
    created = not store.path.exists()
    with store.writing():
        try:
            return _train(cfg, store, resume, progress)
        except BaseException:
            if created and {p.name for p in store.path.iterdir()} <= {".lock"}:
                shutil.rmtree(store.path, ignore_errors=True)  # refused before writing: leave no half-made run dir
            raise


def _resume_from(store: RunStore) -> tuple[dict, dict]:
    """The newest readable checkpoint; says on stderr which unreadable ones were skipped."""
    tensors, meta, skipped = store.load_latest_readable()
    for step, why in skipped:
        print(f"sslens: resume: checkpoint at step {step} is unreadable ({why}); moved aside as .corrupt",
              file=sys.stderr)
    if skipped:
        print(f"sslens: resume: resuming from step {meta['step']}, the newest readable checkpoint", file=sys.stderr)
    return tensors, meta


def _train(cfg: TrainConfig, store: RunStore | None, resume: bool,
           progress: bool | None) -> tuple[HookedTransformer, RunStore | None]:
    from sslens.hooks.recorder import CircuitRecorder

    config = {"train": cfg.to_dict(), "model": cfg.model, "task": cfg.task}
    start = 0
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    task = build_task(cfg.task)
    model = build_model(cfg.model, generator=generator)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    loss_fn = get_loss(getattr(task, "loss", "last_ce"))

    if store is not None:
        if store.exists():
            if not resume:
                raise SslensError("out", f"{store.path} already holds a run", "a new directory, or --resume")
            saved = store.read_config()
            require(isinstance(saved.get("train"), dict), "resume", f"{store.config_path} has no \"train\" object",
                    "a run directory written by sslens train")
            diff = [k for k in config["train"] if saved["train"].get(k) != config["train"][k]]
            diff += [k for k in ("model", "task") if saved.get(k) != json.loads(json.dumps(config[k]))]
            require(not diff, f"resume.{diff[0] if diff else ''}", "differs from the saved run's config.json",
                    "the same settings as the saved run")
            if store.checkpoint_steps():
                tensors, meta = _resume_from(store)
                restore_state(model, optimizer, generator, tensors, meta, scheduler, meta["step"], cfg)
                start = meta["step"]
                store.truncate_metrics(start)
        else:
            store.write_config(config)

    recorder = None
    if cfg.record_n > 0:
        probe_gen = torch.Generator().manual_seed(cfg.seed + PROBE_SEED_OFFSET)
        probe, probe_target = task.batch(cfg.probe_batch, probe_gen)
        recorder = CircuitRecorder(
            model, store=store, schedule=cfg.schedule(), probe_tokens=probe, probe_target=probe_target, start_step=start,
            token_space=max(model.cfg.d_vocab, model.cfg.d_vocab_out) <= 4096, verbose=progress,  # Scan&Snap: Z, Y
            mode="resume" if resume else "new",
        )
        recorder.attach(optimizer)
    model.sslens_recorder = recorder

    def checkpoint(step: int, loss_rows: list[dict]) -> None:
        if store is None:
            return
        store.append_metrics(loss_rows)
        loss_rows.clear()
        tensors, meta = training_state(model, optimizer, generator, scheduler)
        store.save_checkpoint(step, tensors, meta)

    rows: list[dict] = []
    if start == 0:
        checkpoint(0, rows)
    bar = progress_bar(total=cfg.steps, initial=start, progress=progress, desc="train", unit="step", dynamic_ncols=True)
    t0 = time.perf_counter()
    for step in range(start, cfg.steps):
        tokens, target = task.batch(cfg.batch, generator)
        logits = model(tokens, return_type="logits")
        loss = loss_fn(logits, target)
        if not torch.isfinite(loss):
            bar.close()
            msg = f"loss: non-finite value {loss.item()} at step {step + 1}; lower the learning rates"
            if store is not None:
                store.append_metrics(rows)  # the finite steps before it (a resume truncates to its checkpoint)
                store.mark_diverged(step + 1, msg)
                msg += f" (run marked diverged: {store.path / 'DIVERGED'})"
            raise TrainingDiverged(msg, step=step + 1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        rows.append({"step": step + 1, "loss": loss.item()})
        if (step + 1) % cfg.every == 0 or step + 1 == cfg.steps:
            checkpoint(step + 1, rows)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3g}")
    bar.close()
    if recorder is not None:
        recorder.detach()
    if store is not None:
        store.mark_complete({"steps": cfg.steps, "seconds": time.perf_counter() - t0})
    return model, store


def ensure_trained(cfg: TrainConfig, out: str | Path, progress: bool | None = None, same_config: bool = False) -> RunStore:
    """Train into ``out`` unless it holds a finished run; a killed run there resumes.

    ``same_config=True``: a finished run must have been made with ``cfg`` (else one-line error).
    """
    store = RunStore(out)
    if store.complete:
        if same_config:
            saved = store.read_config().get("train", {})
            want = json.loads(json.dumps(cfg.to_dict()))
            diff = sorted(k for k in want if saved.get(k) != want[k])
            require(not diff, "out", f"{store.path} holds a finished run with other settings ({', '.join(diff)})",
                    "a new --out directory, or the settings it was made with")
        return store
    train(cfg, out=out, resume=store.exists(), progress=progress)
    return store
