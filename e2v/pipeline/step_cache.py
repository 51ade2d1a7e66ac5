"""Step caching for the DiT (first-block / TeaCache style): skip all blocks when the input barely changed.

At every sampling step the first block's modulated input ``norm1(x) * (1 + scale) + shift`` is compared with the
one of the last step whose blocks were fully computed. If the relative L1 change
``mean|m - m_ref| / mean|m_ref|`` is below ``threshold``, the blocks are skipped and the residual they added at that
step (``blocks(x) - x``) is added again. The first ``warmup`` steps and the last step are always computed.
Under sequence parallelism the two sums are all-reduced (``reduce``) so every rank takes the same decision.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from e2v.modules.dit import DiTInputs, Rope, WanDiT


class StepCache:
    """Caches the blocks' residual ``[B, S, dim]``; :meth:`reset` before each video. ``skipped`` counts skips."""

    def __init__(
        self,
        threshold: float,
        warmup: int = 1,
        reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ) -> None:
        if threshold < 0:
            raise ValueError(f"step cache threshold must be >= 0, got {threshold}")
        self.threshold = threshold
        self.warmup = warmup
        self.reduce = reduce or (lambda sums: sums)
        self.reset()

    def reset(self) -> None:
        self._reference: torch.Tensor | None = None  # modulated input at the last computed step
        self._residual: torch.Tensor | None = None
        self.skipped = 0
        self.computed = 0

    @staticmethod
    def modulated_input(dit: WanDiT, tokens: torch.Tensor, inputs: DiTInputs) -> torch.Tensor:
        """The first block's AdaLN-modulated self-attention input ``[B, S, dim]`` (fp32)."""
        block = dit.blocks[0]
        shift, scale = (block.scale_shift_table + inputs.modulation.float()).chunk(6, dim=1)[:2]
        return torch.addcmul(shift, block.norm1(tokens.float()), 1 + scale)

    def relative_change(self, modulated: torch.Tensor) -> float:
        """``mean|m - m_ref| / mean|m_ref|`` against the last computed step (all-reduced); inf without one."""
        if self._reference is None or self._reference.shape != modulated.shape:
            return float("inf")
        sums = torch.stack([(modulated - self._reference).abs().sum(), self._reference.abs().sum()])
        sums = self.reduce(sums)
        return (sums[0] / sums[1].clamp_min(1e-12)).item()

    def run(
        self,
        dit: WanDiT,
        tokens: torch.Tensor,
        inputs: DiTInputs,
        rope: Rope,
        attention,
        step: int,
        num_steps: int,
    ) -> torch.Tensor:
        """The blocks' output for ``tokens [B, S, dim]`` at sampling step ``step`` of ``num_steps``, maybe cached."""
        modulated = self.modulated_input(dit, tokens, inputs)
        forced = step < self.warmup or step == num_steps - 1 or self._residual is None
        if not forced and self.relative_change(modulated) < self.threshold:
            self.skipped += 1
            return (tokens.float() + self._residual).to(tokens.dtype)
        out = dit.run_blocks(tokens, inputs, rope, attention)
        self._residual = out.float() - tokens.float()
        self._reference = modulated
        self.computed += 1
        return out
