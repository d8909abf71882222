"""CLI subcommands, one module each: ``add_parser(subparsers)`` and ``run(args) -> int``."""

COMMANDS = ["plugins", "check_plugin", "data", "train", "tournament", "leaderboard", "compare", "protect", "verify"]
