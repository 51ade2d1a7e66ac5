#!/usr/bin/env bash
# The tiny E2V world, end to end on CPU: the open-ended synthetic world -> the E2V DiT fine-tuned from the shipped
# base -> a generated video -> the learning benchmark on held-out and zero-shot clips against honest baselines
# (exits non-zero when a margin is missed). The VAE, the reference encoder and the base DiT are shipped tiny-world
# assets (e2v/assets/tiny_world_*), as real E2V training starts from pretrained Wan2.1-I2V / CLIP weights.
# `bash recipes/tiny/run.sh --from-scratch` trains them too (VAE, reference encoder, base DiT on its own
# video-prediction world: about an hour and a half on 2 cores; the margins are printed, not enforced). Run from the
# repository root (the recipes' paths are relative to it). Each stage's wall time is printed at the end.
set -euo pipefail
from_scratch=false
case "${1:-}" in
  --from-scratch) from_scratch=true ;;
  "") ;;
  *) echo "usage: bash recipes/tiny/run.sh [--from-scratch]" >&2; exit 2 ;;
esac
world=data/tiny_world
times=()
print_times() { [ ${#times[@]} -eq 0 ] || { echo "stage times:"; printf '  %s\n' "${times[@]}"; }; }
trap print_times EXIT  # also when a stage fails (a missed margin exits 1)
stage() {  # stage NAME COMMAND...: run it, remember its wall time
  local name=$1 start=$SECONDS status=0
  shift
  "$@" || status=$?
  times+=("$(printf '%-28s %4d s' "$name" $((SECONDS - start)))")
  return $status
}
stage "synthetic world" e2v data synth --out "$world" --clips 400 --heldout 24 --zeroshot 24 --frames 17 \
  --height 32 --width 32 --background-ref-prob 1.0
rm -rf "$world/cache"  # the E2V fit encodes the fresh world with this run's components
fit_args=()
check=(--check)
if $from_scratch; then
  rm -rf runs/tiny/vae runs/tiny/refenc runs/tiny/base runs/tiny/base-long
  base_world=data/tiny_base_world
  stage "base world" e2v data synth --out "$base_world" --clips 3000 --heldout 0 --zeroshot 0 --frames 17 \
    --height 32 --width 32 --background-ref-prob 1.0 --prediction --seed 1 --workers 2
  rm -rf "$base_world/cache"
  stage "VAE" e2v fit --config recipes/tiny/vae.yaml
  stage "reference encoder" e2v fit --config recipes/tiny/refenc.yaml
  vae='{"name": "patch", "weights": "runs/tiny/vae/export"}'
  encoder='{"name": "e2v_vit", "checkpoint": "runs/tiny/refenc/export"}'
  stage "base DiT" e2v fit --config recipes/tiny/base.yaml --model.init_args.vae "$vae" \
    --model.init_args.image_encoder "$encoder"
  e2v export runs/tiny/base/checkpoints/last.ckpt --out runs/tiny/base/export --weights ema
  # the shipped base trains on from there: 16000 more steps at half the learning rate (e2v/assets/tiny_world_base)
  stage "base DiT, continued" e2v fit --config recipes/tiny/base.yaml --model.init_args.vae "$vae" \
    --model.init_args.image_encoder "$encoder" \
    --model.init_args.dit '{"name": "wan", "weights": "runs/tiny/base/export/transformer"}' \
    --model.init_args.optimizer.init_args.lr 5e-4 --trainer.max_steps 16000 --trainer.val_check_interval 4000 \
    --trainer.default_root_dir runs/tiny/base-long
  e2v export runs/tiny/base-long/checkpoints/last.ckpt --out runs/tiny/base-long/export --weights ema
  fit_args=(--model.init_args.vae "$vae" --model.init_args.image_encoder "$encoder"
            --model.init_args.dit '{"name": "wan", "weights": "runs/tiny/base-long/export/transformer"}')
  check=()
fi
rm -rf runs/tiny/e2v  # this run's E2V fit starts fresh (a run folder holding another run is refused)
stage "E2V fit" e2v fit --config recipes/tiny/e2v.yaml "${fit_args[@]}"
# one video from zero-shot references (elements from a part of the space training never draws)
first='import json, sys; r = json.loads(open(sys.argv[1]).readline())'
refs=$(python -c "$first; print(' '.join(f'--ref $world/{x[\"path\"]}:{x[\"kind\"]}' for x in r['references']))" "$world/zeroshot.jsonl")
prompt=$(python -c "$first; print(r['caption'])" "$world/zeroshot.jsonl")
# shellcheck disable=SC2086
# no sampling flags: the checkpoint carries how its run samples (solver, steps, guidance, size, output frames)
stage "generate one video" e2v generate --checkpoint runs/tiny/e2v/checkpoints/last.ckpt $refs --prompt "$prompt" \
  --out runs/tiny/sample.mp4 --compare runs/tiny/sample_refs.mp4
# did it learn to copy? held-out and zero-shot clips vs a flat mean-colour video, the background plate, shuffled
# references and swapped subjects, colour and shape
stage "learning benchmark" python benchmarks/bench_learning.py --checkpoint runs/tiny/e2v/checkpoints/last.ckpt \
  --split heldout="$world/heldout.jsonl" --split zeroshot="$world/zeroshot.jsonl" --frames 17 --size 32 \
  --out runs/tiny/learning --json runs/tiny/learning/margins.json "${check[@]}"
echo "done: sample video runs/tiny/sample.mp4, previews runs/tiny/learning/{heldout,zeroshot}_preview.png;"
echo "MLflow (every recipe's runs): mlflow ui --backend-store-uri sqlite:///runs/mlflow.db --default-artifact-root runs/mlartifacts"
