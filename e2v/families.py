"""Model families: named bundles of components that fit together (DiT, VAE, text and image encoders, layout).

A family is a registry entry of kind ``family`` whose factory returns the component specs
``{"dit", "vae", "text_encoder", "image_encoder", "layout"}`` (``image_encoder`` None when the family has no image
branch). Given ``weights`` (an official release root: ``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
``image_encoder/``, ``image_processor/``), the specs load it; without, they are random-init presets (only ``tiny``
has random-init encoders). Recipes, ``E2VPipeline.from_weights`` and ``e2v cache`` start from a family and
override what differs (:func:`resolve`):

- a component the recipe leaves out (or sets to null) is the family's;
- a component the recipe names like the family does gets the family's options first, then the recipe's;
- a component named differently replaces the family's.
"""

from __future__ import annotations

from typing import Any, Mapping

from e2v import registry
from e2v.registry import register

COMPONENTS = ("dit", "vae", "text_encoder", "image_encoder", "layout")
DEFAULT_FAMILY = "tiny"

Spec = Any  # a registry spec: "name" or {"name": ..., **options}


def _release(root: str, image_encoder: bool) -> dict[str, Spec]:
    """Specs that load an official release folder (diffusers layout)."""
    return {
        "dit": {"name": "wan", "weights": f"{root}/transformer"},
        "vae": {"name": "wan", "weights": f"{root}/vae"},
        "text_encoder": {"name": "umt5", "path": root},
        "image_encoder": {"name": "clip", "path": root} if image_encoder else None,
    }


def _needs_weights(family: str, weights: str | None) -> None:
    if weights is None:
        raise ValueError(f"family {family!r} has no random-init text/image encoders: give weights (the release root)")


@register("family", "tiny")
def tiny(weights: str | None = None) -> dict[str, Spec]:
    """Test-sized random components that fit together (DiT image_dim = tiny CLIP width), A2 layout."""
    if weights is not None:
        return {**_release(weights, image_encoder=True), "layout": {"name": "a2"}}
    return {
        "dit": {"name": "wan", "preset": "tiny"},
        "vae": {"name": "wan", "preset": "tiny"},
        "text_encoder": {"name": "umt5", "preset": "tiny"},
        "image_encoder": {"name": "clip", "preset": "tiny"},
        "layout": {"name": "a2"},
    }


@register("family", "wan2.1-t2v-1.3b")
def wan21_t2v_13b(weights: str | None = None) -> dict[str, Spec]:
    """Wan2.1-T2V-1.3B as an E2V model: no image branch, temporal-append layout (Phantom-style)."""
    _needs_weights("wan2.1-t2v-1.3b", weights)
    return {**_release(weights, image_encoder=False), "layout": {"name": "temporal_append"}}


@register("family", "wan2.1-i2v-14b")
def wan21_i2v_14b(weights: str | None = None) -> dict[str, Spec]:
    """Wan2.1-I2V-14B (36-channel input, CLIP image branch) with the A2 reference layout."""
    _needs_weights("wan2.1-i2v-14b", weights)
    return {**_release(weights, image_encoder=True), "layout": {"name": "a2"}}


@register("family", "a2-14b")
def a2_14b(weights: str | None = None) -> dict[str, Spec]:
    """SkyReels-A2-14B: the Wan2.1-I2V-14B graph fine-tuned for elements; A2 layout."""
    _needs_weights("a2-14b", weights)
    return {**_release(weights, image_encoder=True), "layout": {"name": "a2"}}


def merge(kind: str, base: Spec | None, override: Spec | None) -> Spec | None:
    """``override`` over ``base`` (see the module docstring); plain dicts out."""
    if override is None:
        if base is None:
            return None
        name, options = registry.split_spec(kind, base)
        return {"name": name, **options}
    name, options = registry.split_spec(kind, override)
    if base is not None:
        base_name, base_options = registry.split_spec(kind, base)
        if base_name == name:
            return {"name": name, **base_options, **options}
    return {"name": name, **options}


_KINDS = {"dit": "dit", "vae": "vae", "text_encoder": "text_encoder", "image_encoder": "image_encoder",
          "layout": "reference_layout"}


def family_specs(family: Spec | None) -> dict[str, Spec]:
    """The component specs of a family spec (``"tiny"`` or ``{"name": "a2-14b", "weights": ROOT}``)."""
    return registry.build("family", family if family is not None else DEFAULT_FAMILY)


def resolve(family: Spec | None, specs: Mapping[str, Spec | None]) -> dict[str, Spec | None]:
    """The components of ``family`` with ``specs`` (keys among :data:`COMPONENTS`) laid over them."""
    base = family_specs(family)
    return {key: merge(_KINDS[key], base.get(key), specs.get(key)) for key in COMPONENTS}
