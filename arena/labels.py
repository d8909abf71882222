"""Entry labels: the short, readable identity of a protector, exploiter or architecture entry.

A label is the bare name when the name appears once in its kind, otherwise the name plus only the params
that tell the same-name entries apart (``adversarial-training[eps=0.0157]``). Matrices and rankings group
by label, so two variants of one method are two columns instead of one silently averaged column.
Used by the tournament config (labels written into rows) and by the board (rows written before labels).
"""

from __future__ import annotations

import json
from typing import Any


def flatten(params: Any, prefix: str = "") -> dict[str, Any]:
    """Nested params as dotted keys, so a composition's part params can be told apart too."""
    if isinstance(params, dict):
        out: dict[str, Any] = {}
        for k, v in params.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: params}


def short(v: Any, exact: bool = False) -> str:
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, float):
        return repr(v) if exact else f"{v:.4g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v, sort_keys=True, separators=(",", ":"), default=str)
    return str(v)


def _canon(params: Any) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def distinguishing_labels(names: list[str], params: list[Any]) -> list[str]:
    """One label per entry; entries with equal name and params get equal labels (they are one entry)."""
    labels = list(names)
    by_name: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        by_name.setdefault(n, []).append(i)
    for name, idx in by_name.items():
        distinct = {_canon(params[i]) for i in idx}
        if len(distinct) < 2:
            continue
        flat = {i: flatten(params[i]) for i in idx}
        keys = sorted({k for i in idx for k in flat[i]})
        differ = [k for k in keys if len({_canon(flat[i].get(k)) for i in idx}) > 1]
        for exact in (False, True):
            cand = {i: f"{name}[{','.join(f'{k}={short(flat[i].get(k), exact)}' for k in differ)}]" for i in idx}
            by_label = {}
            for i in idx:
                by_label.setdefault(cand[i], set()).add(_canon(params[i]))
            if all(len(s) == 1 for s in by_label.values()):
                break
        else:  # params that differ only in their types or nesting: number the variants
            order = sorted(distinct)
            cand = {i: f"{name}#{order.index(_canon(params[i])) + 1}" for i in idx}
        for i in idx:
            labels[i] = cand[i]
    return labels
