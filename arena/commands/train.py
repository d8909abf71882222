"""``arena train``: one cell by hand: protect -> purify -> train the victim -> clean test accuracy."""

from __future__ import annotations

import argparse
import json

from ..context import Context
from ..progress import RichProgress
from ..registry import get_registry
from ..stages import exploit_inputs, run_protect, run_purify, run_train
from ..trainer import Recipe
from .common import add_data_args, json_params, pick_device, splits_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a victim on protected (and optionally purified) data")
    add_data_args(p)
    p.add_argument("--protector", default="none")
    p.add_argument("--protector-params", default=None, help="JSON")
    p.add_argument("--exploiter", action="append", default=None,
                   help="exploiter name; repeat to combine composable exploiters (default: none)")
    p.add_argument("--exploiter-params", action="append", default=None, help="JSON, one per --exploiter, in order")
    p.add_argument("--arch", default="cnn-small")
    p.add_argument("--recipe", default=None, help='JSON recipe overrides, e.g. \'{"epochs": 20, "lr": 0.05}\'')
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    reg = get_registry()
    recipe_over = json_params(args.recipe, "--recipe")
    if args.epochs is not None:
        recipe_over["epochs"] = args.epochs
    recipe = Recipe.from_dict(recipe_over, owner="--recipe")
    names = args.exploiter or ["none"]
    eparams = [json_params(t, "--exploiter-params") for t in (args.exploiter_params or [])]
    eparams += [{}] * (len(names) - len(eparams))
    exploiters = [reg.exploiter(n, p) for n, p in zip(names, eparams)]
    protector = reg.protector(args.protector, json_params(args.protector_params, "--protector-params"))
    reg.architecture(args.arch)  # fail fast on a bad name
    splits = splits_from_args(args)
    progress = RichProgress(transient=False) if not args.json else None
    ctx = Context(device=pick_device(args.device), seed=args.seed, **({"progress": progress} if progress else {}), recipe=recipe)
    try:
        prot = run_protect(protector, splits.train, ctx)
        data, raw = exploit_inputs(exploiters, prot.data, splits)
        pur = run_purify(exploiters, data, raw, ctx)
        res = run_train(args.arch, pur.data, splits.test, recipe, seed=args.seed, ctx=ctx, exploiters=exploiters,
                        clean_train=splits.train)
    finally:
        if progress:
            progress.stop()
    out = {"dataset": args.dataset, "protector": protector.name, "exploiter": "+".join(names), "architecture": args.arch,
           "seed": args.seed, "clean_acc": res.clean_acc, "best_acc": res.best_acc, "selected_acc": res.selected_acc,
           "train_acc": res.train_acc, "acc_curve": res.acc_curve, **prot.metrics, **pur.metrics, **res.extra,
           "protect_s": prot.seconds, "purify_s": pur.seconds, "train_s": res.seconds}
    if args.json:
        print(json.dumps(out, default=float))
    else:
        Console().print(
            f"[bold]{protector.name}[/] x [bold]{'+'.join(names)}[/] on {args.arch}: clean test accuracy "
            f"[bold]{res.clean_acc:.1%}[/] (best epoch {res.best_acc:.1%}, train {res.train_acc:.1%}); "
            f"noise L-inf {prot.metrics['noise_linf'] * 255:.0f}/255, PSNR {prot.metrics['psnr']:.1f} dB; "
            f"{res.seconds:.1f} s training")
    return 0
