"""The ``e2v`` command: LightningCLI subcommands (fit, validate, test, predict) plus e2v's own.

    e2v fit --config recipes/tiny/e2v.yaml [--trainer.max_steps 100 ...]
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


def resolve(target: str) -> Callable[[list[str]], int]:
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def registry_command(argv: list[str]) -> int:
    """Print every registered component (or those of one kind) with its one-line description; with a kind and a
    name, that component's options with their types and defaults (the table recipes are checked against)."""
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
    """A copy of a parsed LightningCLI config whose model components are resolved through the model's family (so
    ``--print_config`` and the saved config.yaml show the components that will be built, and parse again to them)."""
    from e2v.families import COMPONENTS, resolve

    prefix = "model.init_args"
    if cfg.get(f"{prefix}.family", None) is None:
        return cfg
    cfg = cfg.clone()
    specs = resolve(cfg[f"{prefix}.family"], {key: cfg.get(f"{prefix}.{key}", None) for key in COMPONENTS})
    for key, spec in specs.items():
        cfg[f"{prefix}.{key}"] = spec
    return cfg


def lightning_main(argv: list[str]) -> None:
    """Run a LightningCLI subcommand; model and data are chosen by ``class_path`` in the recipe. Full checkpoints are
    written atomically; SIGTERM during a fit saves ``last.ckpt`` and exits 143."""
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from e2v import checkpoint_io
    from e2v.callbacks.preemption import SIGTERM_EXIT, SaveOnSigterm
    from e2v.loggers import MLflowSaveConfigCallback

    preemption = SaveOnSigterm()

    class E2VArgumentParser(LightningArgumentParser):
        def dump(self, cfg, *args, **kwargs):
            return super().dump(resolve_config_families(cfg), *args, **kwargs)

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
        )
    except SIGTERMException:  # a SystemExit with code 0: a pre-empted job must not look like a success
        where = f"saved {preemption.saved}; resume with --ckpt_path {preemption.saved}" if preemption.saved else \
            "no checkpoint saved"
        print(f"e2v: stopped by SIGTERM: {where}", file=sys.stderr)
        raise SystemExit(SIGTERM_EXIT) from None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0
    command, rest = argv[0], argv[1:]
    if command in COMMANDS:
        return resolve(COMMANDS[command])(rest)
    if command == "data":
        if not rest or rest[0] not in DATA_COMMANDS:
            print(f"usage: e2v data {{{','.join(DATA_COMMANDS)}}} ...", file=sys.stderr)
            return 2
        return resolve(DATA_COMMANDS[rest[0]])(rest[1:])
    if command == "bench":
        if not rest or rest[0] not in BENCH_COMMANDS:
            print(f"usage: e2v bench {{{','.join(BENCH_COMMANDS)}}} ...", file=sys.stderr)
            return 2
        return resolve(BENCH_COMMANDS[rest[0]])(rest[1:])
    if command in LIGHTNING_COMMANDS or command.startswith("-"):
        lightning_main(argv)
        return 0
    print(f"e2v: unknown command {command!r}\n{USAGE}", file=sys.stderr, end="")
    return 2


if __name__ == "__main__":
    sys.exit(main())
