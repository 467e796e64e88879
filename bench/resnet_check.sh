#!/usr/bin/env bash
# Checks that a ResNet file from `pdecay export` is the authors' PyTorch ResNet: trains a narrow
# ResNet-20 (stem width 4, pAdam p 0.8 lambda 1, two epochs: sparse enough that the sparse file
# stores its convolutions as CSR) and a narrow ResNet-18 (width 2, one epoch) on the embedded
# Fashion-MNIST subset, exports each dense and sparse, loads every file into the authors' ResNet
# (bench/resnet_check.py) with load_state_dict(strict=False), and compares its logits on 16 test
# images with pdecay's (`pdecay logits` of the dense file: burn's model, BatchNorm on its
# running statistics). Exits non-zero when a file lacks a tensor (besides num_batches_tracked),
# has one the ResNet lacks, or a logit differs by more than 1e-4. About a minute on 2 cores
# after the build and, on the first run, the venv.
#
#   bench/resnet_check.sh
#
# The binary is target/release/pdecay, built here, or $PDECAY_BIN (then nothing is built).
# PyTorch comes from PyPI into bench/.venv, made on the first run (as bench/nanogpt_check.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PDECAY_BIN:-}" ]; then
  bin=$PDECAY_BIN
else
  cargo build --release --quiet
  bin=target/release/pdecay
fi
venv=bench/.venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import torch, safetensors' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --progress-bar off torch==2.15.0 numpy==2.4.6 safetensors==0.8.0
fi
py="$venv/bin/python"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for run_flags in "resnet20 4 2" "resnet18 2 1"; do
  read -r model width epochs <<<"$run_flags"
  run=$work/$model
  "$bin" train --model "$model" --resnet-width "$width" --embedded --epochs "$epochs" \
    --optim padam --p 0.8 --lambda 1 --out "$run" >/dev/null
  for format in dense sparse; do
    "$bin" export "$run" --format "$format" --out "$run.$format.safetensors" >/dev/null
  done
  "$bin" logits "$run.dense.safetensors" --embedded --images 16 --out "$run.pdecay.json" >/dev/null
  for format in dense sparse; do
    "$py" bench/resnet_check.py --reference "$run.pdecay.json" "$run.$format.safetensors"
  done
done
echo "ResNet check passed: pdecay's dense and sparse ResNet-20 and ResNet-18 files load into the authors' ResNet and give pdecay's logits"
