"""What the benchmark scripts share: one way to report a result row (stdout line + optional JSONL file)."""

from __future__ import annotations

import json
from typing import Any


def emit(row: dict[str, Any], out: str | None) -> None:
    """Print ``RESULT <json>`` (greppable from a log) and append the row to ``out`` when given, so a long
    run that dies keeps every row it finished."""
    line = json.dumps(row, default=str)
    print("RESULT " + line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")
