"""The shipped tiny-world assets (:mod:`e2v.assets`): the checksums their READMEs record are the ones every load
checks, and they build the components the main job's recipe names."""

import re

import pytest
import torch

from e2v import assets, registry


@pytest.mark.parametrize("key", sorted(assets.SHIPPED))
def test_recorded_checksums_agree_and_verify(key):
    folder = assets.shipped_folder(*key)  # raises when the file's sha256 is not the recorded one
    digest = assets.SHIPPED[key][2]
    readme = (assets.ROOT / assets.SHIPPED[key][0].split("/")[0] / "README.md").read_text()
    assert digest in readme and folder.is_dir()


def test_assets_build_the_main_job_components():
    dit = registry.build("dit", {"name": "wan", "pretrained": "tiny-world-base"})
    encoder = registry.build("image_encoder", {"name": "e2v_vit", "pretrained": "tiny-world"})
    assert dit.config.in_channels == 36 and list(dit.config.patch_size) == [1, 1, 1]
    assert dit.config.image_dim == encoder.dim and not any(p.requires_grad for p in encoder.parameters())
    tokens = encoder(torch.zeros(1, 2, 3, 32, 32))
    out = dit(torch.zeros(1, 36, 2, 8, 8), torch.tensor([500.0]), torch.zeros(1, 4, dit.config.text_dim), tokens)
    assert out.shape == (1, 16, 2, 8, 8) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="no shipped pretrained dit named 'nope'; shipped: tiny-world-base"):
        registry.build("dit", {"name": "wan", "pretrained": "nope"})
