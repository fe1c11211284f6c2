"""``sslens.cli.main`` run in-process by tests."""

from sslens.cli import main


def cli(argv, capsys):
    """(exit code, stdout, stderr) of ``sslens.cli.main(argv)``; a traceback fails the test."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err + out, err
    return code, out, err
