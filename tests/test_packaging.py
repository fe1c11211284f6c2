"""The wheel builds, installs into a fresh venv and exposes sslens, sslens.hooks, sslens.analyses."""

import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_in_fresh_venv(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(ROOT)],
        check=True, capture_output=True,
    )
    (wheel,) = dist.glob("sslens-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "sslens/hooks/recorder.py" in names and "sslens/analyses/rank.py" in names
    assert not any(n.startswith(("hooks/", "analyses/", "tests/")) for n in names)
    # every module of the checkout ships (a subpackage missing from pyproject's list would not)
    for top, prefix in (("sslens", "sslens/"), ("hooks", "sslens/hooks/"), ("analyses", "sslens/analyses/")):
        for f in (ROOT / top).rglob("*.py"):
            assert prefix + f.relative_to(ROOT / top).as_posix() in names, f

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    # dependencies (torch, transformer-lens, ...) come from this test's environment, appended after the
    # fresh venv's own site-packages, so `sslens` must resolve to the installed wheel, not the checkout.
    deps = sysconfig.get_paths()["purelib"]
    code = (
        f"import sys; sys.path.append({deps!r}); "
        "import sslens, sslens.hooks, sslens.analyses, sslens.analyses.rank; "
        "from sslens.hooks import CircuitRecorder; "
        "print(sslens.__file__); print(sslens.hooks.__file__)"
    )
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    f_sslens, f_hooks = r.stdout.split()
    assert str(env_dir) in f_sslens and str(env_dir) in f_hooks
    r = subprocess.run([str(env_dir / "bin" / "sslens"), "--help"], capture_output=True, text=True,
                       env={"PYTHONPATH": deps, "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and "train" in r.stdout, r.stderr
