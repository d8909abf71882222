"""``amp: auto`` decided by measurement: bf16 on CUDA; on a CPU only where bf16 is measurably faster.

Why measure: a CPU flag says nothing about speed. On 2 AMD EPYC cores with avx512_bf16, bf16 autocast
trained resnet18 2.4x faster; on a 2-core Intel Xeon with avx512_bf16 and no AMX it was slower
(resnet18 50 img/s bf16 vs 68 fp32, cnn-small 1,750 vs 2,088) and changed the results. So the arena
times a few training steps of the actual model (architecture, input shape, batch size) in float32 and
in bf16 autocast (both with the recipe's memory layout) and turns bf16 on only when it is at least
:data:`MARGIN` faster. The verdict is cached per machine (CPU model, thread count, torch version) and
model shape in ``precision.json`` under the arena cache root (``$ARENA_CACHE``, else
``~/.cache/unlearnable-arena``), so it is measured once, and a tournament decides it on the driver
before hashing the cell keys, so every worker trains a cell in the same precision and the row says which.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .data import cache_root

MARGIN = 1.10  # bf16 must be >= 10 % faster: a smaller gain is not worth numbers that differ from fp32
STEP_BUDGET_S = 0.3  # the measuring batch is sized so that one step takes about this long
MAX_BATCH = 32
ROUNDS = 2  # timed (fp32, bf16) step pairs; the fastest step of each precision counts


def cache_file() -> Path:
    return cache_root() / "precision.json"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def _key(model: torch.nn.Module, shape: tuple[int, int, int], batch_size: int, channels_last: bool,
         threads: int) -> str:
    n = sum(p.numel() for p in model.parameters())
    c, h, w = shape
    return (f"{cpu_name()} | {threads} threads | torch {torch.__version__} | {type(model).__name__} {n} params | "
            f"{c}x{h}x{w} | batch {batch_size} | {'channels_last' if channels_last else 'nchw'}")


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write(path: Path, key: str, entry: dict[str, Any]) -> None:
    """Merge one entry into the file: re-read just before writing, then temp file + rename, so concurrent
    writers never leave a torn file (at worst one's entry is lost and measured again later)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _read(path)
    data[key] = entry
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _step_time(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               amp: bool) -> float:
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        loss = F.cross_entropy(model(x).float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def measure(model: torch.nn.Module, shape: tuple[int, int, int], num_classes: int, batch_size: int,
            channels_last: bool = True) -> dict[str, Any]:
    """Images per second of a training step in fp32 and in bf16 autocast, on a copy of ``model`` (the
    caller's weights and random state are untouched). A probe at batch 4 sizes the measuring batch so a
    step takes about :data:`STEP_BUDGET_S`; every batch shape gets an untimed warm-up step first (oneDNN
    builds its kernels on the first call), so the whole measurement takes a few seconds."""
    m = copy.deepcopy(model).cpu().train()
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)
    gen = torch.Generator().manual_seed(0)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.rand((n, *shape), generator=gen)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, torch.randint(0, max(1, num_classes), (n,), generator=gen)

    probe = 4
    x, y = batch(probe)
    _step_time(m, opt, x, y, False)
    per_image = _step_time(m, opt, x, y, False) / probe
    bs = max(probe, min(batch_size, MAX_BATCH, int(STEP_BUDGET_S / max(per_image, 1e-9))))
    if bs != probe:
        x, y = batch(bs)
        _step_time(m, opt, x, y, False)
    _step_time(m, opt, x, y, True)
    t32, t16 = [], []
    for _ in range(ROUNDS):  # interleaved, so a neighbour's load hits both precisions alike
        t32.append(_step_time(m, opt, x, y, False))
        t16.append(_step_time(m, opt, x, y, True))
    return {"fp32_img_s": bs / min(t32), "bf16_img_s": bs / min(t16), "batch": bs}


def bf16_faster(model: torch.nn.Module, shape: tuple[int, int, int], num_classes: int, batch_size: int, *,
                channels_last: bool = True, threads: int | None = None) -> bool:
    """Whether bf16 autocast trains ``model`` at least :data:`MARGIN` faster than fp32 on this CPU with
    ``threads`` threads; measured once and cached (see the module docstring)."""
    threads = threads or torch.get_num_threads()
    key = _key(model, shape, batch_size, channels_last, threads)
    path = cache_file()
    hit = _read(path).get(key)
    if isinstance(hit, dict) and isinstance(hit.get("bf16"), bool):
        return hit["bf16"]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        res = measure(model, shape, num_classes, batch_size, channels_last)
    finally:
        torch.set_num_threads(before)
    res["bf16"] = res["bf16_img_s"] >= MARGIN * res["fp32_img_s"]
    res["measured_at"] = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    _write(path, key, res)
    return res["bf16"]


def resolve_amp(flag: str, device: torch.device | str, model: torch.nn.Module, shape: tuple[int, int, int],
                num_classes: int, batch_size: int, *, channels_last: bool = True, threads: int | None = None) -> bool:
    """The recipe's ``amp`` flag as a decision: ``on``/``off`` as written (never measured), ``auto`` bf16 on
    CUDA and, on a CPU, whatever :func:`bf16_faster` measured."""
    if flag in ("on", "off"):
        return flag == "on"
    kind = torch.device(device).type
    if kind != "cpu":
        return kind == "cuda"
    return bf16_faster(model, shape, num_classes, batch_size, channels_last=channels_last, threads=threads)
