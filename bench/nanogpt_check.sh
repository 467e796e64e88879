#!/usr/bin/env bash
# Checks that a GPT file from `pdecay export` is a nanoGPT model: trains two tiny GPTs with
# pdecay (2 layers, 2 heads, width 32, block 32, 100 pAdam steps): one without biases at lambda
# 0.05 (the more trained one: a wrong layout moves its logits most), one with biases at lambda
# 0.5 (sparse enough that the sparse file stores its matrices as CSR). Each is exported dense
# and sparse, every file is loaded into nanoGPT's GPT (bench/nanogpt.py) with
# load_state_dict(strict=False), and its logits at every position of a 32-character prompt are
# compared with pdecay's own (`pdecay logits` of the dense file). Exits non-zero when a file
# misses a tensor besides the tied lm_head.weight, has one nanoGPT lacks, or a logit differs by
# more than 1e-4. About 20 s on 2 cores after the build and, on the first run, the venv.
#
#   bench/nanogpt_check.sh [TEXT]      (default ../shared/data/tinyshakespeare/input.txt)
#
# TEXT is the training text; the prompt is its first 32 characters. The binary is
# target/release/pdecay, built here, or $PDECAY_BIN (then nothing is built). PyTorch comes from
# PyPI into bench/.venv, made on the first run (as bench/vs_pytorch.sh, plus safetensors).
set -euo pipefail
text=${1:+$(realpath "$1")}  # before the cd below: TEXT is relative to the caller's folder
cd "$(dirname "$0")/.."
text=${text:-${PDECAY_TEXT:-../shared/data/tinyshakespeare/input.txt}}
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

prompt=$("$py" -c 'import sys; print(open(sys.argv[1], encoding="utf-8").read(32), end="")' "$text")
for run_flags in "0.05 false" "0.5 true"; do
  read -r lambda bias <<<"$run_flags"
  run=$work/lambda-$lambda-bias-$bias
  "$bin" train --model gpt --data "$text" --layers 2 --heads 2 --width 32 --block-size 32 \
    --iters 100 --eval-interval 50 --optim padam --lambda "$lambda" --bias="$bias" --out "$run" >/dev/null
  for format in dense sparse; do
    "$bin" export "$run" --format "$format" --out "$run.$format.safetensors" >/dev/null
  done
  "$bin" logits "$run.dense.safetensors" --text="$prompt" --out "$run.pdecay.json" >/dev/null
  for format in dense sparse; do
    "$py" bench/nanogpt_check.py --reference "$run.pdecay.json" -- "$run.$format.safetensors" "$prompt"
  done
done
echo "nanoGPT check passed: pdecay's dense and sparse GPT files, without and with biases, give pdecay's logits"
