"""``e2v distill``: ``e2v fit`` of a distillation recipe, refusing a recipe whose model is not a distillation task.

    e2v distill                                         # recipes/tiny/distill.yaml (ode, from the main job)
    e2v distill --config recipes/tiny/distill-dmd.yaml  # dmd from the ode student
    e2v distill --config RECIPE.yaml --model.init_args.teacher runs/x/last.ckpt --trainer.max_steps 200

Every ``e2v fit`` option and override works the same (this is ``e2v fit`` with a check in front).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import yaml

DEFAULT_RECIPE = "recipes/tiny/distill.yaml"
USAGE = ("usage: e2v distill [--config RECIPE.yaml] [e2v fit overrides ...]\n"
         f"  the default recipe is {DEFAULT_RECIPE} (run from the repository root);\n"
         "  tasks: e2v.tasks.distill.ODEDistillation (ode), e2v.tasks.distill.DMDDistillation (dmd)\n")


def config_paths(argv: list[str]) -> list[str]:
    """The ``--config`` files named in ``argv`` (``--config X`` and ``--config=X``)."""
    paths = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--config"]
    return paths + [arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")]


def recipe_problem(path: str) -> str | None:
    """Why the recipe at ``path`` is not a distillation recipe (None when it is one)."""
    from e2v.tasks.distill import Distillation

    if not Path(path).is_file():
        return f"{path}: no such recipe file"
    try:
        recipe = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        return f"{path}: not valid YAML ({err})"
    class_path = ((recipe or {}).get("model") or {}).get("class_path") if isinstance(recipe, dict) else None
    if not class_path:
        return None  # another --config (e.g. trainer settings only) may name the model
    module, _, name = class_path.rpartition(".")
    try:
        task = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return f"{path}: model.class_path {class_path!r} cannot be imported"
    if not (isinstance(task, type) and issubclass(task, Distillation)):
        return (f"{path}: model.class_path is {class_path!r}, not a distillation task "
                "(e2v.tasks.distill.ODEDistillation or DMDDistillation); train it with e2v fit")
    return None


def distill_command(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__.split("\n\n")[1].rstrip() + "\n\n" + USAGE, end="")
        return 0
    configs = config_paths(argv)
    if not configs:
        configs, argv = [DEFAULT_RECIPE], ["--config", DEFAULT_RECIPE, *argv]
    problems = [problem for problem in map(recipe_problem, configs) if problem]
    if problems:
        print("e2v distill: " + "\ne2v distill: ".join(problems), file=sys.stderr)
        return 2
    from e2v.cli import lightning_main

    shell = sys.argv
    sys.argv = [shell[0], "fit", *argv]  # LightningCLI reads the command line: make it the fit it runs
    try:
        lightning_main(sys.argv[1:])
    finally:
        sys.argv = shell
    return 0
