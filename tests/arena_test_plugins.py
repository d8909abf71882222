"""Throwaway plugins for the tournament tests, loaded through a tournament's ``plugins:`` key (which
also makes them exist inside the Ray workers)."""

from __future__ import annotations

import torch

from arena import Budget, Exploiter, Protector, hookimpl


class Boom(Protector):
    name = "test-boom"

    def budget(self, train):
        return Budget("linf", 8 / 255)

    def protect(self, train, ctx):
        raise RuntimeError("boom: this protector always fails")


class Greedy(Protector):
    name = "test-over-budget"

    def budget(self, train):
        return Budget("linf", 2 / 255)

    def protect(self, train, ctx):
        return (train.images.int() + 9).clamp(0, 255).to(torch.uint8)


class Invert(Exploiter):
    """A data-level exploiter with a visible effect (negative images)."""

    name = "test-invert"

    def purify(self, protected, raw, ctx):
        return 255 - protected.images


class RecipeEcho(Protector):
    """Reports the recipe it was handed (issue 15: a tournament used to hand every plugin ``Recipe()``)."""

    name = "test-recipe-echo"
    uses_recipe = True

    def budget(self, train):
        return Budget("linf", 0.0)

    def protect(self, train, ctx):
        self.last_info = {"recipe_epochs": ctx.recipe.epochs, "recipe_lr": ctx.recipe.lr}
        return train.images


@hookimpl
def arena_register_protectors(register):
    register(Boom)
    register(Greedy)
    register(RecipeEcho)


@hookimpl
def arena_register_exploiters(register):
    register(Invert)
