"""Step caching for the DiT (first-block / TeaCache style): skip all blocks when the input barely changed.

Two ways to decide, both reusing the residual the blocks added at the last computed step (``blocks(x) - x``) when
they skip; the first ``warmup`` steps and the last step are always computed:

- first-block cache (default): the first block's modulated input ``m = norm1(x) * (1 + scale) + shift`` is compared
  with the one of the last computed step; skip while ``mean|m - m_ref| / mean|m_ref| < threshold``.
- TeaCache (``teacache=NAME``, Liu et al. 2024, "Timestep Embedding Tells: It's Time to Cache for Video Diffusion
  Model"): the indicator is the timestep embedding (``temb``, or the modulation ``time_proj(temb)`` for the
  ``-e0`` fits); its relative L1 change from the previous step is mapped through a polynomial fitted to the model's
  output change and accumulated since the last computed step; skip while the sum stays below ``threshold``.

Under sequence parallelism the two sums of a relative change are all-reduced (``reduce``) so every rank takes the
same decision.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from e2v.modules.dit import DiTInputs, Rope, WanDiT

# TeaCache4Wan2.1 rescaling polynomials (numpy poly1d order, highest degree first), from ali-vilab/TeaCache,
# TeaCache4Wan2.1/teacache_generate.py (https://github.com/ali-vilab/TeaCache). Plain names use the time embedding
# ``e`` (TeaCache's default, one warm-up step); ``-e0`` names its ``use_ret_steps`` fits on the modulation ``e0``,
# which TeaCache runs with 5 warm-up steps (pass warmup=5).
TEACACHE_WAN: dict[str, tuple[str, tuple[float, ...]]] = {
    "wan2.1-t2v-1.3b": ("temb", (2.39676752e03, -1.31110545e03, 2.01331979e02, -8.29855975e00, 1.37887774e-01)),
    "wan2.1-t2v-14b": ("temb", (-5784.54975374, 5449.50911966, -1811.16591783, 256.27178429, -13.02252404)),
    "wan2.1-i2v-14b-480p": ("temb", (-3.02331670e02, 2.23948934e02, -5.25463970e01, 5.87348440e00, -2.01973289e-01)),
    "wan2.1-i2v-14b-720p": ("temb", (-114.36346466, 65.26524496, -18.82220707, 4.91518089, -0.23412683)),
    "wan2.1-t2v-1.3b-e0": (
        "modulation", (-5.21862437e04, 9.23041404e03, -5.28275948e02, 1.36987616e01, -4.99875664e-02)),
    "wan2.1-t2v-14b-e0": (
        "modulation", (-3.03318725e05, 4.90537029e04, -2.65530556e03, 5.87365115e01, -3.15583525e-01)),
    "wan2.1-i2v-14b-480p-e0": (
        "modulation", (2.57151496e05, -3.54229917e04, 1.40286849e03, -1.35890334e01, 1.32517977e-01)),
    "wan2.1-i2v-14b-720p-e0": (
        "modulation", (8.10705460e03, 2.13393892e03, -3.72934672e02, 1.66203073e01, -4.17769401e-02)),
}


def teacache_mismatch(fit: str, dim: int, in_channels: int) -> Optional[str]:
    """Why TeaCache fit ``fit`` (a :data:`TEACACHE_WAN` key) does not suit a DiT of width ``dim`` taking
    ``in_channels`` channels, or None when it does: the fits are polynomials measured on one Wan2.1 model each
    (1.3B: width 1536; 14B: 5120; i2v: 36 input channels, t2v: 16), so their thresholds mean nothing elsewhere."""
    _, task, size = fit.split("-")[:3]
    want_dim, want_channels = {"1.3b": 1536, "14b": 5120}[size], {"i2v": 36, "t2v": 16}[task]
    if (dim, in_channels) == (want_dim, want_channels):
        return None
    return (f"--teacache {fit} is TeaCache's fit for Wan2.1 {task.upper()} {size.upper()} (width {want_dim}, "
            f"{want_channels} input channels); this DiT has width {dim} and {in_channels} input channels, so the "
            "fit's thresholds do not carry over (compare the output with a run without --step-cache)")


def polynomial(coefficients: Sequence[float], x: float) -> float:
    """``coefficients[0] x^(n-1) + ... + coefficients[-1]`` (numpy poly1d order), by Horner's rule."""
    value = 0.0
    for coefficient in coefficients:
        value = value * x + coefficient
    return value


