"""``arena protect``: protect your own photos, or train and save a protector's encoder.

    arena protect --with confoundergan --model G.pt SRC_DIR DST_DIR        encrypt with a saved generator
    arena protect --with confoundergan --train-on digits --save G.pt       train a generator and save it
    arena protect --with emn-samplewise --params '{...}' SRC_DIR DST_DIR   labelled folders SRC/<class>/...

Generic over protectors: whether labels are needed follows from the protector's ``supports_encoder``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..codehash import CodeHasher
from ..context import Context
from ..data import cache_root
from ..params import ArenaError
from ..photos import MODES, check_destinations, protect_folder
from ..progress import RichProgress
from ..registry import get_registry
from .common import json_params, load_splits, pick_device

EPILOG = """\
examples:
  arena protect --with confoundergan --train-on digits --save G.pt            train a generator once
  arena protect --with confoundergan --model G.pt ~/photos ~/photos-protected  encrypt a folder
  arena protect --with emn-samplewise ~/labeled ~/labeled-out                 labels from ~/labeled/<class>/*

images of any size:
  --mode resize (default): each photo is resized to the working size S x S (--size; default the
    side the generator was trained on), the noise is computed there, resized back to the photo's own
    size (bilinear, which keeps the L-inf bound) and added to the untouched full-resolution photo.
    Noise made at training scale survives a scraper's downsampling; pixel-scale noise would not.
  --mode full (encoders only): the fully convolutional generator runs at each photo's own size.
  Photos are not tiled. Non-square photos keep their aspect ratio in the output (only the noise is
  resized).

files:
  every image under SRC_DIR (.png .jpg .jpeg .bmp .gif .webp .tif .tiff .ppm, recursively) is
  written to the same relative path under DST_DIR in the same format; other files are skipped.
  RGB is protected, an alpha channel is copied unchanged; a grayscale photo is protected as three
  equal channels and written back as grayscale (its noise is the luma of the RGB noise, so no colour
  noise appears on a grey photo); JPEG is written at quality 100 (4:4:4),
  WebP lossless, and the budget is re-checked on the decoded written file (the noise is shrunk
  if the codec's rounding would exceed it). DST_DIR may not be SRC_DIR, lie inside it or contain
  it. The PSNR/SSIM and L-inf change of every written file are printed. A file already in DST_DIR
  is never replaced without --overwrite (all destinations are checked before anything is written).
  Identifying metadata (EXIF incl. GPS and camera, XMP, comments, PNG text) is stripped unless
  --keep-metadata. An undecodable image stops the run with its name unless --skip-bad.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("protect", help="protect a folder of photos (or train and save an encoder)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Protect every image under SRC_DIR into DST_DIR (names and formats kept;\n"
                                   "SRC_DIR is never written). Encoder protectors (confoundergan) need --model\n"
                                   "or --train-on; others read labels from SRC_DIR/<class>/ folders.",
                       epilog=EPILOG)
    p.add_argument("src", nargs="?", metavar="SRC_DIR", help="folder of images to protect")
    p.add_argument("dst", nargs="?", metavar="DST_DIR", help="new folder for the protected copies")
    p.add_argument("--with", dest="protector", required=True, metavar="PROTECTOR", help="protector name")
    p.add_argument("--params", default=None, help="JSON params of the protector")
    p.add_argument("--model", default=None, help="a saved encoder (e.g. a ConfounderGAN generator .pt)")
    p.add_argument("--train-on", default=None, metavar="DATASET", help="train the encoder on this data set's train split")
    p.add_argument("--dataset-params", default=None, help="JSON params of the data set loader, e.g. '{\"size\": 32}'")
    p.add_argument("--data-root", default=None, help="where the --train-on data set lives (else $ARENA_DATA)")
    p.add_argument("--train-size", type=int, default=None, help="class-balanced train subset for --train-on")
    p.add_argument("--save", default=None, help="where to save the trained encoder (with --train-on)")
    p.add_argument("--mode", choices=MODES, default="resize",
                   help="resize: noise made at the working size, resized to each photo (default); "
                        "full: run the encoder at each photo's own resolution")
    p.add_argument("--size", type=int, default=None,
                   help="working side in px (default: the encoder's training size, else 32)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace files already in DST_DIR (and an existing --save file); without it such a run "
                        "is refused before anything is written")
    p.add_argument("--keep-metadata", action="store_true",
                   help="copy EXIF (GPS position, camera, date), XMP, comments and PNG text chunks into the "
                        "outputs; by default they are stripped (DPI, colour profile and orientation are kept)")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave images that cannot be decoded out (named in the summary) instead of refusing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    reg = get_registry()
    protector = reg.protector(args.protector, json_params(args.params))
    has_folders = args.src is not None or args.dst is not None
    if has_folders and (args.src is None or args.dst is None):
        raise ArenaError("give both SRC_DIR and DST_DIR")
    if args.size is not None and args.size < 4:
        raise ArenaError(f"--size {args.size}: expected a side of at least 4 px")
    if not protector.supports_encoder:
        for flag, val in (("--model", args.model), ("--train-on", args.train_on), ("--save", args.save)):
            if val:
                raise ArenaError(f"{flag}: protector '{protector.name}' has no encoder; it protects labelled "
                                 "folders SRC_DIR/<class>/... directly")
        if not has_folders:
            raise ArenaError(f"protector '{protector.name}' needs SRC_DIR and DST_DIR")
    else:
        if args.model and args.train_on:
            raise ArenaError("give either --model (load a trained encoder) or --train-on (train one), not both")
        if not args.model and not args.train_on:
            raise ArenaError(f"protector '{protector.name}' encrypts with a trained encoder: pass --model FILE "
                             "or --train-on DATASET --save FILE")
        if args.save and not args.train_on:
            raise ArenaError("--save needs --train-on (it saves the encoder trained there)")
        if args.train_on and not args.save and not has_folders:
            raise ArenaError("--train-on without --save or SRC_DIR/DST_DIR would throw the trained encoder away")
        if args.save and Path(args.save).expanduser().is_dir():
            raise ArenaError(f"--save {args.save}: is a folder; give a file name such as G.pt")
        if args.model and not Path(args.model).expanduser().is_file():
            raise ArenaError(f"--model {args.model}: no such file")
        if args.save and Path(args.save).expanduser().exists() and not args.overwrite:
            raise ArenaError(f"--save {args.save}: file already exists; pass --overwrite to replace it")
    if has_folders:  # before training or saving anything: a refused run writes nothing
        check_destinations(Path(args.src), Path(args.dst), args.overwrite)

    progress = RichProgress(console=console, transient=True)
    code = CodeHasher(get_registry()).entry("protectors", protector.name)  # an edited plugin's cache is not reused
    ctx = Context(device=pick_device(args.device), seed=args.seed, progress=progress,
                  cache_dir=cache_root() / "protect" / code)
    try:
        encoder = None
        if protector.supports_encoder and args.model:
            encoder = protector.load_encoder(Path(args.model).expanduser(), ctx)
        elif protector.supports_encoder:
            splits = load_splits(args.train_on, json_params(args.dataset_params, "--dataset-params"), args.data_root,
                                 False, args.train_size, None, 0.1, args.seed)
            encoder = protector.fit(splits.train, ctx)
            if args.save:
                encoder.save(Path(args.save).expanduser())
            from ..metrics import psnr, ssim

            enc = encoder.encode(splits.raw.images if len(splits.raw) else splits.train.images)
            ref = splits.raw.images if len(splits.raw) else splits.train.images
            linf = float((enc.int() - ref.int()).abs().max())
            console.print(f"[bold]{protector.name}[/] encoder trained on {args.train_on} "
                          f"({len(splits.train)} images, {tuple(splits.train.shape)})"
                          + (f", saved to [bold]{args.save}[/]" if args.save else ""))
            console.print(f"on {len(ref)} held-out images it never saw: PSNR [bold]{psnr(ref, enc):.2f}[/] dB, "
                          f"SSIM [bold]{ssim(ref, enc):.4f}[/], L-inf {linf:.0f}/255")
        summary = None
        if has_folders:
            summary = protect_folder(protector, Path(args.src), Path(args.dst), ctx, encoder=encoder,
                                     mode=args.mode, size=args.size, overwrite=args.overwrite,
                                     keep_metadata=args.keep_metadata, skip_bad=args.skip_bad)
    finally:
        progress.stop()
    if summary is not None:
        table = Table(title=f"{summary.protector}: {summary.src} -> {summary.dst}")
        for col in ("file", "size", "format", "L-inf /255", "PSNR dB", "SSIM"):
            table.add_column(col, justify="left" if col in ("file", "format") else "right")
        for f in summary.files:
            table.add_row(f.path, f"{f.size[0]}x{f.size[1]}", f.format, f"{f.linf * 255:.0f}",
                          f"{f.psnr:.2f}", f"{f.ssim:.4f}")
        console.print(table)
        console.print(f"{len(summary.files)} images protected ({summary.budget}, mode {summary.mode}, working size "
                      f"{summary.working_size}px) in {summary.seconds:.1f} s: mean PSNR [bold]{summary.psnr:.2f}[/] dB, "
                      f"mean SSIM [bold]{summary.ssim:.4f}[/], max L-inf {summary.max_linf * 255:.0f}/255"
                      + (f"; {len(summary.skipped)} non-image files skipped" if summary.skipped else "")
                      + (f"; {summary.gray} grayscale kept grayscale" if summary.gray else ""))
        if summary.metadata_kept:
            console.print("metadata kept (--keep-metadata): EXIF, XMP, comments and PNG text were copied as they were")
        elif summary.stripped:
            console.print(f"identifying metadata (EXIF incl. GPS and camera, XMP, comments, PNG text) stripped from "
                          f"{len(summary.stripped)} of {len(summary.files)} files; --keep-metadata keeps it")
        else:
            console.print("no identifying metadata found (EXIF, XMP, comments, PNG text would have been stripped)")
        if summary.bad:
            console.print(f"[bold]{len(summary.bad)} undecodable images skipped[/] (--skip-bad):")
            for line in summary.bad:
                console.print(f"  {line}", markup=False, highlight=False)
    return 0
