"""Feature networks for perceptual losses (registry kind ``feature_net``).

No weights are downloaded: ``vgg16`` loads torchvision's VGG16 layout from a local safetensors file when given
(random init otherwise, which still acts as a fixed random-feature perceptual distance).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from e2v.registry import register

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@register("feature_net", "vgg16", "torchvision VGG16 conv features (weights from a local safetensors file)")
class VGGFeatures(nn.Module):
    """Perceptual distance: mean L2 of channel-normalised VGG16 features at a few depths (LPIPS without learned weights)."""

    def __init__(self, weights: str | None = None, layers: tuple[int, ...] = (3, 8, 15, 22)):
        super().__init__()
        from torchvision.models import vgg16

        features = vgg16(weights=None).features
        if weights is not None:
            state = load_file(weights)
            state = {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}
            features.load_state_dict(state)
        self.features = features[: max(layers) + 1].eval().requires_grad_(False)
        self.layers = set(layers)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Distance between image batches ``[B,3,H,W]`` in [-1, 1] -> scalar."""
        x = torch.cat([a, b]).add(1).div(2).sub(self.mean).div(self.std)
        total = x.new_zeros(())
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.layers:
                fa, fb = F.normalize(x, dim=1).chunk(2)
                total = total + (fa - fb).pow(2).sum(1).mean()
        return total
