"""Weights shipped inside the package (``e2v/assets/``), by name: the tiny world's pretrained components, each a
folder whose weights file must match the sha256 recorded here (checked at every load; each folder's README says
how it was made). Recipes name them (``pretrained: tiny-world``), so they load from any working directory."""

from __future__ import annotations

import hashlib
from pathlib import Path

from e2v.modules.weights import CheckpointError

ROOT = Path(__file__).resolve().parent / "assets"
# (component kind, name) -> (folder under ROOT, weights file in it, sha256 of that file)
SHIPPED: dict[tuple[str, str], tuple[str, str, str]] = {
    ("vae", "tiny-world"): (
        "tiny_world_vae", "model.safetensors", "1efecb27cebb039ced100e989fdcf2ddfedbb5814d4695607d983841b4e131f3"),
    ("dit", "tiny-world-base"): (
        "tiny_world_base/transformer", "diffusion_pytorch_model.safetensors",
        "fc3ba700788fa80df9160a139b1090b7e2f58539e84c3222ee7104ceb9f2db98"),
    ("image_encoder", "tiny-world"): (
        "tiny_world_refenc", "model.safetensors", "71aeebaf12b62355ab64bcaa48945aef2c39e9fdc0a90435ba0d489ddedd08eb"),
}


def shipped_folder(kind: str, name: str) -> Path:
    """The verified folder of the shipped ``kind`` asset ``name`` (its weights must match the recorded sha256)."""
    if (kind, name) not in SHIPPED:
        known = ", ".join(n for k, n in SHIPPED if k == kind) or "none"
        raise ValueError(f"no shipped pretrained {kind} named {name!r}; shipped: {known}")
    folder_name, weights_name, digest = SHIPPED[kind, name]
    folder = ROOT / folder_name
    weights = folder / weights_name
    if not weights.is_file():
        raise CheckpointError(f"{weights}: the shipped {kind} weights are missing (reinstall e2v)")
    actual = hashlib.sha256(weights.read_bytes()).hexdigest()
    if actual != digest:
        raise CheckpointError(f"{weights}: sha256 {actual} differs from the recorded {digest} (corrupt or replaced)")
    return folder
