"""Protect a folder of your own photos: the logic behind ``arena protect``.

Generic over protectors, through the contract only:
- a protector with ``supports_encoder`` protects unlabeled photos with a trained encoder (one forward pass);
- any other protector needs labels: ``SRC/<class>/...`` supplies them, and the whole folder is protected
  as one labeled set with ``protector.protect``.

Sizes. Photos come in any size; generators and error-minimizing noise are computed at a fixed working
side S (the encoder's training size, or ``size``). The default ``mode="resize"`` computes the noise on
the photo resized to S x S and resizes the *noise* (not the photo) back to the photo's size with
bilinear interpolation, then adds it to the untouched full-resolution photo. Why: a scraper that trains
on these photos downsamples them to its own resolution, and full-resolution pixel-scale noise would be
averaged away by that downsampling, while noise made at training scale survives it. The budget still
holds: bilinear interpolation is a convex combination, so an upsampled noise stays inside [-eps, eps]
(and the result is clipped to the budget before rounding anyway). ``mode="full"`` (encoders only) runs
the fully convolutional encoder directly at the photo's resolution; the encoder's ``eps * tanh``
output bound holds at any size, and the written file is checked like every other.

Files. Relative paths and formats are kept (PNG stays PNG, JPEG stays JPEG, ...); images are converted
to RGB for protection (an alpha channel is carried over unchanged). A grayscale photo (L, LA, 1, I, F) is
protected as three equal channels, because protectors and encoders work on RGB, and written back as
grayscale: its noise is the luma (0.299 R + 0.587 G + 0.114 B) of the RGB noise, a convex combination, so
the L-inf budget still holds and no colour noise appears on a grey photo.

Metadata. Identifying metadata (EXIF, which holds GPS position, camera and serial number, date; XMP;
JPEG comments; PNG text chunks) is dropped unless ``keep_metadata``: people protecting their photos
publish the outputs, and a protection that leaks where the photo was taken would defeat its purpose.
Kept always: DPI, the ICC colour profile, and the EXIF orientation tag alone (without it a rotated
phone photo would display sideways).

Existing files. Nothing in DST is overwritten unless ``overwrite``: every destination is checked before
anything is written, so a refused run leaves DST as it was. Lossy formats are written at the
highest quality (JPEG q100, 4:4:4); if the codec's own rounding pushes a pixel past the budget, the noise
is shrunk by the excess and the file re-written (a few rounds), so the budget is checked on the decoded
bytes actually written. Each file is written to a temporary name in the destination folder and renamed
into place. The source folder is never written: DST may not be SRC, lie inside it, or contain it.
"""

from __future__ import annotations

import io
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .budget import Budget, quantize
from .context import Context
from .contracts import Encoder, Protector
from .data import ImageSet
from .metrics import psnr, ssim
from .params import ArenaError

IMG_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
LOSSY = {"JPEG", "WEBP"}
MODES = ("resize", "full")


@dataclass
class PhotoResult:
    path: str  # relative to SRC (and DST)
    size: tuple[int, int]  # width, height
    format: str
    linf: float  # in [0,1] units, measured on the decoded written file
    psnr: float
    ssim: float


