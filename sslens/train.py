"""Training: per-parameter learning rates (eta_Y, eta_Z, ...), SGD/Adam/AdamW, seeds, checkpoints, resume.

``train(TrainConfig(...), out="runs/x")`` builds the model and task from their dicts, trains with a
tqdm bar, records circuits with :class:`sslens.hooks.CircuitRecorder`, checkpoints to the run store,
and resumes a killed run bitwise (model, optimizer and RNG state are in every checkpoint).
"""

from __future__ import annotations

import fnmatch
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from sslens.errors import SslensError, choice, require
from sslens.losses import get_loss
from sslens.models import build
from sslens.schedule import log_schedule
from sslens.store import RunStore, load_params
from sslens.tasks import build_task

OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("constant", "warmup_cosine")


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; the message names the step."""


@dataclass
class TrainConfig:
    """Everything needed to rebuild a run. ``lr`` maps parameter names (fnmatch patterns) to rates."""

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
        require(isinstance(self.steps, int) and self.steps >= 1, "steps", f"got {self.steps!r}", "an int >= 1")
        require(isinstance(self.batch, int) and self.batch >= 1, "batch", f"got {self.batch!r}", "an int >= 1")
        choice(self.optimizer, "optimizer", OPTIMIZERS)
        choice(self.lr_schedule, "lr_schedule", LR_SCHEDULES)
        require(isinstance(self.lr, dict) and self.lr, "lr", "no learning rates", "{parameter pattern: rate > 0}")
        for k, v in self.lr.items():
            require(isinstance(v, (int, float)) and v >= 0 and math.isfinite(v), f"lr[{k}]", f"got {v!r}", "a finite rate >= 0")
        require(0 <= self.momentum < 1, "momentum", f"got {self.momentum!r}", "0 <= momentum < 1")
        require(self.weight_decay >= 0, "weight_decay", f"got {self.weight_decay!r}", ">= 0")
        require(self.grad_clip is None or self.grad_clip > 0, "grad_clip", f"got {self.grad_clip!r}", "None or > 0")
        require(isinstance(self.seed, int), "seed", f"got {self.seed!r}", "an int")
        require(self.checkpoint_every >= 0, "checkpoint_every", f"got {self.checkpoint_every!r}", "an int >= 0")
        self.betas = tuple(self.betas)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        require(not unknown, unknown[0] if unknown else "", "unknown training field", ", ".join(sorted(names)))
        return cls(**d)

    @property
    def every(self) -> int:
        return self.checkpoint_every or max(1, self.steps // 10)

    def schedule(self) -> list[int]:
        if self.record_n <= 0:
            return []
        return sorted(set(log_schedule(self.steps, self.record_n)) | {int(s) for s in self.record_extra if 0 <= s <= self.steps})


def param_groups(model: HookedTransformer, lr: dict[str, float]) -> list[dict]:
    """One optimizer group per trainable parameter, its rate from the first matching pattern in ``lr``.

    Patterns are tried in the mapping's order (exact names first); a trainable parameter that
    matches none raises. E.g. the Y/Z model: ``{"blocks.0.attn.W_Q": eta_Z, "unembed.W_U": eta_Y}``.
    """
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
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


# ----- checkpoint state -----------------------------------------------------------------------
def training_state(model, optimizer, generator) -> tuple[dict, dict]:
    """Tensors (model, optimizer, RNG) and JSON metadata for a resumable checkpoint."""
    tensors = {f"model.{n}": p.detach() for n, p in model.named_parameters()}
    sd = optimizer.state_dict()
    scalars = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    tensors["rng.data"] = generator.get_state()
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "optim_scalars": scalars}


def restore_state(model, optimizer, generator, tensors: dict, meta: dict) -> None:
    load_params(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, key = k.split(".", 2)
            state.setdefault(int(pid), {})[key] = v
    for k, v in meta.get("optim_scalars", {}).items():
        pid, key = k.split(".", 1)
        state.setdefault(int(pid), {})[key] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    generator.set_state(tensors["rng.data"])


# ----- the loop -------------------------------------------------------------------------------
def train(
    cfg: TrainConfig | dict,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> tuple[HookedTransformer, RunStore | None]:
    """Train; with ``out`` write a run store. ``resume=True`` continues from the latest checkpoint."""
    from sslens.hooks.recorder import CircuitRecorder

    cfg = TrainConfig.from_dict(cfg) if isinstance(cfg, dict) else cfg
    store = RunStore(out) if out is not None else None
    config = {"train": cfg.to_dict(), "model": cfg.model, "task": cfg.task}
    start = 0
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    task = build_task(cfg.task)
    model = build(cfg.model, generator=generator)
    optimizer = make_optimizer(model, cfg)
    loss_fn = get_loss(getattr(task, "loss", "last_ce"))

    if store is not None:
        if store.exists():
            if not resume:
                raise SslensError("out", f"{store.path} already holds a run", "a new directory, or --resume")
            saved = store.read_config()
            diff = [k for k in config["train"] if saved.get("train", {}).get(k) != config["train"][k]]
            require(not diff, f"resume.{diff[0] if diff else ''}", "differs from the saved run's config.json", "the same settings as the saved run")
            if store.checkpoint_steps():
                tensors, meta = store.load_checkpoint()
                restore_state(model, optimizer, generator, tensors, meta)
                start = meta["step"]
                store.truncate_metrics(start)
        else:
            store.write_config(config)

    recorder = None
    if cfg.record_n > 0:
        probe_gen = torch.Generator().manual_seed(cfg.seed + 7_654_321)
        probe, probe_target = task.batch(cfg.probe_batch, probe_gen)
        recorder = CircuitRecorder(
            model, store=store, schedule=cfg.schedule(), probe_tokens=probe, probe_target=probe_target, start_step=start,
            token_space=max(model.cfg.d_vocab, model.cfg.d_vocab_out) <= 4096, verbose=progress,  # Scan&Snap: Z, Y
        )
        recorder.attach(optimizer)
    model.sslens_recorder = recorder

    def checkpoint(step: int, loss_rows: list[dict]) -> None:
        if store is None:
            return
        store.append_metrics(loss_rows)
        loss_rows.clear()
        tensors, meta = training_state(model, optimizer, generator)
        store.save_checkpoint(step, tensors, meta)

    base_lrs = [g["lr"] for g in param_groups(model, cfg.lr)]
    rows: list[dict] = []
    if start == 0:
        checkpoint(0, rows)
    bar = tqdm(total=cfg.steps, initial=start, disable=not progress, desc="train", unit="step", dynamic_ncols=True)
    t0 = time.perf_counter()
    for step in range(start, cfg.steps):
        f = lr_factor(cfg, step)
        for g, base in zip(optimizer.param_groups, base_lrs):
            g["lr"] = base * f
        tokens, target = task.batch(cfg.batch, generator)
        logits = model(tokens, return_type="logits")
        loss = loss_fn(logits, target)
        if not torch.isfinite(loss):
            bar.close()
            raise TrainingDiverged(f"loss: non-finite value {loss.item()} at step {step + 1}; lower the learning rates")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
        optimizer.step()
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
