"""The sslens command: --help on every verb, one-line errors naming the flag and the allowed values."""

import subprocess
import sys

import pytest

from sslens.cli import build_parser, main


def verbs():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices


def test_help_on_every_verb(capsys):
    vs = verbs()
    assert {"train", "analyze", "reproduce"} <= set(vs)
    for name, p in vs.items():
        text = p.format_help()
        assert "usage: sslens " + name in text
        for act in p._actions:  # nested verbs (train scan-snap, reproduce scan-snap, ...) too
            if act.__class__.__name__ == "_SubParsersAction":
                for sub_name, sp in act.choices.items():
                    assert f"usage: sslens {name} {sub_name}" in sp.format_help()


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["train", "scan-snap", "--out", "x", "--optimizer", "lbfgs"], "argument --optimizer: invalid choice: 'lbfgs' (choose from 'sgd', 'adam')"),
        (["train", "scan-snap", "--out", "x", "--eta-y", "0"], "argument --eta-y: '0'; allowed: a finite float > 0"),
        (["train", "scan-snap", "--out", "x", "--momentum", "1"], "argument --momentum: '1'; allowed: 0 <= x < 1"),
        (["train", "scan-snap", "--out", "x", "--preset", "syn-huge"], "argument --preset: invalid choice"),
        (["train", "scan-snap", "--out", "x", "--seq-len", "1"], "argument --seq-len: '1'; allowed: an int >= 2"),
        (["train", "scan-snap", "--out", "x", "--steps", "ten"], "argument --steps: 'ten' is not an integer; allowed: an int >= 1"),
        (["train", "scan-snap"], "the following arguments are required: --out"),
    ],
)
def test_bad_flags_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err


def test_train_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "scan-snap", "--preset", "syn-medium", "--num-last", "3", "--steps", "3", "--batch", "8",
                 "--seq-len", "16", "--init", "random", "--quiet", "--out", str(out)]) == 0
    assert "run written to" in capsys.readouterr().out
    from sslens.store import RunStore

    cfg = RunStore(out).read_config()
    assert cfg["model"]["M"] == 79 and cfg["train"]["lr"] == {"blocks.0.attn.W_Q": 1.0, "unembed.W_U": 1.0}
    # an existing run: one line, exit 2
    assert main(["train", "scan-snap", "--steps", "3", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out:" in err and "--resume" in err


def test_console_script_installed():
    r = subprocess.run([sys.executable, "-m", "sslens.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "train" in r.stdout
