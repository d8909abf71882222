"""The ``arena`` command. Every user error is one line on stderr, never a traceback."""

from __future__ import annotations

import argparse
import importlib
import sys

from .params import ArenaError

EXIT_USER_ERROR = 2


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    from . import __version__
    from .commands import COMMANDS

    parser = argparse.ArgumentParser(prog="arena", description="unlearnable-arena: protectors vs exploiters")
    parser.add_argument("--version", action="version", version=f"unlearnable-arena {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    runners = {}
    for name in COMMANDS:
        mod = importlib.import_module(f".commands.{name}", __package__)
        before = set(sub.choices)
        mod.add_parser(sub)
        for cmd in set(sub.choices) - before:
            runners[cmd] = mod.run
    return parser, runners


def main(argv: list[str] | None = None) -> int:
    parser, runners = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    try:
        return int(runners[args.command](args) or 0)
    except ArenaError as e:
        print(f"arena {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"arena {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
