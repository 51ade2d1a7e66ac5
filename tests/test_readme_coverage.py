"""The README covers what exists (issue 28.9): each command option a newcomer needs is documented in README.md and
really accepted by the command (its --help lists it), so neither side drifts."""

from pathlib import Path

import pytest

from e2v.cli import main

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
DOCUMENTED = {  # command -> options the README explains
    ("plan",): ["--config", "--gpus"],
    ("export",): ["--out", "--weights", "--base", "--merge-lora"],
    ("generate",): ["--lora", "--step-cache", "--teacache", "--batch"],
    ("data", "build"): ["--workers", "--heldout-every", "--shard", "--engine", "--config"],
    ("data", "merge"): ["--heldout-every", "--from"],
    ("cache",): ["--rebuild"],
    ("bench", "score"): ["--limit", "--no-tracking", "--tracking-uri"],
}


@pytest.mark.parametrize("command", list(DOCUMENTED), ids=" ".join)
def test_documented_options_exist(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for option in DOCUMENTED[command]:
        assert option in help_text, f"e2v {' '.join(command)} has no {option}"
        assert option in README, f"README.md does not mention {option} (e2v {' '.join(command)})"
    assert f"e2v {' '.join(command)}" in README


def test_readme_names_the_lora_recipe_and_the_run_folder_rule():
    assert "recipes/a2-14b-lora.yaml" in README and (README.find("--ckpt_path last") > 0)
    assert "transformer/` only" in README  # what a tiny checkpoint's export holds and how to use it
