"""``arena verify DIR|URI``: check every stored split and stage output of a tournament's storage against its
recorded hash, without running anything (e.g. before publishing a leaderboard, or after a crash)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..params import ArenaError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check stored splits and stage outputs against their content hashes")
    p.add_argument("dir", help="a tournament's output directory or storage URI (the one holding .cache/; "
                               "s3://bucket/dir, gs://, hdfs://, file:///path)")


def bad_files(location: Path | str) -> tuple[int, list[str]]:
    """(files checked, one line per bad file). Works on the tournament's storage or its ``.cache``."""
    from ..storage import Storage
    from ..tournament.stagecache import StageCache

    store = Storage(location)
    root = store.child(".cache") if store.list(".cache", recursive=True) else store
    return StageCache(root).verify()


def run(args: argparse.Namespace) -> int:
    from ..storage import is_uri

    where: Path | str = args.dir if is_uri(args.dir) else Path(args.dir)
    if isinstance(where, Path) and not where.is_dir():
        raise ArenaError(f"{where}: not a directory")
    try:
        checked, bad = bad_files(where)
    except OSError as e:  # an unreachable bucket, missing credentials: pyarrow's message, on one line
        raise ArenaError(f"{where}: cannot read the storage ({' '.join(str(e).split())[:200]})") from None
    for line in bad:
        print(line)
    print(f"{where}: {checked} stored files checked, {len(bad)} bad", file=sys.stderr if bad else sys.stdout)
    return 1 if bad else 0
