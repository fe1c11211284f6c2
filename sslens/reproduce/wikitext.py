"""Real data (WikiText-2), scaled to a 2-core CPU: Scan&Snap Figs. 10 and 7, and [CR] Fig. 3.

- Fig. 10: a 1-layer standard TransformerLens model (d_model 64, 1 head, d_mlp 256, pre-LN -- TL blocks
  are pre-LN, the tutorial model is post-LN; positions on), vocabulary capped at 2000 words, chunks of
  35 tokens, batch 32, plain SGD with one rate eta in {1, 2, 3, 4, 5} and gradient clipping 0.25 (as in the
  PyTorch word-language-model example the paper builds on), 5 seeds (Fig. 10's protocol), 150 steps (paper:
  full epochs).
  Metric: validation attention entropy -sum_j a_ij log(a_ij + 1e-8), mean over 32 validation chunks and
  query positions.
- Fig. 7: the probe attention of the largest-eta run and of a 3-layer model at steps 0, 50, 100, 150
  (circuitsvis, one panel per step), and as numbers (``sparsify_then_freeze``, ``OUT/fig7.json``): entropy
  ratio last/first snapshot (< 1: sparsifies) and the maps' TV change in the last interval / the first
  (<= 0.5: freezes).
- [CR] Fig. 3: the small-init model (2 layers, 1 head, GeLU, residuals, no LayerNorm, init std
  d^-1.2) with d_model 32 and d_ff 256 (paper: 64, 800), AdamW lr 1e-3 (paper: 2e-4), batch 64,
  loss on the final token, 300 steps; per-layer rank and condensation from its checkpoints.

``reproduce(WikitextSettings(out=...))`` runs the experiments, returns :class:`WikitextResults` and
writes ``OUT/report.html`` (:func:`render`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from sslens.analyses.head_metrics import attention_entropy
from sslens.analyses.report import Report
from sslens.data.text import default_wikitext_dir
from sslens.errors import require
from sslens.models.rank_collapse import small_init_lm_config
from sslens.models.standard import standard_config
from sslens.store import RunStore, atomic_write_json
from sslens.train import TrainConfig, ensure_trained

SHIPPED = Path(__file__).resolve().parents[2] / "tests" / "data"


@dataclass(frozen=True)
class WikitextSettings:
    """The experiment's knobs (the CLI flags of ``sslens reproduce wikitext``)."""

    out: str | Path
    data_dir: str | None = None
    steps: int = 150
    etas: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0)  # Fig. 10's protocol: eta in {1..5}, 5 seeds
    seeds: int = 5
    cr_steps: int = 300
    quiet: bool = False


@dataclass
class WikitextResults:
    """Fig. 10 rows and pass flag, Fig. 7 patterns per model and layer, the [CR] run and its analysis."""

    settings: WikitextSettings
    files: dict
    fig10_rows: list[dict] = field(default_factory=list)
    fig10_pass: bool = False
    fig7: list = field(default_factory=list)  # [(caption, circuitsvis view)]
    fig7_check: dict | None = None  # sparsify_then_freeze of the 1-layer largest-eta run
    cr_run: Path | None = None


def data_files(data_dir: str | None) -> dict:
    """Train = valid.txt, valid = test.txt of ``data_dir`` (or the default WikiText dir, else the shipped slices)."""
    d = Path(data_dir) if data_dir else default_wikitext_dir()
    if d is not None:
        require((d / "valid.txt").exists() and (d / "test.txt").exists(), "data-dir", f"{d} lacks valid.txt/test.txt",
                "a folder with WikiText-2 valid.txt and test.txt")
        return {"train": str(d / "valid.txt"), "valid": str(d / "test.txt")}
    return {"train": str(SHIPPED / "wikitext-2-valid-slice.txt"), "valid": str(SHIPPED / "wikitext-2-test-slice.txt")}


def text_task(files, loss="all_ce", seq_len=35) -> dict:
    """The text task config of these experiments (2000-word vocabulary from the train split)."""
    return {"kind": "text", "files": files, "split": "train", "vocab_split": "train", "seq_len": seq_len,
            "max_vocab": 2000, "loss": loss, "cache_dir": None}


def val_entropy(run: Path, files: dict, n: int = 32) -> float:
    """Fig. 10 metric on fixed validation chunks: mean attention entropy of layer 0 (nats)."""
    from sslens.data.text import TextTask

    model = RunStore(run).load_model()
    task = TextTask(files, split="valid", vocab_split="train", seq_len=35, max_vocab=2000)
    _, cache = model.run_with_cache(task.data[:n], names_filter=lambda name: name.endswith("hook_pattern"))
    return attention_entropy(cache["pattern", 0]).mean().item()  # mean over heads of [head]


