"""``arena plugins``: what is installed, where it came from, what it registered."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from ..registry import get_registry


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plugins", help="list installed plugins and what they register")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    reg = get_registry()
    infos = reg.plugins()
    if args.json:
        out = []
        for info in infos:
            d = asdict(info)
            details = {}
            for kind, names in info.registered.items():
                for n in names:
                    obj = reg.entry(kind, n).obj
                    params = getattr(getattr(obj, "params", None), "params", None)
                    if params is not None:
                        details[n] = {"kind": kind[:-1], "summary": getattr(obj, "summary", ""),
                                      "params": {q.name: {"type": q.type.__name__, "default": q.default,
                                                          "accepted": q.accepted(), "help": q.help} for q in params}}
            d["details"] = details
            out.append(d)
        print(json.dumps(out, indent=2, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title="arena plugins")
    for col in ("plugin", "version", "source", "hooks", "registered"):
        t.add_column(col)
    for info in infos:
        reg_txt = "\n".join(f"{k}: {', '.join(v)}" for k, v in info.registered.items())
        t.add_row(info.name, info.version, info.source, "\n".join(info.hooks), reg_txt)
    Console().print(t)
    return 0
