"""Early stopping on a protected validation split, the defence that defeats "learnable shortcuts" that
the victim only picks up late in training (random class-wise noise is the textbook case).

Algorithm: hold out ``holdout_fraction`` (default 10%) of the *protected* train split, chosen with the
cell seed; train on the rest with the unchanged recipe; after every epoch measure accuracy on the held-out
part; the model the attacker keeps is the one from the epoch with the best validation accuracy. The
attacker has no clean data, so the validation split carries the same protection as the training data:
this is what a real unauthorized trainer could do, and why early stopping helps against some protectors
(shortcuts learnt late) and not against others (shortcuts learnt in the first epoch score perfectly on
protected validation data too).

The arena's trainer already measures clean test accuracy after every epoch, so no checkpoint is stored:
the result row reports ``selected_acc`` (test accuracy at the best-validation epoch, the number this
exploiter is ranked on) beside ``best_acc`` (the peak over epochs, which only an oracle with the test
split could stop at) and ``clean_acc`` (the last epoch). Ties in validation accuracy pick the earliest
epoch. The split itself is done by the trainer (``TrainingMod.holdout_fraction``), so it is the same
split whichever exploiters the cell combines.

Two options follow the SEM paper's early-stopping study (Liu et al., AAAI 2024, Table 5); SEM's reference
code (liuyixin-louis/Stable-Unlearnable-Example) ships no early-stopping script, so both follow the usual
definitions and default to off (the behaviour before issue 15):

- ``patience``: training stops after ``patience`` epochs without a better validation accuracy (Keras /
  PyTorch-Lightning ``EarlyStopping``); the kept model is still the best-validation epoch, so with
  patience the run only gets shorter, and ``extra.stopped_epoch`` says where it stopped. ``clean_acc``
  is then the accuracy of the last epoch trained.
- ``clean_val_ratio``: this share of the validation images (seeded) is swapped for the clean originals
  by the arena's trainer. That is a stronger attacker, one holding some clean labeled images; the plugin
  itself never receives clean data. Partial poisoning works too (the swap is image for image).

Composability: combines with every other exploiter and makes sense with all of them (purify or augment,
then stop early); with several mods in one cell the trainer uses the largest requested holdout fraction.
The leaderboard ranks the cell by ``selected_acc`` (``arena.board.value``).
"""

from __future__ import annotations

from typing import Any

from arena import Exploiter, Param, ParamSpec, TrainingMod, hookimpl


class HoldoutMod(TrainingMod):
    def __init__(self, fraction: float, patience: int = 0, clean_val_ratio: float = 0.0) -> None:
        self.holdout_fraction = fraction
        self.patience = patience
        self.clean_val_ratio = clean_val_ratio


class EarlyStopping(Exploiter):
    name = "early-stopping"
    summary = "keep the epoch with the best accuracy on a protected 10% validation split"
    params = ParamSpec((
        Param("holdout_fraction", float, 0.1, "share of the protected train split held out for validation",
              low=0.01, high=0.5),
        Param("patience", int, 0, "stop training after this many epochs without a better validation accuracy "
              "(SEM's early stopping); 0 = train every epoch and select the best", low=0),
        Param("clean_val_ratio", float, 0.0, "share of the validation images that are clean (an attacker with "
              "some clean labeled data, SEM Table 5); 0 = all protected", low=0.0, high=1.0),
    ))

    def training_mod(self, ctx: Any) -> TrainingMod:
        return HoldoutMod(self.p["holdout_fraction"], self.p["patience"], self.p["clean_val_ratio"])


@hookimpl
def arena_register_exploiters(register) -> None:
    register(EarlyStopping)
