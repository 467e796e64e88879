#!/usr/bin/env bash
# Where pdecay's training time goes: a sampled CPU profile (perf record, 499 Hz, self time per
# function) of one pAdam training run per model, printed as the top functions and as totals by
# kind of work. A benchmark aid, not a test.
#
#   bench/profile.sh [mlp|cnn|gpt ...]     (default: all three; needs perf, e.g. Debian's linux-perf)
#
# Runs: MLP one epoch of Fashion-MNIST ($PDECAY_DATA, else ../shared/data/fashion-mnist), CNN
# one epoch of the embedded subset, GPT 100 iterations of the CPU preset ($PDECAY_TEXT, else
# ../shared/data/tinyshakespeare/input.txt). The kinds are matched on function names
# (see `kind` below); "kernel" is time in the Linux kernel, mostly page faults of fresh
# allocations.
set -euo pipefail
cd "$(dirname "$0")/.."
images=${PDECAY_DATA:-../shared/data/fashion-mnist}
text=${PDECAY_TEXT:-../shared/data/tinyshakespeare/input.txt}
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(mlp cnn gpt)
cargo build --release --quiet
bin=$PWD/target/release/pdecay
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# kinds of work, matched on the function name in this order (the first match wins)
kinds='
matmul (gemm)=gemm|matmul
conv backward (input grad)=conv_transpose
conv forward + weight grad=conv[0-9]d|im2col|col2im|unfold
pooling=pool
softmax / attention=softmax|attention
layer norm=layer_norm|var_mean
gather / scatter=scatter|gather|select|index
copies (layout changes)=copy_2d|copy_strided|permute|transpose|memmove|memcpy
allocation, zeroing=memset|malloc|free|realloc|alloc
optimizer (Adam + pWD)=pdecay::kernel|adam|pwd|optim
elementwise=binary_op|unary_op|zip|scalar|activation|relu|gelu|exp
reductions=reduce|sum|mean|argmax|max
autodiff bookkeeping=autodiff|Backward|graph|Node
'

for model in "${models[@]}"; do
  case $model in
    mlp) args=(--model mlp --data "$images" --epochs 1) ;;
    cnn) args=(--model cnn --embedded --epochs 1) ;;
    gpt) args=(--model gpt --data "$text" --iters 100 --eval-interval 100 --eval-batches 1) ;;
    *) echo "unknown model $model: give mlp, cnn or gpt" >&2; exit 1 ;;
  esac
  perf record -q -F 499 -o "$work/$model.data" -- \
    "$bin" train "${args[@]}" --optim padam --lambda 1e-2 --out "$work/$model-run" >/dev/null
  perf report -i "$work/$model.data" --no-children --sort symbol --stdio 2>/dev/null \
    | awk '/^ +[0-9.]+%/ {p=$1; sub("%","",p); $1=""; print p "\t" $0}' >"$work/$model.tsv"
  echo "== $model: top functions (self time)"
  head -12 "$work/$model.tsv" | awk -F'\t' '{printf "  %6.2f%%  %s\n", $1, substr($2, 1, 90)}'
  echo "== $model: by kind"
  KINDS="$kinds" python3 - "$work/$model.tsv" <<'PY'
import os, re, sys
kinds = [line.split("=", 1) for line in os.environ["KINDS"].strip().splitlines()]
totals = {}
for line in open(sys.argv[1]):
    share, name = line.rstrip("\n").split("\t", 1)
    if "[k]" in name:
        kind = "Linux kernel (page faults of fresh allocations, scheduling)"
    else:
        kind = next((k for k, pattern in kinds if re.search(pattern, name)), "other")
    totals[kind] = totals.get(kind, 0.0) + float(share)
for kind, share in sorted(totals.items(), key=lambda kv: -kv[1]):
    print(f"  {share:6.2f}%  {kind}")
PY
done
