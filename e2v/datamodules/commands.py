"""Console commands of the data side: ``e2v data check`` and ``e2v cache`` (argparse, return an exit code)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from e2v.argtypes import HelpFormatter, frame_count, json_value, nonnegative_int, positive_float, positive_int, registry_spec
from e2v.atomic import write_json_atomic


def check_command(argv: list[str] | None = None) -> int:
    """``e2v data check MANIFEST``: report good/bad records with reasons; exit code 1 when any record is bad, 2 when
    the manifest or an option is unusable."""
    from e2v.datamodules.manifest import DEFAULT_MIN_REFERENCES, ManifestError, validate_manifest

    parser = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="e2v data check", description=check_command.__doc__)
    parser.add_argument("manifest", type=Path, help="JSONL triplet manifest")
    parser.add_argument("--frames", type=positive_int, default=None, help="frames every clip must yield (e.g. 81)")
    parser.add_argument("--fps", type=positive_float, default=None, help="sampling rate for --frames (default: native)")
    parser.add_argument("--min-references", type=nonnegative_int, default=DEFAULT_MIN_REFERENCES,
                        help=f"fewest reference images a record may have (default {DEFAULT_MIN_REFERENCES}, as in fit)")
    parser.add_argument("--no-decode", action="store_true", help="only probe headers and stat files (fast)")
    parser.add_argument("--json", type=Path, default=None, help="also write the full report as JSON here")
    parser.add_argument("--show", type=int, default=20, help="bad records to list (default 20; -1 for all)")
    args = parser.parse_args(argv)
    if args.json is not None and args.json.is_dir():
        parser.error(f"argument --json: {args.json} is a directory")
    try:
        report = validate_manifest(
            args.manifest, args.frames, args.fps, min_references=args.min_references, decode=not args.no_decode
        )
    except (OSError, ManifestError) as err:
        print(f"e2v data check: error: {err}", file=sys.stderr)
        return 2
    print(report.summary())
    shown = report.bad if args.show < 0 else report.bad[: args.show]
    for bad in shown:
        print(f"  {bad}")
    if len(shown) < len(report.bad):
        print(f"  ... {len(report.bad) - len(shown)} more (use --show -1 or --json)")
    if args.json is not None:
        payload = {
            "manifest": str(report.path),
            "good": len(report.good),
            "bad": len(report.bad),
            "reasons": dict(report.reasons),
            "bad_records": [vars(bad) for bad in report.bad],
        }
        try:
            write_json_atomic(args.json, payload, indent=2)
        except OSError as err:
            print(f"e2v data check: error: cannot write --json {args.json}: {err}", file=sys.stderr)
            return 2
    return 1 if report.bad else 0


def remove_cache(parser: argparse.ArgumentParser, folder: Path) -> None:
    """Delete the latent cache in ``folder`` (``--rebuild``); a folder that holds no cache index is refused."""
    import shutil

    from e2v.datamodules.cache import INDEX_NAME

    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        parser.error("--rebuild deletes the cache before building: run it in one process, then launch the ranks")
    if folder.exists() and not (folder / INDEX_NAME).is_file():
        parser.error(f"--rebuild: {folder} holds no latent cache ({INDEX_NAME}); not deleting it")
    if folder.exists():
        shutil.rmtree(folder)


def cache_command(argv: list[str] | None = None) -> int:
    """``e2v cache MANIFEST --out DIR``: precompute latents, condition, text states and image tokens (resumable)."""
    import torch

    from e2v import registry
    from e2v.datamodules.cache import CacheError, build_cache
    from e2v.datamodules.manifest import DEFAULT_MIN_REFERENCES

    parser = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="e2v cache", description=cache_command.__doc__)
    parser.add_argument("manifest", type=Path, help="JSONL triplet manifest")
    parser.add_argument("--out", type=Path, required=True, help="cache folder (an interrupted run resumes)")
    parser.add_argument("--family", default=None,
                        help="model family giving the VAE, encoders and layout (e2v registry family), e.g. a2-14b")
    parser.add_argument("--weights", default=None, help="the family's release root (official weights folder)")
    parser.add_argument("--vae", default=None, type=registry_spec,
                        help='registry spec, e.g. \'{"name": "wan", "weights": "ckpt/vae"}\' (over the family\'s)')
    parser.add_argument("--text-encoder", default=None, type=registry_spec,
                        help='registry spec, e.g. \'{"name": "umt5", "path": ...}\' (over the family\'s)')
    parser.add_argument("--image-encoder", default=None, type=registry_spec,
                        help="registry spec (needed when the layout uses image tokens; over the family's)")
    parser.add_argument("--layout", default=None, type=registry_spec,
                        help="reference layout spec (default: the family's, else a2)")
    parser.add_argument("--frames", type=frame_count, default=17)
    parser.add_argument("--height", type=positive_int, default=256)
    parser.add_argument("--width", type=positive_int, default=256)
    parser.add_argument("--buckets", default=None, type=json_value,
                        help="JSON [[frames, height, width], ...]; overrides the above")
    parser.add_argument("--fps", type=positive_float, default=None)
    parser.add_argument("--image-size", type=positive_int, default=None, help="reference square side (default: encoder's)")
    parser.add_argument("--max-references", type=positive_int, default=3)
    parser.add_argument("--min-references", type=nonnegative_int, default=DEFAULT_MIN_REFERENCES)
    parser.add_argument("--records-per-shard", type=positive_int, default=64)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=positive_int, default=8,
                        help="clips encoded together (same bucket and reference count); under torchrun each rank "
                             "(RANK / WORLD_SIZE) encodes its share of the shards and rank 0 writes the index")
    parser.add_argument("--rebuild", action="store_true",
                        help="delete the cache in --out first (one written with other components or settings)")
    args = parser.parse_args(argv)
    if args.rebuild:
        remove_cache(parser, args.out)
    if args.family is None:
        if args.weights is not None:
            parser.error("--weights is the release root of a --family")
        missing = [flag for flag, value in (("--vae", args.vae), ("--text-encoder", args.text_encoder)) if value is None]
        if missing:
            parser.error(f"the following arguments are required without --family: {', '.join(missing)}")
        args.layout = args.layout if args.layout is not None else "a2"
    else:
        from e2v.families import resolve

        family = {"name": args.family, **({"weights": args.weights} if args.weights else {})}
        try:
            specs = resolve(family, {"vae": args.vae, "text_encoder": args.text_encoder,
                                     "image_encoder": args.image_encoder, "layout": args.layout})
        except (KeyError, TypeError, ValueError) as err:
            parser.error(str(err).strip("'\""))
        args.vae, args.text_encoder, args.image_encoder, args.layout = (
            specs["vae"], specs["text_encoder"], specs["image_encoder"], specs["layout"])

    try:
        layout = registry.build("reference_layout", args.layout)
        vae = registry.build("vae", args.vae).to(args.device).eval()
        text_encoder = registry.build("text_encoder", args.text_encoder).to(args.device).eval()
        image_encoder = registry.build("image_encoder", args.image_encoder)
    except (KeyError, TypeError, ValueError) as err:  # unknown name, bad option (CheckpointError is a ValueError)
        parser.error(str(err).strip("'\""))
    if image_encoder is not None:
        image_encoder = image_encoder.to(args.device).eval()
    elif layout.uses_image_tokens:
        parser.error(f"the {args.layout} layout uses image tokens: pass --image-encoder")
    image_size = args.image_size or getattr(image_encoder, "image_size", 224)
    buckets = args.buckets if args.buckets is not None else [[args.frames, args.height, args.width]]
    try:
        cache = build_cache(
            args.manifest,
            args.out,
            vae,
            text_encoder,
            image_encoder,
            layout,
            buckets,
            fps=args.fps,
            image_size=image_size,
            max_references=args.max_references,
            min_references=args.min_references,
            records_per_shard=args.records_per_shard,
            dtype=getattr(torch, args.dtype),
            device=args.device,
            on_shard=lambda done, total: print(f"shard {done}/{total} written", flush=True),
            batch_size=args.batch_size,
            rank=int(os.environ.get("RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
        )
    except (CacheError, FileNotFoundError, ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if cache is None:  # a rank other than 0: its shards are written, rank 0 writes the index
        return 0
    print(f"{cache.dir}: {len(cache.records)} records cached, {len(cache.skipped)} skipped (key {cache.index['key']})")
    for skipped in cache.skipped[:20]:
        print(f"  skipped {skipped['id']}: {skipped['reason']}: {skipped['message']}")
    return 0
