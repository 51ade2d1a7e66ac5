"""Model families: consistent bundles; recipes, from_weights and e2v cache start from them."""

from pathlib import Path

import pytest
import yaml

from e2v import registry
from e2v.cli import main
from e2v.datamodules.commands import cache_command
from e2v.families import COMPONENTS, family_specs, resolve

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
FAMILIES = ("tiny", "wan2.1-t2v-1.3b", "wan2.1-i2v-14b", "a2-14b")


def test_families_are_registered():
    assert set(FAMILIES) <= {entry.name for entry in registry.entries("family")}


@pytest.mark.parametrize("name", FAMILIES)
def test_family_specs_name_registered_components(name):
    specs = family_specs({"name": name, "weights": "/ckpt/root"})
    assert set(specs) == set(COMPONENTS)
    kinds = {"layout": "reference_layout"}
    for key, spec in specs.items():
        if spec is not None:
            registry.parse_spec(kinds.get(key, key), spec)
    assert specs["dit"]["weights"] == "/ckpt/root/transformer"
    assert (specs["image_encoder"] is None) == (specs["layout"]["name"] == "temporal_append")


def test_full_size_families_need_weights():
    with pytest.raises(ValueError, match="family 'a2-14b' has no random-init .* give weights"):
        family_specs("a2-14b")


def test_tiny_family_widths_fit():
    """The tiny DiT's context widths are the tiny encoders' (no recipe or test has to patch image_dim)."""
    specs = family_specs("tiny")
    dit = registry.build("dit", specs["dit"])
    assert dit.config.image_dim == registry.build("image_encoder", specs["image_encoder"]).dim
    assert dit.config.text_dim == registry.build("text_encoder", specs["text_encoder"]).dim


def test_merge_rules():
    specs = resolve("tiny", {"dit": {"name": "wan", "num_layers": 3}, "vae": {"name": "patch", "width": 16},
                             "layout": "a2"})
    assert specs["dit"] == {"name": "wan", "preset": "tiny", "num_layers": 3}  # same name: options merged
    assert specs["vae"] == {"name": "patch", "width": 16}  # another name: replaced
    assert specs["text_encoder"] == {"name": "umt5", "preset": "tiny"}  # left out: the family's
    assert specs["layout"] == {"name": "a2"}


def test_tiny_recipe_resolves_to_its_own_specs():
    """The main job's recipe names everything itself: the default family changes none of its components."""
    recipe = yaml.safe_load((RECIPES / "tiny" / "e2v.yaml").read_text())["model"]["init_args"]
    given = {key: recipe[key] for key in COMPONENTS}
    resolved = resolve(recipe.get("family"), given)
    for key in COMPONENTS:
        want = given[key] if isinstance(given[key], dict) else {"name": given[key]}
        extra = {"preset": "tiny"} if "pretrained" in want and key == "dit" else {}  # unused beside pretrained
        assert resolved[key] == {**extra, **want}, key


def test_recipe_family_resolved_in_printed_config(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(RECIPES / "a2-14b.yaml"), "--print_config"])
    model = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
    root = "checkpoints/SkyReels-A2-14B"
    assert model["dit"]["weights"] == f"{root}/transformer" and model["dit"]["gradient_checkpointing"] is True
    assert model["vae"]["weights"] == f"{root}/vae" and model["vae"]["dtype"] == "bfloat16"
    assert model["text_encoder"]["path"] == root and model["text_encoder"]["max_length"] == 512
    assert model["image_encoder"]["path"] == root and model["layout"]["name"] == "a2"


def test_e2v_diffusion_keeps_resolved_specs_as_hyperparameters():
    from e2v.tasks.e2v_diffusion import E2VDiffusion

    module = E2VDiffusion(text_encoder={"name": "umt5", "max_length": 8})
    assert module.hparams.dit == {"name": "wan", "preset": "tiny"}
    assert module.hparams.text_encoder == {"name": "umt5", "preset": "tiny", "max_length": 8}
    assert module.hparams.image_encoder == {"name": "clip", "preset": "tiny"}


def test_cache_command_family_errors_exit_2(tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("")
    with pytest.raises(SystemExit) as exit_info:
        cache_command([str(manifest), "--out", str(tmp_path / "c"), "--family", "a2-14b"])
    assert exit_info.value.code == 2 and "give weights" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cache_command([str(manifest), "--out", str(tmp_path / "c")])
    assert exit_info.value.code == 2 and "required without --family: --vae, --text-encoder" in capsys.readouterr().err
