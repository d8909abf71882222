"""``arena check-plugin NAME``: the conformance check a plugin author runs before publishing."""

from __future__ import annotations

import argparse

from ..conformance import check_plugin
from ..params import ArenaError
from ..registry import get_registry, load_extra_plugins
from .common import json_params


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check-plugin", help="run a protector's or exploiter's contract on tiny data")
    p.add_argument("name")
    p.add_argument("--kind", choices=("protector", "exploiter"), default=None,
                   help="needed only when the name is both a protector and an exploiter (checks both otherwise)")
    p.add_argument("--params", default=None,
                   help="JSON params over the defaults (use cheap ones: the check runs on CPU); without it the "
                        "plugin's own check_params are used, and '{}' checks the paper defaults")
    p.add_argument("--size", type=int, default=16, help="side of the tiny synthetic images")
    p.add_argument("--plugins", action="append", default=[], metavar="MODULE_OR_FILE",
                   help="load a plugin that is not installed first: a module name or a .py file, as a "
                        "tournament's plugins: key takes it (repeatable)")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    reg = get_registry()
    if args.plugins:  # the same loader as a tournament's driver and workers, relative to where you are
        load_extra_plugins(reg, args.plugins)
    kinds = [args.kind] if args.kind else [k for k in ("protector", "exploiter") if args.name in reg.tables[k + "s"]]
    if not kinds:
        valid = ", ".join(sorted(set(reg.names("protectors")) | set(reg.names("exploiters"))))
        raise ArenaError(f"no protector or exploiter named '{args.name}'; valid choices: {valid}")
    params = json_params(args.params) if args.params is not None else None
    console = Console()
    failed = 0
    for kind in kinds:
        for r in check_plugin(kind, args.name, params, size=args.size):
            mark = "[green]PASS[/green]" if r.ok else "[red]FAIL[/red]"
            console.print(f"{mark} {kind} {args.name}: {r.name}" + (f" [dim]({r.detail})[/dim]" if r.detail else ""))
            failed += not r.ok
    console.print(f"{'[red]' if failed else '[green]'}{failed} failed[/]")
    return 1 if failed else 0
