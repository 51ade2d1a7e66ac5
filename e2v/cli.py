"""The ``e2v`` command: LightningCLI subcommands (fit, validate, test, predict) plus e2v's own.

    e2v fit --config recipes/tiny/e2v.yaml [--trainer.max_steps 100 ...]
    e2v distill [--config recipes/tiny/distill.yaml]   # a few-step, guidance-free student (e2v fit, checked)
    e2v registry                      # every registered component, by kind
    e2v registry dit wan              # one component's options, types and defaults (what a recipe may set)
    e2v data synth --out data/world   # the synthetic E2V world
    e2v data check manifest.jsonl     # validate a triplet manifest
    e2v data synth --raw --out raw    # raw multi-shot videos with truth (to verify e2v data build)
    e2v data build --videos raw/videos --out built   # triplets from raw videos
    e2v data merge built              # the global stage after --shard I/N runs
    e2v cache ...                     # precompute latents and encoder states
    e2v generate --ref a.png --ref b.png --prompt "..." --checkpoint last.ckpt --out video.mp4
    e2v export last.ckpt --out release   # a checkpoint (full or distributed) as a --weights release root
    e2v plan --config RECIPE.yaml       # parameters and per-GPU memory of a recipe, before launching it
    e2v bench score --cases cases.jsonl --videos DIR --out REPORT   # A2-Bench-style evaluation
    e2v app --checkpoint last.ckpt [--port 7860]   # the browser UI (gradio; listens on 127.0.0.1)
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable

USAGE = """usage: e2v {fit,validate,test,predict} --config RECIPE.yaml [overrides]
       e2v distill [--config RECIPE.yaml] [overrides]
       e2v registry [KIND [NAME]]
       e2v data {synth,check,build,merge} ...
       e2v cache ...
       e2v generate ...
       e2v export CHECKPOINT --out DIR [--weights ema|raw]
       e2v plan --config RECIPE.yaml [--gpus N]
       e2v bench {run,score,compare,from-opens2v,from-manifest} ...
       e2v app (--checkpoint CKPT | --weights DIR) [--host 127.0.0.1] [--port N] [--out DIR]
