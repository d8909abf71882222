"""What the benchmark scripts share: one way to report a result row (stdout line + optional JSONL file)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from arena.progress import RichProgress


def progress() -> RichProgress:
    """Rich progress bars for the protect, purify and train stages: a CPU-sized benchmark runs for an hour
    and should say where it is (the arena's Context is silent by default)."""
    from arena.progress import RichProgress

    return RichProgress()


def emit(row: dict[str, Any], out: str | None) -> None:
    """Print ``RESULT <json>`` (greppable from a log) and append the row to ``out`` when given, so a long
    run that dies keeps every row it finished."""
    line = json.dumps(row, default=str)
    print("RESULT " + line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def splits_for(dataset: str, size: int, root: str | None, train: int | None, test: int | None, seed: int) -> Any:
    """The benchmark's splits, loaded the way a tournament loads them (``size`` only for loaders that take it;
    ``root`` falls back to ``$ARENA_DATA``); 0 or None for ``train``/``test`` means the whole split."""
    from arena.commands.common import load_splits
    from arena.registry import get_registry

    loader = get_registry().dataset(dataset)
    params = {"size": size} if "size" in {p.name for p in loader.params.params} else {}
    return load_splits(dataset, params, root if loader.needs_root else None, False, train or None, test or None,
                       0.1, seed)


def apply_sets(raw: dict[str, Any], sets: list[str], where: str) -> dict[str, Any]:
    """Apply ``--set`` overrides to a tournament's raw YAML mapping, so a one-parameter variant of a committed
    file is a command line and not a copied file that drifts from it.

    ``LABEL.PARAM=VALUE`` sets a protector entry's param (LABEL is the entry's ``label`` or name);
    ``recipe.FIELD=VALUE`` sets a field of the top-level recipe. VALUE is read as YAML (``10``, ``0.05``,
    ``true``, ``"8,16"``).
    """
    import yaml

    labels = []
    for i, e in enumerate(raw.get("protectors") or []):
        if isinstance(e, str):
            e = raw["protectors"][i] = {"name": e}
        labels.append(e.get("label", e.get("name")))
    for s in sets:
        key, sep, value = s.partition("=")
        head, dot, field = key.partition(".")
        if not sep or not dot or not field:
            raise SystemExit(f"--set {s!r}: expected LABEL.PARAM=VALUE or recipe.FIELD=VALUE")
        v = yaml.safe_load(value)
        if head == "recipe":
            raw.setdefault("recipe", {})[field] = v
        elif head in labels:
            entry = raw["protectors"][labels.index(head)]
            entry.setdefault("params", {})[field] = v
        else:
            raise SystemExit(f"--set {s!r}: '{head}' is neither 'recipe' nor a protector entry of {where} "
                             f"({', '.join(map(str, labels))})")
    return raw


def tournament_raw(path: str, sets: list[str]) -> dict[str, Any]:
    """A tournament file's raw YAML mapping with the ``--set`` overrides applied, for scripts that change or
    parse it further (``arena.tournament.config.parse_config``)."""
    from pathlib import Path

    import yaml

    return apply_sets(yaml.safe_load(Path(path).read_text()), sets, path)


def noise_class_share(clean: Any, protected: Any) -> dict[str, float]:
    """How much of a protector's noise is one pattern per class (``class_share``, the stage metric
    ``arena.diagnostics.noise_class_share``, a row column since the fifth session), and its root mean
    square in [0,1] units (``rms``). On SEM/REM the victim's accuracy follows the class share (BENCHMARKS.md)."""
    from arena.diagnostics import noise_class_share as share

    d = protected.images.float().div(255) - clean.images.float().div(255)
    return {"class_share": share(clean.images, protected.images, clean.labels) or 0.0,
            "rms": float(d.pow(2).mean().sqrt())}
