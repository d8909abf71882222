"""unlearnable-arena: protectors vs exploiters across architectures, with a Parquet leaderboard.

Plugin authors import everything they need from here::

    from arena import hookimpl, Protector, Exploiter, Param, ParamSpec, Budget, ImageSet, quantize
"""

from . import checkout
from .budget import Budget, BudgetViolation, check_budget, quantize
from .context import Context
from .contracts import Architecture, Encoder, Exploiter, Protector, TrainingMod, TransformExploiter
from .data import DatasetLoader, ImageSet, Splits, make_splits
from .hookspecs import hookimpl, hookspec
from .params import ArenaError, Param, ParamError, ParamSpec
from .trainer import Recipe, TrainResult, evaluate, train_victim

__version__ = "0.1.0"

checkout.install()  # a source checkout runs its own built-in plugins (see arena/checkout.py)

__all__ = [
    "Architecture", "ArenaError", "Budget", "BudgetViolation", "Context", "DatasetLoader", "Encoder",
    "Exploiter", "ImageSet", "Param", "ParamError", "ParamSpec", "Protector", "Recipe", "Splits",
    "TrainResult", "TrainingMod", "TransformExploiter", "check_budget", "evaluate", "hookimpl", "hookspec", "make_splits",
    "quantize", "train_victim", "__version__",
]
