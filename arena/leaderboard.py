"""The Parquet leaderboard: one file per finished cell, read back as one ``pyarrow.dataset``.

Each row is written to ``.tmp-*`` and renamed, so readers (which skip dot-files) never see half a row,
and a killed tournament loses at most the cells that were running.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq

from .storage import Storage, is_uri

Where = Path | str | Storage  # a local directory, or rows behind a storage URI (arena/storage.py)


def _remote(where: Where) -> Storage | None:
    """The storage when ``where`` is not a local directory (rows behind a URI), else None."""
    if isinstance(where, Storage):
        return None if where.is_local else where
    if isinstance(where, str) and is_uri(where):
        st = Storage(where)
        return None if st.is_local else st
    return None


def _local(where: Where) -> Path:
    if isinstance(where, Storage):
        return Path(where.base)
    if isinstance(where, str) and where.startswith("file://"):
        return Path(Storage(where).base)
    return Path(where)


def _is_row_name(rel: str) -> bool:
    parts = rel.split("/")
    return parts[-1].startswith("cell-") and parts[-1].endswith(".parquet") and not any(
        p.startswith(".") for p in parts)

SCHEMA_VERSION = "2"

# Schema 2 added: *_label (an entry's identity in its tournament: the name, or name plus distinguishing
# params, or the YAML's ``label:``), traceback (of a failed cell), budget_kind/budget_value (the declared
# threat model), protect_info (the protect stage's own convergence diagnostics, JSON), weak (it stopped
# short of its own criterion) and noise_separability (arena/diagnostics.py), code_hash (of the code that produced the cell) and precision (fp32 / bf16).
# Rows of schema 1 read back with these columns null. Later additions within schema 2, null in older rows:
# noise_class_share (arena/diagnostics.py).
SCHEMA = pa.schema([
    ("tournament", pa.string()), ("dataset", pa.string()), ("dataset_params", pa.string()),
    ("train_images", pa.int64()),
    ("protector", pa.string()), ("protector_params", pa.string()), ("protector_label", pa.string()),
    ("exploiter", pa.string()), ("exploiter_params", pa.string()), ("exploiter_label", pa.string()),
    ("architecture", pa.string()), ("recipe", pa.string()), ("architecture_label", pa.string()),
    ("poison_ratio", pa.float64()), ("train_subset", pa.string()), ("seed", pa.int64()),
    ("status", pa.string()), ("error", pa.string()), ("traceback", pa.string()),
    ("clean_acc", pa.float64()), ("best_acc", pa.float64()), ("best_epoch", pa.int64()),
    ("selected_acc", pa.float64()), ("robust_acc", pa.float64()),
    ("acc_curve", pa.list_(pa.float64())), ("train_acc", pa.float64()), ("epochs", pa.int64()),
    ("noise_linf", pa.float64()), ("noise_l2", pa.float64()), ("patch_area", pa.float64()),
    ("psnr", pa.float64()), ("ssim", pa.float64()), ("lpips", pa.float64()),
    ("budget_kind", pa.string()), ("budget_value", pa.float64()),
    ("protect_info", pa.string()), ("weak", pa.bool_()), ("noise_separability", pa.float64()),
    ("noise_class_share", pa.float64()),
    ("purify_psnr", pa.float64()), ("purify_ssim", pa.float64()),
    ("protect_s", pa.float64()), ("purify_s", pa.float64()), ("train_s", pa.float64()),
    ("images_per_s", pa.float64()),
    ("device", pa.string()), ("arena_version", pa.string()), ("torch_version", pa.string()),
    ("git_sha", pa.string()), ("config_hash", pa.string()), ("cell_key", pa.string()),
    ("code_hash", pa.string()), ("precision", pa.string()),
    ("extra", pa.string()), ("finished_at", pa.timestamp("s", tz="UTC")),
], metadata={"arena_schema_version": SCHEMA_VERSION})


def row_path(out_dir: Path, cell_key: str) -> Path:
    return Path(out_dir) / f"cell-{cell_key}.parquet"


def _compatible(stored: pa.DataType, expected: pa.DataType) -> bool:
    """Parquet has no second-resolution timestamps (they come back as ms) and all-null columns may be
    typed null: both read back under SCHEMA; anything else must match exactly."""
    return (stored.equals(expected) or pa.types.is_null(stored)
            or (pa.types.is_timestamp(stored) and pa.types.is_timestamp(expected)))


def row_file_problem(path: Path | str, filesystem: Any = None) -> str | None:
    """Why a ``cell-*.parquet`` file is not a row this code can read (None: it is). Reads the footer
    only: a truncated or foreign file has none, or lacks the row columns, or types them differently."""
    try:
        schema = pq.read_schema(path, filesystem=filesystem)
    except Exception as e:  # pyarrow raises several types for "not Parquet"
        return f"not a readable Parquet file ({type(e).__name__})"
    for name in ("cell_key", "status"):
        if name not in schema.names:
            return f"not an arena row file (no '{name}' column)"
    for f in schema:
        if f.name in SCHEMA.names and not _compatible(f.type, SCHEMA.field(f.name).type):
            return f"not an arena row file (column '{f.name}' is {f.type}, expected {SCHEMA.field(f.name).type})"
    return None


def _warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr)


def move_aside_bad_rows(out_dir: Where) -> list[str]:
    """Move unreadable or foreign ``cell-*.parquet`` files to ``<out_dir>/.corrupt/`` (kept, not deleted)
    so their cells count as unfinished and are recomputed; one line per file moved."""
    st = _remote(out_dir)
    if st is not None:
        lines = []
        for rel in st.list():
            why = row_file_problem(st.full(rel), st.fs) if _is_row_name(rel) else None
            if why is not None:
                st.move(rel, f".corrupt/{rel}")
                lines.append(f"{st.url(rel)}: {why}; moved to {st.url('.corrupt/' + rel)}, its cell will be recomputed")
        return lines
    out_dir = _local(out_dir)
    lines = []
    for p in sorted(out_dir.glob("cell-*.parquet")) if out_dir.is_dir() else []:
        why = row_file_problem(p)
        if why is None:
            continue
        dest = out_dir / ".corrupt" / p.name
        dest.parent.mkdir(exist_ok=True)
        os.replace(p, dest)
        lines.append(f"{p}: {why}; moved to {dest}, its cell will be recomputed")
    return lines


def finished_keys(out_dir: Where, statuses: tuple[str, ...] | None = None) -> set[str]:
    """Cell keys that already have a readable row (optionally only rows with the given statuses)."""
    st = _remote(out_dir)
    if st is not None:
        keys = {rel[len("cell-"):-len(".parquet")] for rel in st.list()
                if _is_row_name(rel) and row_file_problem(st.full(rel), st.fs) is None}
    else:
        out_dir = _local(out_dir)
        if not out_dir.exists():
            return set()
        keys = {p.name[len("cell-"):-len(".parquet")] for p in out_dir.glob("cell-*.parquet")
                if row_file_problem(p) is None}
    if statuses is None or not keys:
        return keys
    t = read_table(out_dir, columns=["cell_key", "status"], warn=None)
    return {k for k, s in zip(t.column("cell_key").to_pylist(), t.column("status").to_pylist()) if s in statuses}


def write_row(out_dir: Where, row: dict[str, Any]) -> Path | str:
    values = {}
    for f in SCHEMA:
        v = row.get(f.name)
        if f.name == "extra" and v is not None and not isinstance(v, str):
            v = json.dumps(v, default=float, sort_keys=True)
        values[f.name] = [v]
    table = pa.table(values, schema=SCHEMA)
    st = _remote(out_dir)
    if st is not None:  # one PUT of the whole file: an object store never shows half of it
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf)
        name = f"cell-{row['cell_key']}.parquet"
        st.write_bytes(name, buf.getvalue().to_pybytes())
        return st.url(name)
    out_dir = _local(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = row_path(out_dir, row["cell_key"])
    tmp = out_dir / f".tmp-{os.getpid()}-{path.name}"
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def cell_files(path: Path) -> list[str]:
    """Every finished cell file under ``path``, subdirectories included (``leaderboard/`` holds one folder
    per tournament), skipping hidden folders (stage caches) and half-written ``.tmp-*`` files."""
    return sorted(str(p) for p in Path(path).rglob("cell-*.parquet")
                  if not any(part.startswith(".") for part in p.relative_to(path).parts))


def read_table(path: Where, columns: list[str] | None = None,
               warn: Callable[[str], None] | None = _warn) -> pa.Table:
    """All rows under ``path`` (a directory tree of cell files, or one Parquet file; local or behind a
    storage URI). Unreadable or foreign files are skipped with one ``warn`` line each, so one bad file
    never hides the others."""
    st = _remote(path)
    fs = st.fs if st is not None else None
    if st is not None:
        files = [st.full(rel) for rel in st.list(recursive=True) if _is_row_name(rel)]
        if not files and st.exists("") and st.fs.get_file_info(st.base).type.name == "File":
            files = [st.base]
    else:
        path = _local(path)
        files = cell_files(path) if path.is_dir() else [str(path)]
    source = []
    for f in files:
        why = row_file_problem(f, fs)
        if why is None:
            source.append(f)
        elif warn is not None:
            warn(f"{f}: {why}; skipped")
    if not source:
        return SCHEMA.empty_table() if columns is None else SCHEMA.empty_table().select(columns)
    ds = pds.dataset(source, format="parquet", schema=SCHEMA, filesystem=fs)
    return ds.to_table(columns=columns)


def read_rows(path: Where) -> list[dict[str, Any]]:
    rows = read_table(path).to_pylist()
    rows.sort(key=lambda r: (r["tournament"] or "", r["dataset"] or "", r["architecture"] or "",
                             r["protector"] or "", r["exploiter"] or "", r["poison_ratio"] or 0, r["seed"] or 0))
    return rows
