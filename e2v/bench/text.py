"""Prompt following: CLIP score (100 x cosine of image and text features, averaged over sampled frames), as
A2-Bench's image-text similarity. Needs a local CLIP folder (``CLIPModel`` weights + its tokenizer files); no CLIP
weights ship offline, so it is not in the default scorer set: ``--scorer '{"name": "text_similarity", "path": DIR}'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from e2v.bench.embedders import TransformersEmbedder, cosine
from e2v.bench.scorer import DEFAULT_SAMPLED_FRAMES, Sample, Scorer
from e2v.registry import register


@register("scorer", "text_similarity")
class TextSimilarity(Scorer):
    """CLIP score: 100 x cosine(frame features, prompt features), mean over sampled frames (local CLIP folder)."""

    name = "text_similarity"
    version = "1"
    range = (-100.0, 100.0)

    def __init__(self, path: str, frames: int = DEFAULT_SAMPLED_FRAMES) -> None:
        from transformers import AutoTokenizer

        self.images = TransformersEmbedder(path)
        if not hasattr(self.images.model, "get_text_features"):
            raise ValueError(f"{path}: text_similarity needs a CLIP-like model with text features, "
                             f"got {type(self.images.model).__name__}")
        self.tokenizer = AutoTokenizer.from_pretrained(Path(path), local_files_only=True)
        self.frames = frames
        self.model = f"CLIP score (100 x cosine) with {type(self.images.model).__name__} from {path}"

    @torch.no_grad()
    def text_features(self, prompt: str) -> torch.Tensor:
        tokens = self.tokenizer([prompt], padding=True, truncation=True, return_tensors="pt")
        out = self.images.model.get_text_features(**tokens)
        return (out if isinstance(out, torch.Tensor) else out.pooler_output).float()

    def score(self, sample: Sample) -> Optional[float]:
        frames = self.images.embed(list(sample.sampled(self.frames)))
        return 100.0 * cosine(frames, self.text_features(sample.prompt)).mean().item()
