#!/usr/bin/env bash
# pdecay against PyTorch on CPU: training samples/s of the MLP, the CNN, the CPU-preset GPT and
# (asked for by name) ResNet-20 on Fashion-MNIST,
# with AdamW and with pAdam (pWD on), same shapes, batch sizes and threads in both programs.
# The two programs alternate (pdecay, PyTorch, pdecay, ...) so drift in machine load hits both
# alike; it prints the median of each, their ratio, and last `slowest pdecay/PyTorch ratio: R
# (MODEL)`. A benchmark, not a test: it asserts nothing. About 15 minutes on 2 cores.
#
#   bench/vs_pytorch.sh [REPEATS [MODEL...]]      (default 3 repeats of mlp cnn gpt)
#
# Data: $PDECAY_DATA (Fashion-MNIST IDX folder; else ../shared/data/fashion-mnist) and
# $PDECAY_TEXT (else ../shared/data/tinyshakespeare/input.txt). PyTorch comes from PyPI into
# bench/.venv, made on the first run (about 3 GB: the PyPI wheel carries CUDA libraries, unused
# here). The PyTorch side is bench/torch_ref.py; see its header for the models.
#
# Steps per run: MLP one epoch of the 60,000 images (469 steps of 128), CNN 86 steps of 128
# (two epochs of the embedded subset in pdecay), GPT 100 iterations of 12 x 64 characters,
# ResNet-20 43 steps of 128 (one epoch of the embedded subset; 1x28x28 images).
# pdecay's figures are its own `samples_per_second` / `seconds_per_iter` (the training loop
# only), PyTorch's time the same loop in bench/torch_ref.py.
set -euo pipefail
cd "$(dirname "$0")/.."
repeats=${1:-3}
shift $(( $# > 0 ? 1 : 0 ))
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(mlp cnn gpt)
images=${PDECAY_DATA:-../shared/data/fashion-mnist}
text=${PDECAY_TEXT:-../shared/data/tinyshakespeare/input.txt}
threads=$(nproc)
cargo build --release --quiet
bin=target/release/pdecay
venv=bench/.venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --progress-bar off torch==2.15.0 numpy==2.4.6
fi
py="$venv/bin/python"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

source bench/common.sh

pdecay_run() { # model optim out -> samples/s
  local model=$1 optim=$2 out=$3
  case $model in
    mlp) "$bin" train --model mlp --data "$images" --epochs 1 --optim "$optim" --lambda 1e-2 \
           --threads "$threads" --out "$out" >/dev/null
         key samples_per_second "$out/summary.json" ;;
    cnn) "$bin" train --model cnn --embedded --epochs 2 --optim "$optim" --lambda 1e-2 \
           --threads "$threads" --out "$out" >/dev/null
         key samples_per_second "$out/summary.json" ;;
    resnet20) "$bin" train --model resnet20 --embedded --epochs 1 --optim "$optim" --lambda 1e-2 \
           --threads "$threads" --out "$out" >/dev/null
         key samples_per_second "$out/summary.json" ;;
    gpt) "$bin" train --model gpt --data "$text" --iters 100 --eval-interval 100 --eval-batches 1 \
           --optim "$optim" --lambda 1e-2 --threads "$threads" --out "$out" >/dev/null
         awk -v s="$(key seconds_per_iter "$out/summary.json")" 'BEGIN {print 12 / s}' ;;
  esac
}

torch_run() { # model optim -> samples/s
  local steps
  case $1 in mlp) steps=469 ;; cnn) steps=86 ;; resnet20) steps=43 ;; gpt) steps=100 ;; esac
  "$py" bench/torch_ref.py --model "$1" --optim "$2" --steps "$steps" --threads "$threads" \
    --images "$images" --text "$text" >"$work/torch.json"
  key samples_per_second "$work/torch.json"
}

echo "threads: $threads; PyTorch $("$py" -c 'import torch; print(torch.__version__)'); $repeats repeats"
printf '%-8s %-6s %16s %16s %9s\n' model optim "pdecay samples/s" "PyTorch samples/s" "ratio"
slowest=""
for model in "${models[@]}"; do
  for optim in adamw padam; do
    for i in $(seq "$repeats"); do
      pdecay_run "$model" "$optim" "$work/$model-$optim-$i" >>"$work/$model-$optim.pdecay"
      torch_run "$model" "$optim" >>"$work/$model-$optim.torch"
    done
    ours=$(median <"$work/$model-$optim.pdecay")
    theirs=$(median <"$work/$model-$optim.torch")
    ratio=$(awk -v a="$ours" -v b="$theirs" 'BEGIN {printf "%.3f", a / b}')
    printf '%-8s %-6s %16.0f %16.0f %9s\n' "$model" "$optim" "$ours" "$theirs" "$ratio"
    echo "$ratio $model ($optim)" >>"$work/ratios"
  done
done
read -r ratio name < <(sort -g "$work/ratios" | head -1)
echo "slowest pdecay/PyTorch ratio: $ratio ($name)"
