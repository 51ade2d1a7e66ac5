"""Typos are refused with a message, not a traceback or a silent default (issue 28.7): reference kinds, registry
names, command groups' help, LightningCLI parse errors, help texts."""

import json
import re
from pathlib import Path

import numpy as np
import torch
import pytest
from PIL import Image

from e2v.cli import main
from e2v.datamodules.references import REFERENCE_KINDS

TINY = Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "e2v.yaml"


@pytest.fixture
def cat(tmp_path):
    path = tmp_path / "cat.png"
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(path)
    torch.save({}, tmp_path / "fake.ckpt")  # readable, no weights and no saved sampling settings (the defaults)
    return path


@pytest.mark.parametrize("kind", ["alien", "backgorund"])
def test_generate_refuses_an_unknown_reference_kind(cat, capsys, kind):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--ref", f"{cat}:{kind}", "--prompt", "a cat", "--out", str(cat.parent / "o.mp4"),
              "--checkpoint", str(cat.parent / "fake.ckpt")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert f"--ref {cat}:{kind}: unknown reference kind {kind!r}; known kinds: animal, background" in err


def test_batch_line_and_bench_case_refuse_an_unknown_kind(cat, capsys):
    from e2v.bench.cases import CasesError, read_cases

    from e2v.argtypes import BadInput
    from e2v.pipeline.batch import read_requests

    requests = cat.parent / "requests.jsonl"
    line = {"prompt": "a cat", "references": [{"path": "cat.png", "kind": "backgorund"}], "out": "a.mp4"}
    requests.write_text(json.dumps(line) + "\n")
    defaults = dict(seed=0, height=16, width=16, frames=9, steps=1, guidance=1.0, image_guidance=None, fps=8.0)
    with pytest.raises(BadInput, match=r"line 1: references\[0\]: unknown reference kind 'backgorund'"):
        read_requests(requests, defaults, lambda request: None)

    cases = cat.parent / "cases.jsonl"
    cases.write_text(json.dumps({"id": "a", "prompt": "x", "references": [{"path": "cat.png", "kind": "alien"}]}))
    with pytest.raises(CasesError, match=r"cases.jsonl:1: references\[0\]: unknown reference kind 'alien'"):
        read_cases(cases)


def test_a_colon_in_an_existing_file_name_is_not_a_kind(tmp_path):
    from e2v.pipeline.batch import parse_reference

    odd = tmp_path / "shot:2.png"
    odd.write_bytes(b"x")
    assert parse_reference(str(odd)) == (str(odd), None)
    assert parse_reference(f"{odd}:Background") == (str(odd), "Background")
    assert sorted(REFERENCE_KINDS) == ["animal", "background", "environment", "face", "human", "object", "scene"]


@pytest.mark.parametrize("argv, message", [
    (["registry", "foo"], "e2v registry: unknown registry kind 'foo'; kinds are: dit, vae,"),
    (["registry", "dit", "wann"], "e2v registry: no dit named 'wann' is registered; known dit names: wan"),
    (["registry", "dit", "wan", "x"], "usage: e2v registry [KIND [NAME]]"),
    (["bench", "frob"], "e2v bench: error: unknown command 'frob'"),
])
def test_registry_and_group_typos_give_one_message(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("group, commands", [("data", ["synth", "check", "build", "merge"]),
                                             ("bench", ["run", "score", "compare", "from-opens2v", "from-manifest"])])
def test_group_help_lists_its_commands_and_exits_0(capsys, group, commands):
    assert main([group, "--help"]) == 0
    out = capsys.readouterr().out
    for command in commands:
        assert re.search(rf"^  {command} +\w", out, re.M), command


def test_help_shows_defaults_without_rest_markup(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["cache", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert re.search(r"--records-per-shard RECORDS_PER_SHARD\s+default: 64", out) and "(default: cpu" not in out
    assert "``" not in out and ":func:" not in out


def test_fit_parse_error_is_last_after_one_usage_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(TINY), "--trainer.max_steps", "abc"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert err[0] == "usage: e2v fit --config RECIPE.yaml [--KEY VALUE ...]" and len(err) <= 5
    assert 'trainer.max_steps' in "\n".join(err[-2:]) and "abc" in err[-1]
