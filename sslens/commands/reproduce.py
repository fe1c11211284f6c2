"""``sslens reproduce TARGET --out DIR``: a paper's figures and theory checks, one command."""

from __future__ import annotations

import importlib

from sslens.reproduce import REPRODUCTIONS


def register(sub) -> None:
    p = sub.add_parser("reproduce", help="reproduce a paper's experiments and figures")
    targets = p.add_subparsers(dest="target", required=True, metavar="TARGET", parser_class=type(p))
    for name, modname in REPRODUCTIONS.items():
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name == modname:
                continue
            raise
        t = targets.add_parser(name, help=(mod.__doc__ or name).strip().splitlines()[0])
        mod.add_arguments(t)
        t.set_defaults(func=mod.run)
