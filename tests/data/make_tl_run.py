"""Write tests/data/tl<major>_run/ and tl<major>_run_analysis.json with the installed TransformerLens line.

The run is tests/test_compat.py's ``run_config(major)`` trained by ``sslens.train.train`` (4 SGD-momentum
steps with recordings; 4.x: 12 tokens and weight decay, < 200 KB; checkpoints 0, 2, 4 with optimizer state);
the analysis is ``sslens analyze`` of a copy of it. tl3_run was written with .venv (3.9), tl4_run with .venv4 (4.3):

    OMP_NUM_THREADS=1 .venv4/bin/python tests/data/make_tl_run.py
"""

import json
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))


def main() -> None:
    from machine import write_fingerprint
    from test_compat import run_config

    from sslens.train import train

    major = version("transformer-lens").split(".")[0]
    out = HERE / f"tl{major}_run"
    shutil.rmtree(out, ignore_errors=True)
    train(run_config(int(major)), out=out, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(out, run)
        subprocess.run([sys.executable, "-m", "sslens.cli", "analyze", str(run)], check=True, capture_output=True)
        metrics = json.loads((run / "metrics.json").read_text())
    (HERE / f"tl{major}_run_analysis.json").write_text(json.dumps(metrics, indent=1) + "\n")
    (out / ".lock").unlink(missing_ok=True)  # the writer's lock file is not part of the fixture
    write_fingerprint(out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(out, f"{size} bytes", f"TransformerLens {version('transformer-lens')}")


if __name__ == "__main__":
    main()
