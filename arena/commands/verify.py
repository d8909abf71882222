"""``arena verify DIR``: check every stored split and stage output of a tournament directory against its
recorded hash, without running anything (e.g. before publishing a leaderboard, or after a crash)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..integrity import IntegrityError, load_verified
from ..params import ArenaError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check stored splits and stage outputs against their content hashes")
    p.add_argument("dir", help="a tournament output directory (the one holding .cache/)")


def bad_files(out_dir: Path) -> tuple[int, list[str]]:
    """(files checked, one line per bad file). Works on the output directory or its ``.cache``."""
    root = out_dir / ".cache" if (out_dir / ".cache").is_dir() else out_dir
    checked, bad = 0, []
    for d in sorted(p for p in (root / "data").glob("*") if p.is_dir()):
        manifest = d / "manifest.json"
        try:
            hashes = json.loads(manifest.read_text())["hashes"]
        except (OSError, ValueError, KeyError, TypeError):
            bad.append(f"{manifest}: missing or unreadable split manifest")
            continue
        for name, h in sorted(hashes.items()):
            checked += 1
            try:
                load_verified(d / f"{name}.npz", h)
            except IntegrityError as e:
                bad.append(str(e))
    for stage in ("protect", "purify"):
        for js in sorted((root / stage).glob("*.json")):
            checked += 1
            try:
                expected = json.loads(js.read_text()).get("content_hash")
            except (OSError, ValueError):
                bad.append(f"{js}: unreadable stage sidecar")
                continue
            if expected is None:  # written before hashes existed: the next run recomputes it, not an error
                continue
            try:
                load_verified(js.with_suffix(".npz"), expected)
            except IntegrityError as e:
                bad.append(str(e))
    return checked, bad


def run(args: argparse.Namespace) -> int:
    out_dir = Path(args.dir)
    if not out_dir.is_dir():
        raise ArenaError(f"{out_dir}: not a directory")
    checked, bad = bad_files(out_dir)
    for line in bad:
        print(line)
    print(f"{out_dir}: {checked} stored files checked, {len(bad)} bad", file=sys.stderr if bad else sys.stdout)
    return 1 if bad else 0
