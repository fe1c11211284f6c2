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
        (["train", "scan-snap", "--out", "x", "--optimizer", "lbfgs"], "argument --optimizer: invalid choice: 'lbfgs' (choose from 'sgd', 'adam', 'adamw')"),
        (["train", "scan-snap", "--out", "x", "--eta-y", "0"], "argument --eta-y: '0'; allowed: a finite float > 0"),
        (["train", "scan-snap", "--out", "x", "--momentum", "1"], "argument --momentum: '1'; allowed: 0 <= x < 1"),
        (["train", "scan-snap", "--out", "x", "--preset", "syn-huge"], "argument --preset: invalid choice"),
        (["train", "scan-snap", "--out", "x", "--seq-len", "1"], "argument --seq-len: '1'; allowed: an int >= 2"),
        (["train", "scan-snap", "--out", "x", "--steps", "ten"], "argument --steps: 'ten' is not an integer; allowed: an int in 1 .. 99999999"),
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


def test_help_parses_without_torch():
    """``sslens --help`` and every verb's parser load no torch, TransformerLens, numpy or matplotlib."""
    code = ("import sys, sslens, sslens.cli; p = sslens.cli.build_parser(); p.format_help(); "
            "heavy = [m for m in ('torch', 'transformer_lens', 'numpy', 'matplotlib') if m in sys.modules]; "
            "print(heavy)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_every_flag_has_help_default_and_every_verb_an_example():
    def walk(p, path):
        yield path, p
        for act in p._actions:
            if act.__class__.__name__ == "_SubParsersAction":
                for name, sp in act.choices.items():
                    yield from walk(sp, path + [name])

    for path, p in walk(build_parser(), []):
        if path:
            assert "example" in (p.epilog or ""), path
        for act in p._actions:
            if act.__class__.__name__ in ("_HelpAction", "_VersionAction", "_SubParsersAction"):
                continue
            assert act.help, (path, act.dest)
            if act.option_strings and act.default not in (None, False) and act.required is False:
                assert "(default:" in p.format_help(), (path, act.dest)


def test_lazy_top_level_api():
    import sslens

    assert sslens.log_schedule(1000)[0] == 0 and sslens.log_schedule(1000)[-1] == 1000
    assert sslens.models.scan_snap(4).cfg.d_model == 4
    assert callable(sslens.data.syn_small)
    with pytest.raises(AttributeError):
        sslens.no_such_thing  # noqa: B018