def lm_config(s: WikitextSettings, files: dict, eta: float, seed: int, layers: int = 1) -> TrainConfig:
    """A Fig. 10 / Fig. 7 run: the standard model, plain SGD with clipping 0.25."""
    extra = sorted({0, s.steps // 3, 2 * s.steps // 3, s.steps})
    return TrainConfig(model=standard_config(2000, n_layers=layers, d_model=64, d_mlp=256, n_ctx=35),
                       task=text_task(files), steps=s.steps, batch=32, optimizer="sgd", lr={"*": eta}, seed=seed,
                       grad_clip=0.25, checkpoint_every=s.steps, record_n=8, record_extra=extra, probe_batch=2)


def fig10(s: WikitextSettings, files: dict) -> tuple[list[dict], bool]:
    """Validation attention entropy per eta (mean, sample std over seeds); pass if it falls as eta rises."""
    rows = []
    for eta in s.etas:
        ent = []
        for seed in range(1, s.seeds + 1):
            d = Path(s.out) / f"fig10-eta{eta:g}-s{seed}"
            ensure_trained(lm_config(s, files, eta, seed), d, progress=not s.quiet)
            ent.append(val_entropy(d, files))
        rows.append({"eta": eta, "entropy_mean": float(np.mean(ent)),
                     "entropy_std": float(np.std(ent, ddof=1)) if s.seeds > 1 else float("nan"), "seeds": s.seeds})
    return rows, all(r1["entropy_mean"] > r2["entropy_mean"] for r1, r2 in zip(rows, rows[1:]))


FREEZE = 0.5  # Fig. 7 "freezes": the last snapshot interval moves the maps at most half as much as the first


def sparsify_then_freeze(patterns: Tensor, steps: list[int]) -> dict:
    """Fig. 7's reading as numbers, from attention patterns [snapshot, probe, head, q, k] at ``steps``.

    Sparsifies: entropy ratio H(last) / H(first) < 1 (``attention_entropy``, mean over heads). Freezes: the mean
    TV distance between consecutive snapshots' attention rows, last interval / first interval, <= ``FREEZE``.
    """
    H = [attention_entropy(p).mean().item() for p in patterns]
    tv = [(0.5 * (b - a).abs().sum(-1)).mean().item() for a, b in zip(patterns, patterns[1:])]
    sparse, freeze = H[-1] / H[0], (tv[-1] / tv[0] if tv[0] > 0 else float("nan"))
    return {"steps": list(steps), "entropy": H, "tv": tv, "entropy_ratio": sparse, "freeze_ratio": freeze,
            "sparsifies": bool(sparse < 1), "freezes": bool(freeze <= FREEZE), "pass": bool(sparse < 1 and freeze <= FREEZE)}


def fig7_numbers(s: WikitextSettings) -> dict:
    """:func:`sparsify_then_freeze` of layer 0 of the largest-eta 1-layer run (seed 1) on its recorded probe."""
    from sslens.hooks.recorder import Recording

    d = Path(s.out) / f"fig10-eta{max(s.etas):g}-s1"
    rec = Recording(d)
    steps = [st for st in sorted({0, s.steps // 3, 2 * s.steps // 3, s.steps}) if st in rec.steps]
    pats = torch.stack([rec.at(st)["blocks.0.pattern"] for st in steps])  # [snapshot, probe, head, q, k]
    return {"run": d.name, **sparsify_then_freeze(pats, steps)}


def fig7(s: WikitextSettings, files: dict) -> list:
    """Probe attention over iterations of the largest-eta 1-layer run and a 3-layer run: (caption, view) per layer."""
    from sslens.analyses.report import attention_steps_view
    from sslens.hooks.recorder import Recording
    from sslens.tasks import build_task

    eta = max(s.etas)
    three = Path(s.out) / "fig7-3layer"
    ensure_trained(lm_config(s, files, eta, 1, layers=3), three, progress=not s.quiet)
    extra = sorted({0, s.steps // 3, 2 * s.steps // 3, s.steps})
    views = []
    for name, d in ((f"1 layer, eta {eta:g}", Path(s.out) / f"fig10-eta{eta:g}-s1"), ("3 layers", three)):
        rec = Recording(d)
        steps = [st for st in extra if st in rec.steps]
        cfg = RunStore(d).read_config()
        toks = build_task(cfg["task"]).vocab.decode(rec.at(steps[0])["probe.tokens"][0])
        for layer in range(cfg["model"]["n_layers"]):
            pats = torch.stack([rec.at(st)[f"blocks.{layer}.pattern"][0, 0] for st in steps])
            views.append((f"{name}, layer {layer}: steps {steps}", attention_steps_view(pats, toks, steps, max_tokens=35)))
    return views


def cr_fig3(s: WikitextSettings, files: dict) -> Path:
    """[CR] Fig. 3: train the small-init model and write its per-layer rank/condensation report."""
    from sslens.analyses.checkpoints import analyze_series, report
    from sslens.checkpoints import open_series
    from sslens.tasks import build_task

    cr = TrainConfig(model=small_init_lm_config(d_model=32, d_ff=256, n_layers=2, d_vocab=2000, n_ctx=35),
                     task=text_task(files, loss="last_ce", seq_len=34), steps=s.cr_steps, batch=64, optimizer="adamw",
                     lr={"*": 1e-3}, seed=0, checkpoint_every=max(1, s.cr_steps // 15), record_n=0)
    d = Path(s.out) / "cr-fig3"
    ensure_trained(cr, d, progress=not s.quiet)
    series = open_series(str(d))
    series.task = build_task(RunStore(d).read_config()["task"])
    report([analyze_series(series, progress=not s.quiet)], d)
    return d


def plot_fig10(rows: list[dict]) -> Figure:
    """Entropy against eta with the seed std as error bars."""
    fig = Figure(figsize=(4.5, 3.2), layout="constrained")
    ax = fig.subplots()
    ax.errorbar([r["eta"] for r in rows], [r["entropy_mean"] for r in rows], yerr=[r["entropy_std"] for r in rows],
                marker="o", capsize=3)
    ax.set_xlabel("learning rate eta (SGD)")
    ax.set_ylabel("validation attention entropy (nats)")
    return fig


def reproduce(settings: WikitextSettings, write_report: bool = True) -> WikitextResults:
    """Run Figs. 10, 7 and [CR] Fig. 3; write fig10.json and (with ``write_report``) OUT/report.html."""
    out = Path(settings.out)
    files = data_files(settings.data_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = WikitextResults(settings, files)
    res.fig10_rows, res.fig10_pass = fig10(settings, files)
    atomic_write_json(out / "fig10.json", {"rows": res.fig10_rows, "pass": res.fig10_pass})
    res.fig7 = fig7(settings, files)
    res.fig7_check = fig7_numbers(settings)
    atomic_write_json(out / "fig7.json", res.fig7_check)
    res.cr_run = cr_fig3(settings, files)
    if write_report:
        path = render(res).save(out / "report.html")
        print(f"reproduction written to {path}")
    return res


def render(res: WikitextResults) -> Report:
    """The report page of a finished :func:`reproduce`."""
    rep = Report("Real data (WikiText-2): Scan&Snap Figs. 10 and 7, [CR] Fig. 3")
    rep.p(__doc__.split("\n\n", 1)[1].split("\n\n")[0])
    rep.p(f"Data: train = {res.files['train']}, validation = {res.files['valid']}")
    rep.h2("Fig. 10: attention entropy falls as the learning rate rises")
    rep.table(res.fig10_rows + [{"eta": "prediction", "entropy_mean": "decreasing in eta", "entropy_std": "",
                                 "seeds": "", "pass": res.fig10_pass}])
    rep.figure(plot_fig10(res.fig10_rows), "Fig. 10 (scaled): mean and sample std over seeds")
    rep.h2("Fig. 7: attention maps over iterations (1 layer and 3 layers)")
    if res.fig7_check:
        c = res.fig7_check
        rep.table([{"run": c["run"], "steps": str(c["steps"]), "entropy H(last)/H(0)": c["entropy_ratio"],
                    "sparsifies (< 1)": c["sparsifies"], "TV last/first interval": c["freeze_ratio"],
                    f"freezes (<= {FREEZE})": c["freezes"]}], "Fig. 7 as numbers: sparsifies, then freezes")
    for caption, view in res.fig7:
        rep.circuitsvis(view, caption)
    rep.h2("[CR] Fig. 3: small-init 2-layer model without LayerNorm")
    rep.links([("cr-fig3/report.html", "cr-fig3/report.html")], "Per-layer rank and condensation panels: ")
    return rep
