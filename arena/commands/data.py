"""``arena data``: load a data set the way a tournament would and show the splits."""

from __future__ import annotations

import argparse
import time

from .common import add_data_args, splits_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="load a data set and show its splits (also fills the decode cache)")
    add_data_args(p)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    t0 = time.perf_counter()
    s = splits_from_args(args)
    t = Table(title=f"{args.dataset} (loaded in {time.perf_counter() - t0:.1f} s)")
    for col in ("split", "images", "shape", "classes", "who sees it"):
        t.add_column(col)
    who = {"train": "protector (clean), exploiter (protected)", "raw": "exploiter (unlabeled)", "test": "arena only"}
    for name in ("train", "raw", "test"):
        d = getattr(s, name)
        t.add_row(name, str(len(d)), "x".join(map(str, d.shape)), str(d.num_classes), who[name])
    Console().print(t)
    return 0
