#!/usr/bin/env bash
# Sparse training's whole-run speed-up: the same run with --sparse-training auto and off, and
# the paper's pAdam in PyTorch on the same settings (bench/torch_ref.py --whole-run, reading the
# pdecay run's config.toml), alternated (off, auto, torch, off, ...) so that drift in machine
# load hits all alike. Prints, per model, the medians of speed, accuracy (the GPT: validation
# loss) and sparsity of each, then
#   sparse training speed-up: R (MODEL)                  (auto / off; R > 1: auto faster)
#   pdecay/PyTorch-pAdam whole-run ratio: R (MODEL)      (auto / torch; R > 1: pdecay faster)
# and last `slowest pdecay/PyTorch-pAdam whole-run ratio: R (MODEL)`. A benchmark, not a test.
#
#   bench/sparse_training.sh [REPEATS [MODEL...]]   (default 3; MODEL: mlp mlp-lambda0.1 cnn
#                                                    cnn-lambda0.1 gpt; data: $PDECAY_DATA, else
#                                                    ../shared/data/fashion-mnist, and
#                                                    $PDECAY_TEXT, else Tiny Shakespeare there)
#
# mlp: pAdam p 0.8, lambda 1e-2, 20 epochs; mlp-lambda0.1: lambda 1e-1, 20 epochs; cnn: p 0.8,
# lambda 1e-2, 10 epochs; cnn-lambda0.1: lambda 1e-1, 4 epochs (about 98% sparse, where its
# convolutions' sparse product pays); gpt: configs/shakespeare-cpu-padam.toml (2,000
# iterations, p from 2 to 0.8 over the first half). Speeds are the trainers' training time
# (evaluation excluded): images/s, or iterations/s for the GPT. PyTorch needs bench/.venv
# (python3 -m venv bench/.venv && bench/.venv/bin/pip install torch==2.15.0 numpy==2.4.6);
# PYTHON overrides it, and PYTHON=none leaves PyTorch out.
set -euo pipefail
cd "$(dirname "$0")/.."
repeats=${1:-3}
shift || true
models=("$@")
[ ${#models[@]} -eq 0 ] && models=(mlp mlp-lambda0.1 cnn cnn-lambda0.1 gpt)
data=${PDECAY_DATA:-../shared/data/fashion-mnist}
text=${PDECAY_TEXT:-../shared/data/tinyshakespeare/input.txt}
python=${PYTHON:-bench/.venv/bin/python}
modes=(off auto torch)
[ "$python" = none ] && modes=(off auto)
cargo build --release --quiet
bin=target/release/pdecay
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

source bench/common.sh
slowest=""

measure() { # model name, then its pdecay flags
  local name=$1; shift
  local gpt=0 speed score
  [ "$name" = gpt ] && gpt=1
  for i in $(seq "$repeats"); do
    for mode in "${modes[@]}"; do
      local out="$work/$name-$mode-$i.json"
      if [ "$mode" = torch ]; then
        # the settings of this repeat's pdecay run
        "$python" bench/torch_ref.py --whole-run "$work/$name-auto-$i/config.toml" \
          --images "$data" --text "$text" >"$out"
      else
        local dir="$work/$name-$mode-$i"
        "$bin" train "$@" --sparse-training "$mode" --out "$dir" >/dev/null
        cp "$dir/summary.json" "$out"
        printf '%-14s %-4s run %d, ms per step at each evaluation: %s\n' "$name" "$mode" "$i" \
          "$(grep -o '"step_seconds":[0-9.e-]*' "$dir/metrics.jsonl" | cut -d: -f2 |
            awk '{printf "%.1f ", 1e3 * $1}')"
        [ "$mode" = auto ] && printf '%-14s auto, run %d: %s\n' "$name" "$i" \
          "$(tail -1 "$dir/metrics.jsonl" | grep -o '"sparse_layers":\[[^]]*\]')"
      fi
      if [ $gpt = 1 ]; then
        awk -v s="$(key seconds_per_iter "$out")" 'BEGIN {print 1 / s}' >>"$work/$name-$mode.speed"
        key final_val_loss "$out" >>"$work/$name-$mode.score"
      else
        key samples_per_second "$out" >>"$work/$name-$mode.speed"
        key final_test_accuracy "$out" | awk '{print 100 * $1}' >>"$work/$name-$mode.score"
      fi
      key sparsity "$out" >>"$work/$name-$mode.sparsity"
    done
  done
  local unit="samples/s" what="accuracy"
  [ $gpt = 1 ] && unit="iters/s" what="val loss"
  for mode in "${modes[@]}"; do
    printf '%-14s %-5s  %9.2f %s   %s %.4f   sparsity %.1f%%  (median of %d)\n' \
      "$name" "$mode" "$(median <"$work/$name-$mode.speed")" "$unit" "$what" \
      "$(median <"$work/$name-$mode.score")" \
      "$(median <"$work/$name-$mode.sparsity" | awk '{print 100 * $1}')" "$repeats"
  done
  ratio() { awk -v a="$(median <"$work/$name-$2.speed")" -v b="$(median <"$work/$name-$1.speed")" \
    'BEGIN {printf "%.3f", b / a}'; }
  printf 'sparse training speed-up: %s (%s)\n' "$(ratio auto off)" "$name"
  if [ "$python" != none ]; then
    local r; r=$(ratio auto torch)
    printf 'pdecay/PyTorch-pAdam whole-run ratio: %s (%s)\n' "$r" "$name"
    if [ -z "$slowest" ] || awk -v r="$r" -v s="${slowest%% *}" 'BEGIN {exit !(r < s)}'; then
      slowest="$r ($name)"
    fi
  fi
}

for model in "${models[@]}"; do
  case $model in
    mlp|mlp-lambda0.1|cnn|cnn-lambda0.1)
      lambda=1e-2 epochs=20
      case $model in mlp-lambda0.1) lambda=1e-1 ;; cnn) epochs=10 ;; cnn-lambda0.1) lambda=1e-1 epochs=4 ;; esac
      measure "$model" --model "${model%-lambda0.1}" --optim padam --p 0.8 --lambda "$lambda" \
        --epochs "$epochs" --data "$data" ;;
    gpt) measure gpt --config configs/shakespeare-cpu-padam.toml --data "$text" ;;
    *) echo "unknown model $model (mlp, mlp-lambda0.1, cnn, cnn-lambda0.1, gpt)" >&2; exit 2 ;;
  esac
done
[ -n "$slowest" ] && printf 'slowest pdecay/PyTorch-pAdam whole-run ratio: %s\n' "$slowest"
exit 0
