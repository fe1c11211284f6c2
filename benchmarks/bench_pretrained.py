"""Peak memory of a pretrained checkpoint series read offline: ``pretrained:NAME`` over a GPT-2-small-shaped series.

A random GPT-2 small (124M parameters: d_model 768, 12 layers x 12 heads, d_vocab 50257, n_ctx 1024) saved as 10
revisions ``checkpoint-N`` of ``stanford-crfm/alias-gpt2-small-x21`` in a hub cache under a temporary HF_HOME
(the layout huggingface_hub writes: refs, snapshots, blobs; each revision's weights drift from the first), so
nothing is downloaded. In a subprocess with ``HF_HUB_OFFLINE=1`` (peak RSS = its ``ru_maxrss``):

- the series as the analysis reads it (``open_series`` + ``load_into`` through TransformerLens's
  ``from_pretrained(checkpoint_index=i)``, and the content hash of each checkpoint) over 1 and over all 10
  checkpoints: one checkpoint is resident at a time, so 10 peak where 1 does;
- ``sslens analyze-checkpoints`` end to end over 1 and over all 10 checkpoints (the analysis and report of a
  144-head model).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

QUICK = os.environ.get("SSLENS_BENCH_QUICK") == "1"
REPO = "stanford-crfm/alias-gpt2-small-x21"  # TransformerLens alias stanford-gpt2-small-a
GPT2_SMALL = dict(vocab_size=50257, n_embd=768, n_layer=12, n_head=12, n_positions=1024, n_ctx=1024)
LOOP = """
import sys
from sslens.checkpoints import open_series
from sslens.integrity import state_hash
s = open_series("pretrained:stanford-gpt2-small-a", checkpoints=sys.argv[1])
model = None
for step in s.steps:
    model = s.load_into(step, model)
    state_hash(s.tensors(step))
"""
WRAP = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
        "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def make_cache(cache: Path, tmp: Path, n: int) -> list[int]:
    """``n`` revisions of a GPT-2-small-shaped model in hub cache ``cache``; their steps."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from hub_cache import add_revision, hf_model

    from sslens.compat import checkpoint_labels

    steps = checkpoint_labels(REPO)[:n]
    model = hf_model("gpt2", 0, **GPT2_SMALL)
    g = torch.Generator().manual_seed(0)
    for i, step in enumerate(steps):
        if i:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.002 * torch.randn(p.shape, generator=g))
        add_revision(cache, REPO, f"checkpoint-{step}", model, tmp, also_main=i == n - 1)
        for f in tmp.glob("save-*"):  # the temporary save_pretrained directory (the cache holds the blobs)
            for x in f.iterdir():
                x.unlink()
            f.rmdir()
    return steps


def peak(hf_home: Path, *cmd: str) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of ``python cmd...`` with the hub cache ``hf_home``, offline."""
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", WRAP, sys.executable, *cmd], env=env, capture_output=True, text=True,
                         check=True)
    rc, kib = res.stdout.split()
    assert rc == "0", f"exit {rc}: {res.stderr[-2000:]}"
    return time.perf_counter() - t, int(kib) / 1024


def main() -> None:
    n = 10
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(os.environ.get("SSLENS_BENCH_DIR") or tmp)  # a kept cache is reused
        t = time.perf_counter()
        if not (tmp / "hf" / "hub").is_dir():
            make_cache(tmp / "hf" / "hub", tmp, n)
        blobs = list((tmp / "hf" / "hub" / ("models--" + REPO.replace("/", "--")) / "blobs").iterdir())
        size = max(b.stat().st_size for b in blobs) / 2**20
        print(f"hub cache of {n} GPT-2-small-shaped checkpoints ({size:.0f} MiB of safetensors each), "
              f"{time.perf_counter() - t:.1f} s to write")
        for spec, k in [("0", 1), (f"0-{n - 1}", n)]:
            w, rss = peak(tmp / "hf", "-c", LOOP, spec)
            print(f"series read (open_series + load_into + content hash) over {k} checkpoint{'s' if k > 1 else ''}: "
                  f"peak RSS {rss:.0f} MiB ({rss / size:.1f}x one checkpoint's file), {w:.1f} s wall")
        if not QUICK:
            for spec, k in [("0", 1), (f"0-{n - 1}", n)]:
                w, rss = peak(tmp / "hf", "-m", "sslens.cli", "analyze-checkpoints", "pretrained:stanford-gpt2-small-a",
                              "--checkpoints", spec, "--out", str(tmp / f"out{k}"), "--quiet")
                print(f"analyze-checkpoints pretrained:stanford-gpt2-small-a --checkpoints {spec} ({k} checkpoint"
                      f"{'s' if k > 1 else ''}, end to end): peak RSS {rss:.0f} MiB, {w:.1f} s wall")


if __name__ == "__main__":
    main()
