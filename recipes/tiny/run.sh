#!/usr/bin/env bash
# The tiny E2V world, end to end on CPU: synthetic data -> reference encoder -> E2V DiT -> a generated video ->
# the learning benchmark against honest baselines (exits non-zero when a margin is missed).
# The VAE is the shipped tiny-world VAE (e2v/assets/tiny_world_vae, made by recipes/tiny/vae-asset.yaml), as real
# E2V training starts from the pretrained Wan VAE. `bash recipes/tiny/run.sh --from-scratch` trains the VAE too
# (recipes/tiny/vae.yaml, a few minutes; its shorter training gives blurrier videos, so the margins are printed,
# not enforced). Run from the repository root (the recipes' paths are relative to it).
set -euo pipefail
from_scratch=false
case "${1:-}" in
  --from-scratch) from_scratch=true ;;
  "") ;;
  *) echo "usage: bash recipes/tiny/run.sh [--from-scratch]" >&2; exit 2 ;;
esac
world=data/tiny_world
e2v data synth --out "$world" --clips 400 --heldout 24 --frames 17 --height 32 --width 32 --background-ref-prob 1.0
e2v data check "$world/train.jsonl" --frames 17 --no-decode
rm -rf "$world/cache"  # the E2V fit encodes the fresh world with this run's components
vae_args=()
check=(--check)
if $from_scratch; then
  e2v fit --config recipes/tiny/vae.yaml
  vae_args=(--model.init_args.vae '{"name": "patch", "weights": "runs/tiny/vae/export"}')
  check=()
fi
e2v fit --config recipes/tiny/refenc.yaml
e2v fit --config recipes/tiny/e2v.yaml "${vae_args[@]}"
# one video from held-out references (an element pair never seen together in training)
first='import json, sys; r = json.loads(open(sys.argv[1]).readline())'
refs=$(python -c "$first; print(' '.join(f'--ref $world/{x[\"path\"]}:{x[\"kind\"]}' for x in r['references']))" "$world/heldout.jsonl")
prompt=$(python -c "$first; print(r['caption'])" "$world/heldout.jsonl")
# shellcheck disable=SC2086
e2v generate --checkpoint runs/tiny/e2v/checkpoints/last.ckpt $refs --prompt "$prompt" --height 32 --width 32 \
  --frames 17 --steps 20 --solver euler --shift 3 --guidance 1.0 --out runs/tiny/sample.mp4 --compare runs/tiny/sample_refs.mp4
# did it learn? held-out clips vs a flat mean-colour video, shuffled references and swapped subjects
python benchmarks/bench_learning.py --checkpoint runs/tiny/e2v/checkpoints/last.ckpt --manifest "$world/heldout.jsonl" \
  --frames 17 --size 32 --out runs/tiny/learning "${check[@]}"
echo "done: sample video runs/tiny/sample.mp4, held-out preview runs/tiny/learning/heldout_preview.png;"
echo "MLflow (every recipe's runs): mlflow ui --backend-store-uri sqlite:///runs/mlflow.db --default-artifact-root runs/mlartifacts"