"""

# name -> "module:function" taking argv and returning an exit code; imported only when used (lightning is slow).
COMMANDS: dict[str, str] = {
    "registry": "e2v.cli:registry_command",
    "cache": "e2v.datamodules.commands:cache_command",
    "generate": "e2v.pipeline.generate:generate_command",
    "export": "e2v.export:export_command",
    "plan": "e2v.plan:plan_command",
    "app": "e2v.app.command:app_command",
    "distill": "e2v.distill_command:distill_command",
}
DATA_COMMANDS: dict[str, str] = {
    "synth": "e2v.world_commands:synth_command",
    "check": "e2v.datamodules.commands:check_command",
    "build": "e2v.databuild.commands:build_command",
    "merge": "e2v.databuild.commands:merge_command",
}
BENCH_COMMANDS: dict[str, str] = {
    "run": "e2v.bench.commands:run_command",
    "score": "e2v.bench.commands:score_command",
    "compare": "e2v.bench.commands:compare_command",
    "from-opens2v": "e2v.bench.commands:opens2v_command",
    "from-manifest": "e2v.bench.commands:manifest_command",
}
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
# command groups: name -> (their subcommands, one line each for the group's help)
GROUPS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "data": (DATA_COMMANDS, {
        "synth": "write the synthetic E2V world (or, with --raw, raw multi-shot videos with truth)",
        "check": "validate a triplet manifest (every record, optionally decoding the videos)",
        "build": "build triplets (train.jsonl, heldout.jsonl) from raw videos",
        "merge": "the global stage over --shard I/N build folders",
    }),
    "bench": (BENCH_COMMANDS, {
        "run": "generate one video per case with an e2v model, then score them",
        "score": "score any model's videos (DIR/ID.mp4) of a cases file",
        "compare": "compare report folders: table, bar and radar charts",
        "from-opens2v": "a cases file from an OpenS2V-Eval json",
        "from-manifest": "a cases file from a triplet manifest (e.g. a held-out split)",
    }),
}


def resolve(target: str) -> Callable[[list[str]], int]:
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def registry_command(argv: list[str]) -> int:
    """Print every registered component (or those of one kind) with its one-line description; with a kind and a
    name, that component's options with their types and defaults (the table recipes are checked against)."""
    if len(argv) > 2 or any(arg.startswith("-") for arg in argv):
        print("usage: e2v registry [KIND [NAME]]", file=sys.stderr if argv not in (["-h"], ["--help"]) else None)
        return 0 if argv in (["-h"], ["--help"]) else 2
    try:
        return _print_registry(argv)
    except (KeyError, ValueError) as err:  # an unknown kind or name: the message lists the known ones
        print(f"e2v registry: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2


def _print_registry(argv: list[str]) -> int:
    from e2v import registry
    from e2v.typecheck import describe

    if len(argv) == 2:
        kind, name = argv
        entry = registry.entry(kind, name)
        accepted, open_ended = registry.options(kind, name)
        print(f"{kind} {name}: {entry.description}")
        print(f"  recipe: {{name: {name}, ...options}}; options:")
        for option in accepted.values():
            kind_text = "" if option.annotation is registry.Option.REQUIRED else describe(option.annotation)
            default = "(required)" if option.default is registry.Option.REQUIRED else f"default {option.default!r}"
            print(f"  {option.name:<24} {kind_text:<32} {default}")
        if open_ended:
            print("  (also takes further options: **kwargs)")
        return 0
    kinds = argv or list(registry.KINDS)
    for kind in kinds:
        entries = registry.entries(kind)
        print(f"{kind}:")
        for entry in entries:
            print(f"  {entry.name:<18} {entry.description}")
        if not entries:
            print("  (none registered)")
    return 0


def resolve_config_families(cfg):
    """A copy of a parsed LightningCLI config whose model components are resolved through the model's family and
    whose checkpoint and logger folders are filled from the run folder (so ``--print_config`` and the saved
    config.yaml show what will be built and written, and parse again to it)."""
    from e2v.families import COMPONENTS, resolve
    from e2v.run_folder import apply_run_folder

    if cfg.get("trainer", None) is not None:
        cfg = cfg.clone()
        apply_run_folder(cfg["trainer"])
    prefix = "model.init_args"
    if cfg.get(f"{prefix}.family", None) is None:
        return cfg
    cfg = cfg.clone()
    specs = resolve(cfg[f"{prefix}.family"], {key: cfg.get(f"{prefix}.{key}", None) for key in COMPONENTS})
    for key, spec in specs.items():
        cfg[f"{prefix}.{key}"] = spec
    return cfg


def enforce_run_folder(cfg) -> None:
    """The run folder rule of :mod:`e2v.run_folder` on a parsed ``fit`` config: fill the folders, refuse a folder
    holding another run (exit 2, before any model is built), continue the MLflow run of a resumed fit."""
    from e2v.run_folder import RunFolderInUse, apply_run_folder, check_run_folder, resume_logger

    apply_run_folder(cfg["trainer"])
    try:
        check_run_folder(cfg["trainer"], cfg.get("ckpt_path"))
    except RunFolderInUse as error:
        print(f"e2v fit: {error}", file=sys.stderr)
        sys.exit(2)
    resume_logger(cfg["trainer"], cfg.get("ckpt_path"))


def lightning_main(argv: list[str]) -> None:
    """Run a LightningCLI subcommand; model and data are chosen by ``class_path`` in the recipe. Full checkpoints are
    written atomically; SIGTERM during a fit saves ``last.ckpt`` and exits 143."""
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from e2v import checkpoint_io
    from e2v.callbacks.preemption import SIGTERM_EXIT, SaveOnSigterm
    from e2v.callbacks.progress import ProgressLog
    from e2v.datamodules.cache import CacheError
    from e2v.loggers import MLflowSaveConfigCallback

    preemption = SaveOnSigterm()

    class E2VArgumentParser(LightningArgumentParser):
        def dump(self, cfg, *args, **kwargs):
            return super().dump(resolve_config_families(cfg), *args, **kwargs)

        def print_usage(self, file=None):  # what a parse error prints before it: one line, not every option
            prog = self.prog.replace(" [options]", "")
            print(f"usage: {prog} --config RECIPE.yaml [--KEY VALUE ...]", file=file)

    class E2VCLI(LightningCLI):
        def init_parser(self, **kwargs):
            parser = super().init_parser(**kwargs)
            parser.__class__ = E2VArgumentParser  # same parser, family-resolving dump
            return parser

        def before_instantiate_classes(self):
            from e2v.recipe_checks import recipe_problems

            problems = recipe_problems(self.config[self.subcommand])
            for problem in problems:
                print(f"e2v {self.subcommand}: error: {problem}", file=sys.stderr)
            if problems:
                raise SystemExit(2)
            if self.subcommand == "fit":
                enforce_run_folder(self.config["fit"])

        def instantiate_trainer(self, **kwargs):
            trainer = super().instantiate_trainer(**kwargs)
            trainer.callbacks.append(preemption)
            checkpoint_io.install(trainer)
            return trainer

    try:
        E2VCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=MLflowSaveConfigCallback,
            save_config_kwargs={"overwrite": True},
            args=None if argv == sys.argv[1:] else argv,  # from the shell LightningCLI reads sys.argv itself
            parser_kwargs={"prog": "e2v"},
            trainer_defaults={"callbacks": [ProgressLog()]},  # plain progress lines when stdout is a log file
        )
    except CacheError as error:  # a stale or damaged latent cache: the message says what to do
        print(f"e2v {argv[0]}: {error}", file=sys.stderr)
        sys.exit(2)
    except SIGTERMException:  # a SystemExit with code 0: a pre-empted job must not look like a success
        where = f"saved {preemption.saved}; resume with --ckpt_path {preemption.saved}" if preemption.saved else \
            "no checkpoint saved"
        print(f"e2v: stopped by SIGTERM: {where}", file=sys.stderr)
        raise SystemExit(SIGTERM_EXIT) from None


def group_main(group: str, argv: list[str]) -> int:
    """``e2v GROUP SUBCOMMAND ...``: run the subcommand; ``--help`` (or nothing) lists the subcommands."""
    commands, lines = GROUPS[group]
    if argv and argv[0] in commands:
        return resolve(commands[argv[0]])(argv[1:])
    helping = bool(argv) and argv[0] in ("-h", "--help")
    text = f"usage: e2v {group} {{{','.join(commands)}}} ...  (e2v {group} COMMAND --help for its options)\n"
    text += "".join(f"  {name:<15} {line}\n" for name, line in lines.items())
    if not helping and argv:
        text += f"e2v {group}: error: unknown command {argv[0]!r}\n"
    print(text, end="", file=sys.stdout if helping else sys.stderr)
    return 0 if helping else 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0
    command, rest = argv[0], argv[1:]
    if command in COMMANDS:
        return resolve(COMMANDS[command])(rest)
    if command in GROUPS:
        return group_main(command, rest)
    if command in LIGHTNING_COMMANDS or command.startswith("-"):
        lightning_main(argv)
        return 0
    print(f"e2v: unknown command {command!r}\n{USAGE}", file=sys.stderr, end="")
    return 2


if __name__ == "__main__":
    sys.exit(main())
