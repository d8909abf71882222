"""Property test of the tournament validator (issue 18, item 7): whatever YAML-like structure a file holds,
``parse_config`` returns a TournamentConfig or raises an ``ArenaError`` whose message is one line naming
the file; never another exception (a traceback is a bug report the user cannot act on)."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arena.params import ArenaError
from arena.registry import get_registry
from arena.tournament.config import DATASET_KEYS, RESOURCE_KEYS, TOP_KEYS, TournamentConfig, parse_config
from arena.trainer import RECIPE_PARAMS

PATH = Path(tempfile.gettempdir()) / "arena-property" / "t.yaml"  # never written: parse_config only reads

BASE = {
    "name": "prop",
    "datasets": [{"name": "digits", "params": {"size": 8}, "train": 50, "test": 20}],
    "protectors": ["none"],
    "exploiters": ["none"],
    "architectures": ["cnn-small"],
    "recipe": {"epochs": 1},
    "seeds": [0],
    "resources": {"cpus_per_trial": 1},
}

# Names and keys the validator knows (so generated structures get past the first check often), mixed
# with anything at all. ``plugins`` stays out of the keys: its strings would be imported.
NAMES = ["digits", "cifar10", "imagefolder", "none", "classwise-noise", "classwise-patch", "cnn-small",
         "resnet18", "iss-jpeg", "cutout", "adversarial-training", "eps", "size", "k", "cosine", "auto"]
KEYS = sorted((set(TOP_KEYS) - {"plugins"}) | set(DATASET_KEYS) | set(RESOURCE_KEYS)
              | {p.name for p in RECIPE_PARAMS.params}
              | {"params", "label", "seeds", "combine", "protect", "purify", "train", "eps", "size"})

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-3, max_value=70), st.integers(),
    st.sampled_from([2**63, -(2**64), 10**400, 0]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308]),
    st.text(max_size=12), st.sampled_from(NAMES), st.sampled_from(["", " ", "a\nb", "x\x00y", "../..", "~"]),
    st.dates(), st.binary(max_size=4),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=6), st.integers(-2, 2), st.none(), st.booleans())
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(keys, inner, max_size=4)), max_leaves=12)

# Where a mutation lands: the top level, or inside one entry of each list / mapping of the base file.
PLACES = [(), ("datasets", 0), ("datasets", 0, "params"), ("protectors", 0), ("exploiters", 0),
          ("architectures", 0), ("resources",), ("recipe",)]


def _set(doc: dict, place: tuple, key: Any, value: Any) -> None:
    node: Any = doc
    for step in place:
        if isinstance(node, dict) and step in node or isinstance(node, list) and len(node) > step:
            child = node[step]
        else:
            return
        if isinstance(child, str) and isinstance(node, list):  # "none" -> {"name": "none"}: room for keys
            child = node[step] = {"name": child}
        node = child
    if isinstance(node, dict):
        node[key] = value


documents = st.one_of(
    values,  # anything at all as the whole file
    st.builds(lambda muts: _mutated(muts),
              st.lists(st.tuples(st.sampled_from(PLACES), keys, values), min_size=1, max_size=4)),
    st.builds(lambda k, v: {**BASE, k: v}, st.sampled_from(sorted(set(TOP_KEYS) - {"plugins"})), values),
)


def _mutated(muts: list) -> dict:
    doc = copy.deepcopy(BASE)
    for place, key, value in muts:
        _set(doc, place, key, value)
    return doc


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_parse_config_returns_a_config_or_one_line_arena_error(doc: Any) -> None:
    try:
        cfg = parse_config(doc, PATH, get_registry())
    except ArenaError as e:
        msg = str(e)
        assert msg.startswith(str(PATH)), msg
        assert "\n" not in msg and msg.strip() == msg and len(msg) < 2000, msg
        return
    assert isinstance(cfg, TournamentConfig)
    assert cfg.datasets and cfg.protectors and cfg.exploiters and cfg.architectures and cfg.seeds


def test_the_base_document_is_valid() -> None:
    """The mutations start from a valid file, so most examples probe one wrong value at a time."""
    assert isinstance(parse_config(copy.deepcopy(BASE), PATH, get_registry()), TournamentConfig)
