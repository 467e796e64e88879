#!/usr/bin/env bash
# The GPU check: pdecay on CUDA against PyTorch on the same GPU, and a short real run. For a
# machine with an NVIDIA GPU, its driver and PyTorch, but no network and no Rust: everything it
# needs sits next to it (scripts/gpu-pack.sh makes the folder on a CPU machine).
#
#   ./gpu-check.sh RESULTS_DIR
#
# Prints, and writes as RESULTS_DIR/gpu-check.json:
# - samples/s of the MLP, the CNN (one epoch of Fashion-MNIST each, batch 128) and the
#   paper-preset GPT (6 layers, 6 heads, width 384, block 256, batch 64, 60 iterations) with
#   AdamW and with pAdam: pWD's cost on the GPU (pAdam/AdamW);
# - the same models in the PyTorch installed here (torch_ref.py, same shapes): pdecay/PyTorch;
# - a real run: the CNN on Fashion-MNIST with pAdam (p 0.8, lambda 5e-2, 6 epochs), its test
#   accuracy and sparsity (the aim: past 80% sparse).
# Expected to take about 5 minutes on an H100 (not yet run on one). Each step has its own
# timeout, so a hung step cannot hold the machine, and the throughput JSON is written before the
# real run starts. pdecay's samples/s include its first steps, when CubeCL compiles and tunes its
# kernels; PyTorch gets two untimed warm-up steps. The comparison therefore leans against pdecay.
#
# GPU_CHECK_DRY_RUN=1 runs every step on the CPU at toy sizes (the CPU GPT preset, 5 iterations,
# the images' first 5,500) to test the script itself where no GPU is at hand; its numbers mean
# nothing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: gpu-check.sh RESULTS_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
bin=$here/pdecay
images=$here/data/fashion-mnist
text=$here/data/tinyshakespeare/input.txt
py=${PYTHON:-python3}
for f in "$bin" "$here/torch_ref.py" "$images/train-images-idx3-ubyte.gz" "$text"; do
  [ -e "$f" ] || { echo "error: $f is missing: make this folder with scripts/gpu-pack.sh" >&2; exit 1; }
done
if [ "${GPU_CHECK_DRY_RUN:-0}" = 1 ]; then
  device=cpu preset=cpu gpt_batch=12 gpt_iters=5 image_steps=43 real_epochs=1
  gpu="none (dry run on the CPU)"
else
  device=cuda preset=paper gpt_batch=64 gpt_iters=60 image_steps=469 real_epochs=6
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
  "$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "PyTorch sees no GPU")'
fi
# pdecay's image runs: one epoch of the full set, or of the embedded subset in a dry run
images_flag=(--data "$images")
[ "$image_steps" = 469 ] || images_flag=(--embedded)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
field() { grep -o "\"$1\": *[0-9.e+-]*" "$2" | head -1 | sed 's/.*: *//'; }

pdecay_sps() { # model optim -> samples/s
  local dir=$work/$1-$2
  case $1 in
    mlp|cnn) timeout 120 "$bin" train --device "$device" --model "$1" "${images_flag[@]}" --epochs 1 \
               --optim "$2" --lambda 1e-2 --out "$dir" >"$dir.log" 2>&1
             field samples_per_second "$dir/summary.json" ;;
    gpt) timeout 150 "$bin" train --device "$device" --model gpt --preset "$preset" --data "$text" \
           --iters "$gpt_iters" --eval-interval "$gpt_iters" --eval-batches 2 --optim "$2" --lambda 1e-2 \
           --out "$dir" >"$dir.log" 2>&1
         awk -v s="$(field seconds_per_iter "$dir/summary.json")" -v b="$gpt_batch" 'BEGIN {print b / s}' ;;
  esac
}

torch_sps() { # model optim -> samples/s
  local steps
  case $1 in mlp|cnn) steps=$image_steps ;; gpt) steps=$gpt_iters ;; esac
  timeout 120 "$py" "$here/torch_ref.py" --device "$device" --preset "$preset" --model "$1" --optim "$2" \
    --steps "$steps" --images "$images" --text "$text" >"$work/torch-$1-$2.json"
  field samples_per_second "$work/torch-$1-$2.json"
}

echo "GPU: $gpu; PyTorch $("$py" -c 'import torch; print(torch.__version__)')"
printf '%-4s %-6s %18s %18s %16s\n' model optim "pdecay samples/s" "PyTorch samples/s" "pdecay/PyTorch"
rows=()
for model in mlp cnn gpt; do
  for optim in adamw padam; do
    ours=$(pdecay_sps "$model" "$optim" || echo 0)
    theirs=$(torch_sps "$model" "$optim" || echo 0)
    ratio=$(awk -v a="$ours" -v b="$theirs" 'BEGIN {printf "%.3f", (b > 0) ? a / b : 0}')
    printf '%-4s %-6s %18.0f %18.0f %16s\n' "$model" "$optim" "$ours" "$theirs" "$ratio"
    rows+=("{\"model\": \"$model\", \"optim\": \"$optim\", \"pdecay_samples_per_second\": $ours, \"pytorch_samples_per_second\": $theirs, \"ratio\": $ratio}")
  done
done

write_json() { # real-run accuracy and sparsity (null until measured)
  local json_rows
  json_rows=$(IFS=,; echo "${rows[*]}")
  cat >"$out/gpu-check.json.tmp" <<JSON
{"gpu": "$gpu", "pytorch": "$("$py" -c 'import torch; print(torch.__version__)')",
 "throughput": [$json_rows],
 "real_run": {"model": "cnn", "optim": "padam", "p": 0.8, "lambda": 0.05, "epochs": $real_epochs,
              "final_test_accuracy": $1, "sparsity": $2}}
JSON
  mv "$out/gpu-check.json.tmp" "$out/gpu-check.json"
}
write_json null null

echo "real run: CNN, pAdam p 0.8 lambda 5e-2, $real_epochs epochs"
real=$out/cnn-padam
rm -rf "$real"
timeout 200 "$bin" train --device "$device" --model cnn "${images_flag[@]}" --epochs "$real_epochs" --optim padam \
  --p 0.8 --lambda 5e-2 --out "$real" >"$out/cnn-padam.log" 2>&1 || echo "the real run failed: see $out/cnn-padam.log"
accuracy=$(field final_test_accuracy "$real/summary.json" 2>/dev/null || true)
sparsity=$(field sparsity "$real/summary.json" 2>/dev/null || true)
echo "test accuracy ${accuracy:-?}, sparsity ${sparsity:-?}"
write_json "${accuracy:-null}" "${sparsity:-null}"
echo "wrote $out/gpu-check.json"
