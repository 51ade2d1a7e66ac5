"""Every recipe parses and validates against the classes it names (no model is built)."""

from pathlib import Path

import importlib
import re

import pytest
import yaml

from e2v import registry
from e2v.cli import main
from e2v.specs import spec_kinds

RECIPE_DIR = Path(__file__).resolve().parents[1] / "recipes"
# overlays and the recipes they are layered over
LAYERED = {"tiny/vae-asset.yaml": ["tiny/vae.yaml"]}
BUILD_SETTINGS = sorted(RECIPE_DIR.rglob("build.yaml"))  # e2v data build settings, not training recipes
RECIPES = sorted(set(RECIPE_DIR.rglob("*.yaml")) - set(BUILD_SETTINGS))


@pytest.mark.parametrize("settings", BUILD_SETTINGS, ids=lambda p: p.parent.name)
def test_build_settings_validate(settings):
    from e2v.databuild.config import load_config

    load_config(settings)  # every key known and well typed, every component registered with valid options


def test_recipes_exist():
    names = {p.relative_to(RECIPE_DIR).as_posix() for p in RECIPES}
    assert {"tiny/vae.yaml", "tiny/e2v.yaml", "tiny/refenc.yaml", "a2-14b.yaml", "wan-1.3b-e2v.yaml"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_validates(recipe, capsys):
    bases = LAYERED.get(recipe.relative_to(RECIPE_DIR).as_posix(), [])
    configs = [arg for base in bases for arg in ("--config", str(RECIPE_DIR / base))]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *configs, "--config", str(recipe), "--print_config"])
    assert exit_info.value.code in (0, None)
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["model"]["class_path"].startswith("e2v.tasks.")
    # every component spec is printed with every option of the component it names
    module, _, name = resolved["model"]["class_path"].rpartition(".")
    kinds = spec_kinds(getattr(importlib.import_module(module), name))
    assert kinds
    for key, kind in kinds.items():
        spec = resolved["model"]["init_args"].get(key)
        if spec:
            assert isinstance(spec, dict) and set(spec) >= {"name", *registry.options(kind, spec["name"], spec)[0]} - {
                k for k, o in registry.options(kind, spec["name"], spec)[0].items() if o.default is o.REQUIRED}
            assert registry.full_spec(kind, spec) == spec


TINY = RECIPE_DIR / "tiny" / "e2v.yaml"


@pytest.mark.parametrize(
    "override, expected",
    [
        ("{name: wan, num_layer: 3}", r"dit 'wan' got unknown option\(s\) \['num_layer'\]; it accepts: preset, .*num_layers"),
        ("{name: wan, num_layers: four}", r"dit 'wan': option 'num_layers' must be int, got 'four'"),
        ("{name: wam}", r"no dit named 'wam' is registered; known dit names: wan"),
    ],
)
def test_component_option_errors_at_parse_time(tmp_path, capsys, override, expected):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(f"model:\n  init_args:\n    dit: {override}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(TINY), "--config", str(overlay), "--print_config"])
    assert exit_info.value.code == 2
    assert re.search(expected, capsys.readouterr().err)


def test_inline_component_spec_on_the_command_line(capsys):
    """A spec given on the command line is YAML; malformed YAML is a parse error, a good one replaces the recipe's."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(TINY), "--model.init_args.sample_solver", "{name: euler, shift: [", "--print_config"])
    assert exit_info.value.code == 2 and "solver spec written inline must be YAML/JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(TINY), "--model.init_args.sample_solver", "{name: unipc, shift: 5.0}",
              "--print_config"])
    solver = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["sample_solver"]
    assert solver == {"name": "unipc", "num_steps": 50, "shift": 5.0, "order": 2, "schedule": "current", "timesteps": None}


def test_printed_config_rebuilds_the_same_components(tmp_path, capsys):
    """--print_config's full specs parse again and name the same components (round trip)."""
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(TINY), "--print_config"])
    printed = capsys.readouterr().out
    again = tmp_path / "printed.yaml"
    again.write_text(printed)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(again), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert yaml.safe_load(capsys.readouterr().out)["model"] == yaml.safe_load(printed)["model"]
    model = yaml.safe_load(printed)["model"]["init_args"]
    assert model["dit"]["pretrained"] == "tiny-world-base"  # the main job fine-tunes the shipped base
    assert model["image_encoder"]["pretrained"] == "tiny-world"


def test_registry_command_lists_options(capsys):
    assert main(["registry", "dit", "wan"]) == 0
    out = capsys.readouterr().out
    assert "num_layers" in out and "gradient_checkpointing" in out and "default 'tiny'" in out


def test_registry_spec_errors_are_clear():
    with pytest.raises(TypeError, match=r"vae 'wan' got unknown option\(s\) \['presett'\]; it accepts: preset"):
        registry.parse_spec("vae", {"name": "wan", "presett": "tiny"})
    with pytest.raises(KeyError, match="no solver named 'heun' is registered; known solver names: euler, unipc"):
        registry.parse_spec("solver", "heun")
    with pytest.raises(ValueError, match="has no 'name' key"):
        registry.parse_spec("dit", {"preset": "tiny"})


@pytest.mark.parametrize("recipe", ["tiny/base.yaml", "tiny/e2v.yaml"])
def test_tiny_recipes_read_every_open_world_caption_whole(recipe):
    """The caption names the drift ("... drift left across ..."); the tiny tokenizer spells most of the open world's
    words letter by letter, and a text encoder that cuts a caption short loses the direction at its end (at 32
    tokens the base moved its subjects the same whichever direction the prompt named)."""
    from e2v.modules.text_encoder import TextEncoder
    from e2v.synth import plan_clip

    text = yaml.safe_load((RECIPE_DIR / recipe).read_text())["model"]["init_args"]["text_encoder"]
    tokenizer = TextEncoder.from_preset("tiny", max_length=text["max_length"]).tokenizer
    captions = [plan_clip(i, split, seed, [], 17, 32, 32, 8.0, 3, 1.0, 0.5, "open").caption
                for seed in (0, 5) for split in ("train", "zeroshot") for i in range(100)]
    longest = max(captions, key=lambda c: len(tokenizer(c)["input_ids"]))
    assert len(tokenizer(longest)["input_ids"]) <= text["max_length"], longest
