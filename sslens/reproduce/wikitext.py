"""Real data (WikiText-2), scaled to a 2-core CPU: Scan&Snap Figs. 10 and 7, and [CR] Fig. 3.

- Fig. 10: a 1-layer standard TransformerLens model (d_model 64, 1 head, d_mlp 256, pre-LN -- TL blocks
  are pre-LN, the tutorial model is post-LN; positions on), vocabulary capped at 2000 words, chunks of
  35 tokens, batch 32, plain SGD with one rate eta in {1, 3, 5} and gradient clipping 0.25 (as in the
  PyTorch word-language-model example the paper builds on), 2 seeds, 150 steps (paper: full epochs). Metric: validation attention entropy
  -sum_j a_ij log(a_ij + 1e-8), mean over 32 validation chunks and query positions.
- Fig. 7: the probe attention of the largest-eta run and of a 3-layer model at steps 0, 50, 100, 150
  (circuitsvis, one panel per step).
- [CR] Fig. 3: the small-init model (2 layers, 1 head, GeLU, residuals, no LayerNorm, init std
  d^-1.2) with d_model 32 and d_ff 256 (paper: 64, 800), AdamW lr 1e-3 (paper: 2e-4), batch 64,
  loss on the final token, 300 steps; per-layer rank and condensation from its checkpoints.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from sslens.commands.args import positive_int  # noqa: E402
from sslens.data.text import default_wikitext_dir  # noqa: E402
from sslens.errors import require  # noqa: E402
from sslens.models.rank_collapse import small_init_lm_config  # noqa: E402
from sslens.models.standard import standard_config  # noqa: E402
from sslens.store import RunStore  # noqa: E402
from sslens.train import TrainConfig, train  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[2] / "tests" / "data"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--data-dir", default=None, help="folder with valid.txt and test.txt (WikiText-2, word level)")
    p.add_argument("--steps", type=positive_int, default=150)
    p.add_argument("--etas", type=float, nargs="+", default=[1.0, 3.0, 5.0])
    p.add_argument("--seeds", type=positive_int, default=2)
    p.add_argument("--cr-steps", type=positive_int, default=300)
    p.add_argument("--quiet", action="store_true")


def data_files(data_dir: str | None) -> dict:
    d = Path(data_dir) if data_dir else default_wikitext_dir()
    if d is not None:
        require((d / "valid.txt").exists() and (d / "test.txt").exists(), "data-dir", f"{d} lacks valid.txt/test.txt",
                "a folder with WikiText-2 valid.txt and test.txt")
        return {"train": str(d / "valid.txt"), "valid": str(d / "test.txt")}
    return {"train": str(SHIPPED / "wikitext-2-valid-slice.txt"), "valid": str(SHIPPED / "wikitext-2-test-slice.txt")}


def text_task(files, loss="all_ce", seq_len=35):
    return {"kind": "text", "files": files, "split": "train", "vocab_split": "train", "seq_len": seq_len,
            "max_vocab": 2000, "loss": loss, "cache_dir": None}


def _run(cfg, d: Path, quiet: bool) -> Path:
    if not RunStore(d).complete:
        train(cfg, out=d, resume=RunStore(d).exists(), progress=not quiet)
    return d


def val_entropy(run: Path, files: dict, n: int = 32) -> float:
    """Fig. 10 metric on fixed validation chunks."""
    from sslens.data.text import TextTask

    model = RunStore(run).load_model()
    task = TextTask(files, split="valid", vocab_split="train", seq_len=35, max_vocab=2000)
    x = task.data[:n]
    _, cache = model.run_with_cache(x, names_filter=lambda name: name.endswith("hook_pattern"))
    from sslens.analyses.head_metrics import attention_entropy

    return attention_entropy(cache["pattern", 0]).mean().item()


def run(a: argparse.Namespace) -> int:
    from sslens.analyses.checkpoints import analyze_series, report
    from sslens.analyses.report import Report, attention_steps_view
    from sslens.checkpoints import open_series
    from sslens.hooks.recorder import Recording
    from sslens.store import atomic_write_json
    from sslens.tasks import build_task

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    files = data_files(a.data_dir)
    rep = Report("Real data (WikiText-2): Scan&Snap Figs. 10 and 7, [CR] Fig. 3")
    rep.p(__doc__.split("\n\n", 1)[1])
    rep.p(f"Data: {files}")
    extra = sorted({0, a.steps // 3, 2 * a.steps // 3, a.steps})

    def lm(eta, seed, layers=1):
        return TrainConfig(model=standard_config(2000, n_layers=layers, d_model=64, d_mlp=256, n_ctx=35),
                           task=text_task(files), steps=a.steps, batch=32, optimizer="sgd", lr={"*": eta}, seed=seed,
                           grad_clip=0.25,
                           checkpoint_every=a.steps, record_n=8, record_extra=extra, probe_batch=2)

    rep.h2("Fig. 10: attention entropy falls as the learning rate rises")
    rows, ent = [], {}
    for eta in a.etas:
        for s in range(1, a.seeds + 1):
            d = _run(lm(eta, s), out / f"fig10-eta{eta:g}-s{s}", a.quiet)
            ent.setdefault(eta, []).append(val_entropy(d, files))
        rows.append({"eta": eta, "entropy_mean": float(np.mean(ent[eta])), "entropy_std": float(np.std(ent[eta], ddof=1)) if a.seeds > 1 else float("nan"),
                     "seeds": a.seeds})
    falls = all(r1["entropy_mean"] > r2["entropy_mean"] for r1, r2 in zip(rows, rows[1:]))
    rep.table(rows + [{"eta": "prediction", "entropy_mean": "decreasing in eta", "entropy_std": "", "seeds": "", "pass": falls}])
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.errorbar([r["eta"] for r in rows], [r["entropy_mean"] for r in rows], yerr=[r["entropy_std"] for r in rows], marker="o", capsize=3)
    ax.set_xlabel("learning rate eta (SGD)")
    ax.set_ylabel("validation attention entropy (nats)")
    rep.figure(fig, "Fig. 10 (scaled): mean and sample std over seeds")
    atomic_write_json(out / "fig10.json", {"rows": rows, "pass": falls})

    rep.h2("Fig. 7: attention maps over iterations (1 layer and 3 layers)")
    for name, d in ((f"1 layer, eta {max(a.etas):g}", out / f"fig10-eta{max(a.etas):g}-s1"),
                    ("3 layers", _run(lm(max(a.etas), 1, layers=3), out / "fig7-3layer", a.quiet))):
        rec = Recording(d)
        steps = [s for s in extra if s in rec.steps]
        vocab = build_task(RunStore(d).read_config()["task"]).vocab
        toks = vocab.decode(rec.at(steps[0])["probe.tokens"][0])
        for layer in range(RunStore(d).read_config()["model"]["n_layers"]):
            pats = torch.stack([rec.at(s)[f"blocks.{layer}.pattern"][0, 0] for s in steps])
            rep.circuitsvis(attention_steps_view(pats, toks, steps, max_tokens=35), f"{name}, layer {layer}: steps {steps}")

    rep.h2("[CR] Fig. 3: small-init 2-layer model without LayerNorm")
    cr = TrainConfig(model=small_init_lm_config(d_model=32, d_ff=256, n_layers=2, d_vocab=2000, n_ctx=35),
                     task=text_task(files, loss="last_ce", seq_len=34), steps=a.cr_steps, batch=64, optimizer="adamw",
                     lr={"*": 1e-3}, seed=0, checkpoint_every=max(1, a.cr_steps // 15), record_n=0)
    d = _run(cr, out / "cr-fig3", a.quiet)
    series = open_series(str(d))
    series.task = build_task(RunStore(d).read_config()["task"])
    report([analyze_series(series, progress=not a.quiet)], d)
    rep.links([("cr-fig3/report.html", "cr-fig3/report.html")], "Per-layer rank and condensation panels: ")
    path = rep.save(out / "report.html")
    print(f"reproduction written to {path}")
    return 0
