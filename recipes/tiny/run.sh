#!/usr/bin/env bash
# The tiny E2V world, end to end on CPU: synthetic data -> VAE -> reference encoder -> E2V DiT -> a generated video.
# Run from the repository root (paths in the recipes are relative to it). Every step is a plain `e2v` command.
set -euo pipefail
world=data/tiny_world
e2v data synth --out "$world" --clips 240 --heldout 24 --frames 17 --height 32 --width 32
e2v data check "$world/train.jsonl" --frames 17 --no-decode
e2v fit --config recipes/tiny/vae.yaml
e2v fit --config recipes/tiny/refenc.yaml
e2v fit --config recipes/tiny/e2v.yaml
# one video from held-out references (an element pair never seen together in training)
first='import json, sys; r = json.loads(open(sys.argv[1]).readline())'
refs=$(python -c "$first; print(' '.join(f'--ref $world/{x[\"path\"]}:{x[\"kind\"]}' for x in r['references']))" "$world/heldout.jsonl")
prompt=$(python -c "$first; print(r['caption'])" "$world/heldout.jsonl")
# shellcheck disable=SC2086
e2v generate --checkpoint runs/tiny/e2v/checkpoints/last.ckpt $refs --prompt "$prompt" --height 32 --width 32 \
  --frames 17 --steps 20 --solver euler --shift 3 --guidance 1.0 --out runs/tiny/sample.mp4 --compare runs/tiny/sample_refs.mp4
# did it learn? held-out clips: trained vs untrained vs shuffled references
python benchmarks/bench_learning.py --checkpoint runs/tiny/e2v/checkpoints/last.ckpt --manifest "$world/heldout.jsonl" \
  --clips 8 --frames 17 --size 32
echo "done: MLflow runs in runs/tiny/*/mlflow.db; sample video runs/tiny/sample.mp4"
