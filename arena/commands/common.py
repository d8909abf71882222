"""Helpers shared by CLI commands: parsing JSON params, choosing the device, building splits."""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from ..data import Splits
from ..params import ArenaError
from ..splits import load_splits  # noqa: F401  (re-exported: commands import it from here)


def json_params(text: str | None, flag: str = "--params") -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ArenaError(f"{flag} {text!r}: not valid JSON ({e.msg}); expected e.g. '{{\"eps\": 0.0314}}'") from None
    if not isinstance(value, dict):
        raise ArenaError(f"{flag} {text!r}: expected a JSON object")
    return value


def pick_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ArenaError(f"--device {name}: CUDA is not available on this machine; use 'cpu' or 'auto'")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ArenaError(f"--device {name!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'") from None


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="digits", help="registered data set (default: digits)")
    p.add_argument("--dataset-params", default=None, help="JSON params of the loader, e.g. '{\"size\": 16}'")
    p.add_argument("--data-root", default=None, help="where the data set lives (else $ARENA_DATA)")
    p.add_argument("--download", action="store_true", help="allow downloading the data set into --data-root")
    p.add_argument("--train-size", type=int, default=None, help="class-balanced train subset size")
    p.add_argument("--test-size", type=int, default=None)
    p.add_argument("--raw-fraction", type=float, default=0.1, help="share of the original train split kept as raw pool")
    p.add_argument("--seed", type=int, default=0)


def splits_from_args(args: argparse.Namespace) -> Splits:
    for flag, n in (("--train-size", args.train_size), ("--test-size", args.test_size)):
        if n is not None and n < 1:
            raise ArenaError(f"{flag} {n}: expected a positive number of images")
    return load_splits(args.dataset, json_params(args.dataset_params, "--dataset-params"), args.data_root,
                       args.download, args.train_size, args.test_size, args.raw_fraction, args.seed)
