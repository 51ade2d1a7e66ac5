"""Every recipe parses and validates against the classes it names (no model is built)."""

from pathlib import Path

import pytest
import yaml

from e2v import registry
from e2v.cli import main

RECIPE_DIR = Path(__file__).resolve().parents[1] / "recipes"
LAYERED = {"tiny/vae-asset.yaml": "tiny/vae.yaml"}  # overlays and the recipe they are layered over
RECIPES = sorted(RECIPE_DIR.rglob("*.yaml"))


def test_recipes_exist():
    names = {p.relative_to(RECIPE_DIR).as_posix() for p in RECIPES}
    assert {"tiny/vae.yaml", "tiny/e2v.yaml", "tiny/refenc.yaml", "a2-14b.yaml", "wan-1.3b-e2v.yaml"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_validates(recipe, capsys):
    base = LAYERED.get(recipe.relative_to(RECIPE_DIR).as_posix())
    configs = ["--config", str(RECIPE_DIR / base)] if base else []
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *configs, "--config", str(recipe), "--print_config"])
    assert exit_info.value.code in (0, None)
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["model"]["class_path"].startswith("e2v.tasks.")
    # every registry spec in the model names a registered component
    kinds = {"dit": "dit", "vae": "vae", "text_encoder": "text_encoder", "image_encoder": "image_encoder",
             "layout": "reference_layout", "timestep_sampler": "timestep_sampler", "sample_solver": "solver",
             "encoder": "image_encoder"}
    for key, kind in kinds.items():
        spec = resolved["model"]["init_args"].get(key)
        if spec:
            registry.parse_spec(kind, spec)


def test_registry_spec_errors_are_clear():
    with pytest.raises(TypeError, match=r"vae 'wan' got unknown option\(s\) \['presett'\]; it accepts: preset"):
        registry.parse_spec("vae", {"name": "wan", "presett": "tiny"})
    with pytest.raises(KeyError, match="no solver named 'heun' is registered; known solver names: euler, unipc"):
        registry.parse_spec("solver", "heun")
    with pytest.raises(ValueError, match="has no 'name' key"):
        registry.parse_spec("dit", {"preset": "tiny"})
