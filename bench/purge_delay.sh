#!/usr/bin/env bash
# What keeping freed pages buys: samples/s of the same run with mimalloc's own purge delay
# (MIMALLOC_PURGE_DELAY=1000: pages unused for a second go back to the kernel and fault in
# again, zeroed) and with pdecay's (-1, never), runs alternated (mimalloc's, pdecay's, ...) so
# that drift in machine load hits both alike; prints the median of each and their ratio. A
# benchmark, not a test: it asserts nothing.
#
#   bench/purge_delay.sh [REPEATS [MODEL...]]   (default 5, mlp cnn gpt; data: $PDECAY_DATA,
#                                                else ../shared/data/fashion-mnist, and
#                                                $PDECAY_TEXT, else
#                                                ../shared/data/tinyshakespeare/input.txt)
#
# MLP 2 epochs and CNN 1 epoch of full Fashion-MNIST (pAdam p 0.8, lambda 1e-2), GPT 500
# iterations of the CPU preset. Speeds are the trainers' own (training time only, no
# evaluation): `samples_per_second`, and for the GPT iterations/s (1 / `seconds_per_iter`).
set -euo pipefail
cd "$(dirname "$0")/.."
repeats=${1:-5}
shift || true
models=("$@")
[ ${#models[@]} -eq 0 ] && models=(mlp cnn gpt)
data=${PDECAY_DATA:-../shared/data/fashion-mnist}
text=${PDECAY_TEXT:-../shared/data/tinyshakespeare/input.txt}
cargo build --release --quiet
bin=target/release/pdecay
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

source bench/common.sh
speed() { # a run's summary.json: samples/s, or iterations/s for the GPT
  if grep -q seconds_per_iter "$1"; then
    awk -v s="$(key seconds_per_iter "$1")" 'BEGIN {print 1 / s}'
  else
    key samples_per_second "$1"
  fi
}

measure() { # name, then the run's flags
  local name=$1; shift
  for i in $(seq "$repeats"); do
    for delay in 1000 pdecay; do
      local dir="$work/$name-$delay-$i"
      if [ "$delay" = pdecay ]; then
        env -u MIMALLOC_PURGE_DELAY "$bin" train "$@" --out "$dir" >/dev/null
      else
        MIMALLOC_PURGE_DELAY=$delay "$bin" train "$@" --out "$dir" >/dev/null
      fi
      speed "$dir/summary.json" >>"$work/$name-$delay"
    done
  done
  local mimalloc ours
  mimalloc=$(median <"$work/$name-1000")
  ours=$(median <"$work/$name-pdecay")
  local unit=samples/s
  [ "$name" = gpt ] && unit=iters/s
  printf '%-4s  purge after 1 s %8.2f %s   never %8.2f %s   never/1 s %.3f  (median of %d)\n' \
    "$name" "$mimalloc" "$unit" "$ours" "$unit" \
    "$(awk -v a="$mimalloc" -v b="$ours" 'BEGIN {print b / a}')" "$repeats"
}

for model in "${models[@]}"; do
  case $model in
    mlp) measure mlp --model mlp --data "$data" --epochs 2 --lambda 1e-2 ;;
    cnn) measure cnn --model cnn --data "$data" --epochs 1 --lambda 1e-2 ;;
    gpt) measure gpt --model gpt --data "$text" --iters 500 --eval-interval 500 --eval-batches 1 ;;
    *) echo "unknown model $model: give mlp, cnn or gpt" >&2; exit 1 ;;
  esac
done