class StepCache:
    """Caches the blocks' residual ``[B, S, dim]``; :meth:`reset` before each video. ``skipped`` counts skips.

    ``teacache``: None (first-block cache) or a key of :data:`TEACACHE_WAN` (TeaCache's rescaled, accumulated
    timestep-embedding change).
    """

    def __init__(
        self,
        threshold: float,
        warmup: int = 1,
        reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        teacache: Optional[str] = None,
    ) -> None:
        if threshold < 0:
            raise ValueError(f"step cache threshold must be >= 0, got {threshold}")
        if teacache is not None and teacache not in TEACACHE_WAN:
            raise ValueError(f"unknown TeaCache fit {teacache!r}; known: {', '.join(TEACACHE_WAN)}")
        self.threshold = threshold
        self.warmup = warmup
        self.reduce = reduce or (lambda sums: sums)
        self.indicator, self.coefficients = TEACACHE_WAN[teacache] if teacache is not None else ("tokens", None)
        self.reset()

    def summary(self) -> str:
        """What the cache did for the last video: ``"step cache: C of N steps computed, S skipped"``."""
        total = self.computed + self.skipped
        return f"step cache: {self.computed} of {total} steps computed, {self.skipped} skipped"

    def reset(self) -> None:
        self._reference: torch.Tensor | None = None  # indicator at the last computed step (first-block cache)
        self._previous: torch.Tensor | None = None  # indicator at the previous step (TeaCache)
        self._accumulated = 0.0
        self._residual: torch.Tensor | None = None
        self.skipped = 0
        self.computed = 0

    @staticmethod
    def modulated_input(dit: WanDiT, tokens: torch.Tensor, inputs: DiTInputs) -> torch.Tensor:
        """The first block's AdaLN-modulated self-attention input ``[B, S, dim]`` (fp32)."""
        block = dit.blocks[0]
        shift, scale = (block.scale_shift_table + inputs.modulation.float()).chunk(6, dim=1)[:2]
        return torch.addcmul(shift, block.norm1(tokens.float()), 1 + scale)

    def relative_change(self, current: torch.Tensor, reference: Optional[torch.Tensor]) -> float:
        """``mean|c - r| / mean|r|`` (sums all-reduced); inf without a reference of the same shape."""
        if reference is None or reference.shape != current.shape:
            return float("inf")
        sums = torch.stack([(current - reference).abs().sum(), reference.abs().sum()])
        sums = self.reduce(sums)
        return (sums[0] / sums[1].clamp_min(1e-12)).item()

    def _indicator(self, dit: WanDiT, tokens: torch.Tensor, inputs: DiTInputs) -> torch.Tensor:
        if self.indicator == "temb":
            return inputs.temb.float()
        if self.indicator == "modulation":
            return inputs.modulation.float()
        return self.modulated_input(dit, tokens, inputs)

    def _distance(self, indicator: torch.Tensor) -> float:
        """The quantity compared with ``threshold`` at a step that may skip."""
        if self.coefficients is None:
            return self.relative_change(indicator, self._reference)
        change = self.relative_change(indicator, self._previous)
        self._accumulated += polynomial(self.coefficients, change) if change != float("inf") else change
        return self._accumulated

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
        indicator = self._indicator(dit, tokens, inputs)
        forced = step < self.warmup or step == num_steps - 1 or self._residual is None
        distance = None if forced else self._distance(indicator)
        self._previous = indicator
        if distance is not None and distance < self.threshold:
            self.skipped += 1
            return (tokens.float() + self._residual).to(tokens.dtype)
        out = dit.run_blocks(tokens, inputs, rope, attention)
        self._residual = out.float() - tokens.float()
        self._reference = indicator
        self._accumulated = 0.0
        self.computed += 1
        return out
