"""Wrappers around pretrained encoders that are frozen by default."""

from __future__ import annotations

from torch import nn


class FrozenWrapper(nn.Module):
    """Wraps ``self.model``; when frozen, no gradients and eval mode (no dropout) whatever the parent's mode."""

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
