#!/usr/bin/env bash
# Sparse training's whole-run speed-up: the same run with --sparse-training auto and off,
# alternated (off, auto, off, ...) so that drift in machine load hits both alike; prints, per
# model, the medians of wall time, accuracy and sparsity of each, and
# `sparse training speed-up: R (MODEL)` (R > 1: auto faster). A benchmark, not a test.
#
#   bench/sparse_training.sh [REPEATS [MODEL...]]   (default 3; MODEL: mlp mlp-lambda0.1 cnn
#                                                    cnn-lambda0.1; data: $PDECAY_DATA, else
#                                                    ../shared/data/fashion-mnist)
#
# mlp: pAdam p 0.8, lambda 1e-2, 20 epochs; mlp-lambda0.1: lambda 1e-1, 20 epochs; cnn: p 0.8,
# lambda 1e-2, 10 epochs; cnn-lambda0.1: lambda 1e-1, 4 epochs (about 98% sparse, where its
# convolutions' sparse product pays). The time is the trainer's training time
# (summary.json's samples_per_second, evaluation excluded).
# Still to come (issue 18): the GPT, and PyTorch's pAdam on the same runs (bench/torch_ref.py).
set -euo pipefail
cd "$(dirname "$0")/.."
repeats=${1:-3}
shift || true
models=("$@")
[ ${#models[@]} -eq 0 ] && models=(mlp mlp-lambda0.1 cnn cnn-lambda0.1)
data=${PDECAY_DATA:-../shared/data/fashion-mnist}
cargo build --release --quiet
bin=target/release/pdecay
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
key() { grep -o "\"$1\": [0-9.e-]*" "$2/summary.json" | awk '{print $2}'; }

measure() { # model name, then its flags
  local name=$1; shift
  for i in $(seq "$repeats"); do
    for mode in off auto; do
      local dir="$work/$name-$mode-$i"
      "$bin" train "$@" --optim padam --p 0.8 --data "$data" --sparse-training "$mode" \
        --out "$dir" >/dev/null
      key samples_per_second "$dir" >>"$work/$name-$mode.speed"
      key final_test_accuracy "$dir" >>"$work/$name-$mode.acc"
      key sparsity "$dir" >>"$work/$name-$mode.sparsity"
      [ "$mode" = auto ] && printf '%-14s auto, run %d: %s\n' "$name" "$i" \
        "$(tail -1 "$dir/metrics.jsonl" | grep -o '"sparse_layers":\[[^]]*\]')"
    done
  done
  for mode in off auto; do
    printf '%-14s %-4s  %8.0f samples/s   accuracy %.2f%%   sparsity %.1f%%  (median of %d)\n' \
      "$name" "$mode" "$(median <"$work/$name-$mode.speed")" \
      "$(median <"$work/$name-$mode.acc" | awk '{print 100 * $1}')" \
      "$(median <"$work/$name-$mode.sparsity" | awk '{print 100 * $1}')" "$repeats"
  done
  printf 'sparse training speed-up: %.3f (%s)\n' "$(awk -v a="$(median <"$work/$name-off.speed")" \
    -v b="$(median <"$work/$name-auto.speed")" 'BEGIN {print b / a}')" "$name"
}

for model in "${models[@]}"; do
  case $model in
    mlp) measure mlp --model mlp --lambda 1e-2 --epochs 20 ;;
    mlp-lambda0.1) measure mlp-lambda0.1 --model mlp --lambda 1e-1 --epochs 20 ;;
    cnn) measure cnn --model cnn --lambda 1e-2 --epochs 10 ;;
    cnn-lambda0.1) measure cnn-lambda0.1 --model cnn --lambda 1e-1 --epochs 4 ;;
    *) echo "unknown model $model (mlp, mlp-lambda0.1, cnn, cnn-lambda0.1)" >&2; exit 2 ;;
  esac
done
