"""The README's commands stay true: the two fresh-machine commands match the files they name and what CI runs, and
the main job's command list (``## What the main job runs``) runs end to end, shortened (a world of 8 clips, 2 training
steps per recipe, 2 held-out clips in the learning benchmark), in a scratch folder."""

import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

from e2v.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MAIN_JOB = "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && bash recipes/tiny/run.sh"
TESTS = 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]" && python -m pytest -q'
# what a shortened run changes in a README command: (pattern, replacement)
SHORTER = [(r"--clips \d+", "--clips 8"), (r"--heldout \d+", "--heldout 3"), (r" --check\b", " --clips 2 --out ''")]
STEPS = ["--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1"]


def bash_blocks(section: str) -> list[str]:
    """The ```bash blocks of the README section titled ``section``."""
    body = README.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", body, flags=re.S)


def commands(block: str) -> list[list[str]]:
    """The block's commands (continuation lines joined, comments dropped) as argument lists."""
    return [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_fresh_machine_commands_name_real_files_and_match_ci():
    blocks = [b.strip() for b in bash_blocks("Fresh machine: two commands")]
    assert MAIN_JOB in blocks and TESTS in blocks
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -q -e ".[test]"' in ci and "python -m pytest -q" in ci
    assert (ROOT / "recipes" / "tiny" / "run.sh").is_file()
    for path in re.findall(r"(?:recipes|benchmarks)/[\w/.-]+\.(?:yaml|py|sh)", README):
        assert (ROOT / path).is_file(), f"README names {path}, which does not exist"


def test_main_job_commands_are_the_ones_run_sh_runs():
    """Every command of the README's list appears in run.sh (the README shows placeholders for its references)."""
    script = (ROOT / "recipes" / "tiny" / "run.sh").read_text().replace("\\\n", " ")
    for args in commands(bash_blocks("What the main job runs")[0]):
        head = " ".join(args[:2] if args[0] == "python" else args[:3])
        assert head in script, f"README's main job lists `{' '.join(args)}`; run.sh runs no `{head}`"


def test_main_job_commands_run_shortened(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    block = bash_blocks("What the main job runs")[0]
    for pattern, replacement in SHORTER:
        block = re.sub(pattern, replacement, block)
    for args in commands(block):
        args = [str(ROOT / a) if a.startswith(("recipes/", "benchmarks/")) else a for a in args]
        if args[0] == "python":  # a benchmark script, run in this process with its own argv
            monkeypatch.setattr(sys, "argv", args[1:])
            runpy.run_path(args[1], run_name="__main__")
            continue
        assert args[0] == "e2v"
        if args[1] == "fit":
            args += STEPS
        if args[1] == "generate":  # the README's a.png / b.png / c.png: a held-out clip's references
            refs = sorted(Path("data/tiny_world/refs").glob("heldout_000000_*.png"))
            args = _with_refs(args, refs)
        code = main(args[1:])
        assert code in (0, None), f"`{' '.join(args)}` exited {code}"
    assert Path("video.mp4").stat().st_size > 0
    assert Path("runs/tiny/e2v/checkpoints/last.ckpt").is_file()


def _with_refs(args: list[str], refs: list[Path]) -> list[str]:
    """``args`` with each placeholder reference ``x.png:KIND`` replaced by the next real reference (same kind)."""
    out, pending = [], iter(refs)
    for arg in args:
        match = re.fullmatch(r"[a-z]\.png:(\w+)", arg)
        out.append(f"{next(pending)}:{match.group(1)}" if match else arg)
    return out
