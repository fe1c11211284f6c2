"""Input fuzz (issue 11): generated argv for train / analyze / analyze-checkpoints, run in-process through
``sslens.cli.main``. Whatever the input, no traceback is printed, the exit code is 0, 2 or 3, and an error
is exactly one line on stderr.
"""

import contextlib
import io
import itertools
import json
import os
import traceback

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from sslens.cli import main

TINY = ["--preset", "syn-small", "--batch", "4", "--seq-len", "6", "--steps", "2", "--checkpoint-every", "1"]
_count = itertools.count()


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """Fixed places to point the CLI at: a good run, junk files and directories, impossible paths."""
    root = tmp_path_factory.mktemp("fuzz")
    good = root / "good"
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "scan-snap", *TINY, "--quiet", "--out", str(good)]) == 0
    (root / "afile").write_text("not a directory")
    (root / "empty").mkdir()
    ckpts = root / "junk_ckpts"
    (ckpts / "checkpoints").mkdir(parents=True)
    (ckpts / "config.json").write_text(json.dumps(json.loads((good / "config.json").read_text())))
    (ckpts / "checkpoints" / "step_00000001.safetensors").write_bytes(b"\x00junk")
    pts = root / "pts"
    pts.mkdir()
    (pts / "model_1.pt").write_bytes(b"PK\x03\x04 truncated zip")
    old = os.getcwd()
    os.chdir(root)  # relative outputs ("pretrained:no-such-model" as --out) land here, never in the checkout
    yield {"root": root, "good": good, "choices": [
        str(good), str(root / "afile"), str(root / "afile" / "sub"), "", str(root / "missing" / "deep"),
        str(root / "empty"), str(ckpts), str(pts), "/proc/sslens_fuzz/x", "x" * 300, "pretrained:no-such-model",
    ]}
    os.chdir(old)


junk_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8))
junk_json = st.recursive(junk_scalar, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                         max_leaves=6)
number = st.one_of(st.integers(-3, 16).map(str), st.sampled_from(["0", "-1", "1e308", "nan", "inf", "-inf", "1e-320",
                                                                   str(2**70), str(10**9), "ten", "", " 3", "0x10"]))
rate = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), number)
FLAGS = {
    "--steps": st.sampled_from(["0", "-5", "1", "3", "x", "1.5", ""]),
    "--batch": st.sampled_from(["0", "-1", "1", "4", str(10**9), str(2**70), "b"]),
    "--seq-len": st.sampled_from(["0", "1", "2", "6", str(10**8), "q"]),
    "--num-last": st.sampled_from(["0", "1", "2", str(10**7), "n"]),
    "--eta-y": rate, "--eta-z": rate, "--momentum": rate, "--seed": number,
    "--checkpoint-every": number,
    "--optimizer": st.sampled_from(["sgd", "adam", "lbfgs", ""]),
    "--preset": st.sampled_from(["syn-small", "syn-medium", "syn-huge"]),
    "--init": st.sampled_from(["zero", "random", "ones"]),
    "--dtype": st.sampled_from(["float32", "float64", "int8"]),
}


def mutate(cfg, data):
    """Replace one value somewhere inside ``cfg`` with junk (or drop the key)."""
    node = cfg
    while isinstance(node, dict) and node and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(node)))
        if not isinstance(node[key], dict) or not node[key]:
            break
        node = node[key]
    if isinstance(node, dict) and node:
        key = data.draw(st.sampled_from(sorted(node)))
        if data.draw(st.booleans()):
            del node[key]
        else:
            node[key] = data.draw(junk_json)
    return cfg


def junk_run(paths, data) -> str:
    """A run directory whose config.json is junk text, junk JSON, or the good config with one value broken."""
    run = paths["root"] / f"junk_{next(_count)}"
    run.mkdir()
    kind = data.draw(st.sampled_from(["text", "json", "mutated", "mutated"]))
    if kind == "text":
        text = data.draw(st.text(max_size=20))
    elif kind == "json":
        text = json.dumps(data.draw(junk_json))
    else:
        text = json.dumps(mutate(json.loads((paths["good"] / "config.json").read_text()), data))
    (run / "config.json").write_text(text)
    if data.draw(st.booleans()):  # with the good run's checkpoints and metrics
        (run / "checkpoints").symlink_to(paths["good"] / "checkpoints")
        (run / "metrics.jsonl").write_text((paths["good"] / "metrics.jsonl").read_text())
    return str(run)


def a_path(paths, data) -> str:
    if data.draw(st.integers(0, 3)) == 0:
        return junk_run(paths, data)
    return data.draw(st.sampled_from(paths["choices"]))


def a_new_out(paths, data) -> str:
    return data.draw(st.sampled_from([str(paths["root"] / f"new_{next(_count)}"), a_path(paths, data)]))


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck),
          phases=(Phase.generate,))  # no shrinking: the failing argv is in the assertion message
@given(data=st.data())
def test_no_input_prints_a_traceback(paths, data):
    verb = data.draw(st.sampled_from(["train", "train", "analyze", "analyze-checkpoints"]))
    if verb == "train":
        flags = data.draw(st.lists(st.sampled_from(sorted(FLAGS)), max_size=4, unique=True))
        argv = ["train", "scan-snap", *TINY, "--quiet", "--out", a_new_out(paths, data)]
        for f in flags:
            argv += [f, data.draw(FLAGS[f])]
        if data.draw(st.booleans()):
            argv.append("--resume")
    elif verb == "analyze":
        argv = ["analyze", a_path(paths, data)]
        if data.draw(st.booleans()):
            argv += ["--out", a_new_out(paths, data)]
    else:
        argv = ["analyze-checkpoints", a_path(paths, data), "--out", a_new_out(paths, data), "--quiet"]
        if data.draw(st.booleans()):
            argv += ["--config", data.draw(st.sampled_from(paths["choices"]))]
        if data.draw(st.booleans()):
            argv += ["--checkpoint-indices", data.draw(number)]

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse
            code = e.code
        except BaseException:  # noqa: BLE001 - anything escaping main() is a traceback for the user
            code = "traceback:\n" + traceback.format_exc()
    text = err.getvalue()
    assert code in (0, 2, 3), (argv, code, text)
    assert "Traceback" not in text + out.getvalue(), (argv, text)
    if code != 0:
        lines = [line for line in text.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("sslens"), (argv, text)
