#!/usr/bin/env bash
# pWD's training cost: samples/s of pAdam over AdamW, same model, data and schedule, runs
# alternated (AdamW, pAdam, AdamW, ...) so that drift in machine load hits both alike; prints
# the median of each and their ratio. A benchmark, not a test: it asserts nothing.
#
#   bench/pwd_cost.sh [REPEATS]      (default 5; data: $PDECAY_DATA, else ../shared/data/fashion-mnist)
#
# The MLP trains 2 epochs on the full training set; the CNN 1 epoch on the embedded subset
# (5,500 images) to keep the whole script to a few minutes on 2 cores. samples/s is the
# trainer's own `samples_per_second` (training time only, no evaluation).
set -euo pipefail
cd "$(dirname "$0")/.."
repeats=${1:-5}
data=${PDECAY_DATA:-../shared/data/fashion-mnist}
cargo build --release --quiet
bin=target/release/pdecay
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

source bench/common.sh

measure() { # name, then the flags shared by both optimizers
  local name=$1; shift
  for i in $(seq "$repeats"); do
    for optim in adamw padam; do
      "$bin" train "$@" --optim "$optim" --lambda 1e-2 --out "$work/$name-$optim-$i" >/dev/null
      key samples_per_second "$work/$name-$optim-$i/summary.json" >>"$work/$name-$optim"
    done
  done
  local adamw padam
  adamw=$(median <"$work/$name-adamw")
  padam=$(median <"$work/$name-padam")
  printf '%-4s  AdamW %8.0f samples/s   pAdam %8.0f samples/s   pAdam/AdamW %.3f  (median of %d)\n' \
    "$name" "$adamw" "$padam" "$(awk -v a="$adamw" -v b="$padam" 'BEGIN {print b / a}')" "$repeats"
}

measure mlp --model mlp --data "$data" --epochs 2
measure cnn --model cnn --embedded --epochs 1
