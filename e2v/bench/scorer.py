"""The scorer contract and the sample a scorer judges.

A scorer is registered under the registry kind ``scorer`` and built with ``registry.build("scorer", spec)``. It
declares ``name``, ``version``, ``range`` (lo, hi; ``None`` = unbounded), ``higher_is_better`` and ``model`` (what it
measures with; ``"proxy: ..."`` for classical stand-ins of learned metrics), and maps a :class:`Sample` to a float,
or to ``None`` when the metric does not apply to the case (no face reference, no ground-truth clip).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

SUBJECT_KINDS_EXCLUDED = ("background", "face")  # object consistency judges every other kind
FACE_KINDS = ("face", "human")
BACKGROUND_KINDS = ("background",)
DEFAULT_SAMPLED_FRAMES = 16


@dataclass
class Sample:
    """A video to score with its case: frames ``uint8 [F, H, W, 3]``, references ``(uint8 [h, w, 3], kind)``."""

    case_id: str
    prompt: str
    frames: np.ndarray
    references: list[tuple[np.ndarray, str]]
    truth: Optional[np.ndarray] = None  # uint8 [F, H, W, 3] ground-truth clip
    cache: dict[str, Any] = field(default_factory=dict)  # shared between scorers (e.g. optical flows)

    def sampled(self, count: int = DEFAULT_SAMPLED_FRAMES) -> np.ndarray:
        """At most ``count`` frames evenly spaced over the video, first and last included."""
        total = len(self.frames)
        if total <= count:
            return self.frames
        return self.frames[np.linspace(0, total - 1, count).round().astype(int)]

    def references_of(self, kinds: tuple[str, ...], exclude: bool = False) -> list[np.ndarray]:
        return [image for image, kind in self.references if (kind in kinds) != exclude]


def to_unit_tensor(images: np.ndarray) -> torch.Tensor:
    """``uint8 [..., H, W, 3]`` -> float ``[..., 3, H, W]`` in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).movedim(-1, -3).float().div(255.0)


def to_signed_video(frames: np.ndarray) -> torch.Tensor:
    """``uint8 [F, H, W, 3]`` -> ``[3, F, H, W]`` in [-1, 1] (e2v's pixel-video convention)."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float().div(127.5).sub(1.0)


class Scorer:
    """Base class: subclasses set the class attributes and implement :meth:`score`."""

    name: str = ""
    version: str = "1"
    range: tuple[Optional[float], Optional[float]] = (0.0, 1.0)
    higher_is_better: bool = True
    model: str = ""

    def score(self, sample: Sample) -> Optional[float]:
        raise NotImplementedError

    def __call__(self, sample: Sample) -> Optional[float]:
        value = self.score(sample)
        return None if value is None else float(value)

    def info(self) -> dict[str, Any]:
        """The scorer's entry in report.json's ``scorers``."""
        return {"version": str(self.version), "range": list(self.range), "higher_is_better": bool(self.higher_is_better),
                "model": self.model}