@dataclass
class FolderSummary:
    src: str
    dst: str
    protector: str
    budget: str
    mode: str
    working_size: int
    files: list[PhotoResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # non-image files
    bad: list[str] = field(default_factory=list)  # "path: reason" of undecodable images skipped (skip_bad)
    metadata_kept: bool = False
    stripped: list[str] = field(default_factory=list)  # files whose identifying metadata was dropped
    gray: int = 0  # grayscale photos written back as grayscale
    seconds: float = 0.0

    @property
    def psnr(self) -> float:
        return float(np.mean([f.psnr for f in self.files])) if self.files else float("nan")

    @property
    def ssim(self) -> float:
        return float(np.mean([f.ssim for f in self.files])) if self.files else float("nan")

    @property
    def max_linf(self) -> float:
        return max((f.linf for f in self.files), default=0.0)


def check_folders(src: Path, dst: Path) -> tuple[Path, Path]:
    """Refuse anything that could write into the source folder."""
    src, dst = Path(src).expanduser().resolve(), Path(dst).expanduser().resolve()
    if not src.is_dir():
        raise ArenaError(f"source folder {src} does not exist or is not a folder")
    if dst == src:
        raise ArenaError(f"destination {dst} is the source folder; choose a new folder (sources are never overwritten)")
    if src in dst.parents:
        raise ArenaError(f"destination {dst} lies inside the source folder {src}; choose a folder outside it")
    if dst in src.parents:
        raise ArenaError(f"destination {dst} contains the source folder {src}; choose a folder beside it")
    if dst.exists() and not dst.is_dir():
        raise ArenaError(f"destination {dst} exists and is not a folder")
    return src, dst


def check_destinations(src: Path, dst: Path, overwrite: bool = False) -> list[Path]:
    """Refuse, before anything is written, a run that would replace a file already in DST: a second run
    into the same folder, or a folder of other photos, must not lose them silently. Returns the image
    files under ``src`` (relative)."""
    src, dst = check_folders(src, dst)
    rels, _ = scan(src)
    if not overwrite and dst.is_dir():
        taken = [r for r in rels if (dst / r).exists()]
        if taken:
            more = f" (and {len(taken) - 1} more)" if len(taken) > 1 else ""
            raise ArenaError(f"destination file {dst / taken[0]} already exists{more}; pass --overwrite to "
                             "replace it, or choose a new DST_DIR")
    return rels


def scan(src: Path) -> tuple[list[Path], list[Path]]:
    """Image files (by extension, sorted, recursive) and the other files, both relative to ``src``."""
    images, other = [], []
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            rel = (Path(root) / name).relative_to(src)
            if name.startswith("."):
                continue
            (images if Path(name).suffix.lower() in IMG_EXT else other).append(rel)
    return images, other


GRAY_MODES = {"L", "LA", "1", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
ORIENTATION = 0x0112  # the one EXIF tag kept when metadata is stripped
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, what PIL's convert("L") uses


@dataclass
class _Photo:
    rel: Path
    rgb: torch.Tensor  # uint8 3 x H x W (three equal channels for a grayscale photo)
    alpha: np.ndarray | None
    format: str
    info: dict[str, Any]
    gray: bool = False
    stripped: bool = False  # identifying metadata was present and is not written


def _metadata(im: Any, keep: bool) -> tuple[dict[str, Any], bool]:
    """The save() keywords that carry the metadata over, and whether identifying metadata was dropped."""
    from PIL import Image, PngImagePlugin

    info: dict[str, Any] = {k: v for k, v in im.info.items() if k in ("dpi", "icc_profile")}
    text = {k: v for k, v in getattr(im, "text", {}).items() if isinstance(v, str)} if im.format == "PNG" else {}
    identifying = {k: v for k, v in im.info.items() if k in ("exif", "xmp", "XML:com.adobe.xmp", "comment")}
    if keep:
        info.update(identifying)
        if text:
            png = PngImagePlugin.PngInfo()
            for k, v in text.items():
                png.add_text(k, v)
            info["pnginfo"] = png
        return info, False
    orientation = im.getexif().get(ORIENTATION) if "exif" in im.info else None
    if orientation not in (None, 1):
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        info["exif"] = exif.tobytes()
    return info, bool(identifying or text)


class BadImage(ArenaError):
    """An image that cannot be decoded: one line naming it, and the bare ``reason`` for a skip list."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot read image {path}: {reason}")
        self.reason = reason


def read_photo(src: Path, rel: Path, keep_metadata: bool = False) -> _Photo:
    """Decode one photo; any failure (a codec can raise almost anything on a crafted file) or an image over
    PIL's pixel limit is one line naming the file."""
    from PIL import Image

    path = src / rel
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # huge: name it, do not decode it
            with Image.open(path) as im:
                fmt = im.format or "PNG"
                info, stripped = _metadata(im, keep_metadata)
                gray = im.mode in GRAY_MODES
                alpha = np.asarray(im.getchannel("A")).copy() if im.mode in ("RGBA", "LA", "PA") else None
                if im.mode.startswith("I;16"):  # 16-bit grey: keep the top 8 bits
                    im = Image.fromarray((np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8), "L")
                elif gray and im.mode not in ("L", "LA"):
                    im = im.convert("L")
                rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(path, f"over PIL's pixel limit (Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS}): "
                             f"{_first_line(e)}") from None
    except MemoryError:
        raise BadImage(path, "out of memory while decoding") from None
    except Exception as e:  # noqa: BLE001 - see the docstring
        raise BadImage(path, _first_line(e).replace(f" {str(path)!r}", "")) from None
    return _Photo(rel, torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous(), alpha, fmt, info, gray, stripped)


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _resize_u8(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 C x H x W -> uint8 C x size, antialiased bilinear (the usual scraper's resize)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x.clone()
    y = F.interpolate(x[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return y.round().clamp(0, 255).to(torch.uint8)


def _resize_noise(d: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Float C x h x w noise -> C x size; bilinear (a convex combination: the bound is kept)."""
    if tuple(d.shape[-2:]) == tuple(size):
        return d
    down = size[0] < d.shape[-2] or size[1] < d.shape[-1]
    return F.interpolate(d[None], size=size, mode="bilinear", align_corners=False, antialias=down)[0]


def _encode_bytes(img: Any, fmt: str, info: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    kw: dict[str, Any] = dict(info)
    if fmt == "JPEG":
        kw.update(quality=100, subsampling=0, optimize=True)
    elif fmt == "WEBP":
        kw.update(lossless=True)
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _to_pil(rgb: torch.Tensor, alpha: np.ndarray | None, fmt: str) -> Any:
    from PIL import Image

    if rgb.shape[0] == 1:
        im = Image.fromarray(rgb[0].contiguous().numpy(), "L")
    else:
        im = Image.fromarray(rgb.permute(1, 2, 0).contiguous().numpy(), "RGB")
    if alpha is not None and fmt not in ("JPEG",):
        im.putalpha(Image.fromarray(alpha))
    return im


def _decode_bytes(data: bytes, gray: bool = False) -> torch.Tensor:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if gray:
            return torch.from_numpy(np.asarray(im.convert("L"), dtype=np.uint8).copy())[None]
        return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def _write(photo: _Photo, delta: torch.Tensor, budget: Budget, dst: Path, rounds: int = 4) -> tuple[torch.Tensor, str]:
    """Quantize, encode in the source's format, re-decode and re-check; shrink the noise if a lossy codec
    pushed pixels past the budget. Returns the decoded written pixels and the format used."""
    fmt = photo.format
    lim = math.floor(budget.value * 255 + 1e-6) if budget.kind == "linf" else None
    base = photo.rgb[:1] if photo.gray else photo.rgb
    if photo.gray:  # one grey channel: the luma of the RGB noise (a convex combination keeps the bound)
        delta = sum(w * delta[i] for i, w in enumerate(LUMA))[None]
    shrink = 0
    data, written = b"", base
    for _ in range(rounds):
        eps = None if lim is None else max(0, lim - shrink) / 255.0
        out = quantize(base[None], delta[None], eps)[0]
        try:
            data = _encode_bytes(_to_pil(out, photo.alpha, fmt), fmt, photo.info)
        except (OSError, KeyError, ValueError):  # a format PIL reads but cannot write: keep bytes lossless
            fmt = "PNG"
            data = _encode_bytes(_to_pil(out, photo.alpha, fmt), fmt, {})
        written = _decode_bytes(data, photo.gray)
        if lim is None:
            break
        excess = int((written.int() - base.int()).abs().max()) - lim
        if excess <= 0:
            break
        shrink += excess
    target = dst / photo.rel
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".tmp-{os.getpid()}-{target.name}")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, target)
    return (written.expand(3, -1, -1) if photo.gray else written), fmt


def _labels_from_folders(rels: list[Path]) -> tuple[list[int], list[str]]:
    loose = [r for r in rels if len(r.parts) < 2]
    if loose:
        raise ArenaError(f"this protector needs labels: put photos in SRC/<class>/ folders "
                         f"('{loose[0]}' is not inside a class folder)")
    classes = sorted({r.parts[0] for r in rels})
    if len(classes) < 2:
        raise ArenaError(f"this protector needs labels from at least two SRC/<class>/ folders; found {classes}")
    index = {c: i for i, c in enumerate(classes)}
    return [index[r.parts[0]] for r in rels], classes


def protect_folder(protector: Protector, src: Path, dst: Path, ctx: Context, *, encoder: Encoder | None = None,
                   mode: str = "resize", size: int | None = None, overwrite: bool = False,
                   keep_metadata: bool = False, skip_bad: bool = False) -> FolderSummary:
    """Protect every image under ``src`` into ``dst`` (same relative names and formats) and measure it.

    ``encoder``: a trained encoder for protectors with ``supports_encoder`` (required for them).
    ``size``: working side for the noise; default the encoder's training size, else 32.
    ``overwrite``: replace files already in ``dst`` (else refused before anything is written).
    ``keep_metadata``: copy EXIF, XMP, comments and PNG text (else dropped; see the module docstring).
    ``skip_bad``: leave undecodable images out (listed in ``summary.bad``) instead of refusing the folder.
    """
    t0 = time.perf_counter()
    if mode not in MODES:
        raise ArenaError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
    check_destinations(src, dst, overwrite)
    src, dst = check_folders(src, dst)
    rels, other = scan(src)
    if not rels:
        raise ArenaError(f"no images ({', '.join(sorted(IMG_EXT))}) found under {src}")
    if protector.supports_encoder and encoder is None:
        raise ArenaError(f"protector '{protector.name}' encrypts with a trained encoder: pass --model G.pt "
                         "or train one with --train-on DATASET")
    if not protector.supports_encoder and mode == "full":
        raise ArenaError(f"mode 'full' needs an encoder; protector '{protector.name}' has none (use 'resize')")
    work = int(size or getattr(encoder, "image_size", None) or 32)
    photos, bad = [], []
    for r in rels:
        try:
            photos.append(read_photo(src, r, keep_metadata))
        except BadImage as e:
            if not skip_bad:
                raise ArenaError(f"{e}; pass --skip-bad to leave undecodable images out") from None
            bad.append(f"{r}: {e.reason}")
    if not photos:
        raise ArenaError(f"none of the {len(rels)} images under {src} could be decoded (first: {bad[0]})")
    rels = [p.rel for p in photos]
    shapes = [tuple(p.rgb.shape[-2:]) for p in photos]
    small = torch.stack([_resize_u8(p.rgb, (work, work)) for p in photos])

    if encoder is not None:
        budget = getattr(encoder, "budget", None)
        if mode == "full":
            deltas = []
            for p in photos:
                enc = encoder.encode(p.rgb[None])[0]
                deltas.append((enc.float() - p.rgb.float()) / 255.0)
        else:
            enc_small = encoder.encode(small)
            noise = (enc_small.float() - small.float()) / 255.0
            deltas = [_resize_noise(noise[i], shapes[i]) for i in range(len(photos))]
        if budget is None:
            budget = protector.budget(ImageSet(small, torch.zeros(len(small), dtype=torch.long), ["?"], "train"))
    else:
        labels, classes = _labels_from_folders(rels)
        train = ImageSet(small, torch.tensor(labels, dtype=torch.int64), classes, "train")
        out = protector.protect(train, ctx)
        prot = out.images if isinstance(out, ImageSet) else out
        if not isinstance(prot, torch.Tensor) or prot.dtype != torch.uint8 or prot.shape != small.shape:
            raise ArenaError(f"protector '{protector.name}' returned images of the wrong type or shape")
        budget = protector.budget(train)
        noise = (prot.float() - small.float()) / 255.0
        deltas = [_resize_noise(noise[i], shapes[i]) for i in range(len(photos))]

    summary = FolderSummary(str(src), str(dst), protector.name, budget.describe(), mode, work,
                            skipped=[str(o) for o in other], bad=bad, metadata_kept=keep_metadata,
                            stripped=[str(p.rel) for p in photos if p.stripped], gray=sum(p.gray for p in photos))
    task = ctx.progress.task(f"protect: writing {dst.name}", total=len(photos))
    try:
        for p, d in zip(photos, deltas):
            written, fmt = _write(p, d, budget, dst)
            a, b = p.rgb[None], written[None]
            diff = float((b.int() - a.int()).abs().max()) / 255.0
            summary.files.append(PhotoResult(str(p.rel), (int(p.rgb.shape[2]), int(p.rgb.shape[1])), fmt, diff,
                                             psnr(a, b), ssim(a, b)))
            task.advance(1)
    finally:
        task.close()
    if budget.kind == "linf":
        lim = math.floor(budget.value * 255 + 1e-6)
        bad = [f for f in summary.files if f.linf * 255 > lim + 1e-6]
        if bad:
            raise ArenaError(f"{bad[0].path}: written file differs by {bad[0].linf * 255:.0f}/255 from its source, "
                             f"over the {budget.describe()} budget")
    summary.seconds = time.perf_counter() - t0
    return summary
