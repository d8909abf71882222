"""The baselines every matrix needs: the unprotected train split and the vanilla victim."""

from __future__ import annotations

from arena import Budget, Exploiter, ImageSet, Protector, hookimpl


class NoProtection(Protector):
    """Returns the clean train split unchanged: the "natural" row every protector is compared with."""

    name = "none"
    summary = "no protection (clean data)"

    def budget(self, train: ImageSet) -> Budget:
        return Budget("linf", 0.0)

    def protect(self, train: ImageSet, ctx) -> ImageSet:
        return train.with_images(train.images.clone(), origin="protected:none")


class NoExploit(Exploiter):
    """The vanilla victim: the base recipe with no purification and no recipe change."""

    name = "none"
    summary = "vanilla training (base crop+flip recipe)"


@hookimpl
def arena_register_protectors(register) -> None:
    register(NoProtection)


@hookimpl
def arena_register_exploiters(register) -> None:
    register(NoExploit)
