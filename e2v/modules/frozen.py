"""Frozen modules, one idea: a frozen module has no gradients and stays in eval mode (no dropout, fixed norms)
whatever its parent's mode, so ``LightningModule.train()`` cannot switch it back to training behaviour.

:func:`freeze` freezes any module; :class:`FrozenWrapper` is the base of the pretrained encoders, frozen by
default and unfrozen with ``freeze(False)`` for fine-tuning. Tasks build their frozen parts with
``e2v.tasks.frozen.build_frozen`` (which also keeps them out of checkpoints).
"""

from __future__ import annotations

from torch import nn


def _stay_in_eval(module: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(module, False)


def freeze(module: nn.Module) -> nn.Module:
    """Freeze ``module`` in place (see the module docstring) and return it."""
    module.requires_grad_(False)
    module.eval()
    if not isinstance(module, FrozenWrapper):  # FrozenWrapper.train keeps itself frozen
        module.train = _stay_in_eval.__get__(module)  # a parent's .train(True) leaves it in eval mode
    else:
        module.freeze(True)
    return module


class FrozenWrapper(nn.Module):
    """Wraps ``self.model``; when frozen, no gradients and eval mode whatever the parent's mode."""

    def freeze(self, frozen: bool) -> None:
        self.frozen = frozen
        if frozen:
            self.requires_grad_(False)
            self.model.eval()

    def train(self, mode: bool = True) -> "FrozenWrapper":
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self
