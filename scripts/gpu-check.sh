#!/usr/bin/env bash
# The GPU check: pdecay on CUDA against PyTorch on the same GPU, and short real runs. For a
# machine with an NVIDIA GPU, its driver and PyTorch, but no network, no Rust and no CUDA
# toolkit: everything it needs sits next to it (scripts/gpu-pack.sh makes the folder on a CPU
# machine: pdecay.xz, cuda/nvvm/libdevice, data/*.xz).
#
#   ./gpu-check.sh RESULTS_DIR [CIFAR_DIR]
#
# Prints, and writes as RESULTS_DIR/gpu-check.json:
# - the binary's shared libraries (ldd) and a first one-epoch MLP run, before anything long;
# - samples/s of the MLP, the CNN (one epoch of the packed Fashion-MNIST images each, batch
#   128), ResNet-18 (one epoch of 10,000 CIFAR-shaped images, batch 128: CIFAR_DIR's first
#   10,000, else synthetic ones) and the paper-preset GPT (6 layers, 6 heads, width 384, block
#   256, batch 64, 60 iterations) with AdamW and with pAdam: pWD's cost on the GPU (pAdam/AdamW);
# - the same models in the PyTorch installed here (torch_ref.py, same shapes): pdecay/PyTorch;
# - real runs: the CNN on Fashion-MNIST with pAdam (p 0.8, lambda 5e-2, 6 epochs), its test
#   accuracy and sparsity (the aim: past 80% sparse); with CIFAR_DIR, ResNet-18 with
#   configs/cifar-paper-padam.toml cut to 3 epochs.
# Expected to take about 6 minutes on an H100/H200 (not yet run on one). Each step has its own
# timeout, so a hung step cannot hold the machine, and the JSON is written after each part.
# pdecay's samples/s include its first steps, when CubeCL compiles and tunes its kernels;
# PyTorch gets two untimed warm-up steps. The comparison therefore leans against pdecay.
#
# GPU_CHECK_DRY_RUN=1 runs every step on the CPU at toy sizes (the CPU GPT preset, 5 iterations,
# the embedded images, 512 CIFAR-shaped images) to test the script itself where no GPU is at
# hand; its numbers mean nothing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: gpu-check.sh RESULTS_DIR [CIFAR_DIR]}
cifar=${2:-}
mkdir -p "$out"
out=$(cd "$out" && pwd)
py=${PYTHON:-python3}
for f in "$here/pdecay.xz" "$here/torch_ref.py" "$here/pack.env" "$here/data/fashion-mnist/train-images-idx3-ubyte.xz" \
  "$here/data/tinyshakespeare/input.txt.xz" "$here/cuda/nvvm/libdevice/libdevice.10.bc"; do
  [ -e "$f" ] || { echo "error: $f is missing: make this folder with scripts/gpu-pack.sh" >&2; exit 1; }
done
if [ -n "$cifar" ] && [ ! -e "$cifar/data_batch_1.bin" ]; then
  echo "error: $cifar holds no data_batch_1.bin: give the cifar-10-batches-bin folder" >&2
  exit 1
fi
# shellcheck source=/dev/null
. "$here/pack.env"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# unpack: the binary and the data are xz'd to fit the transfer; python's lzma needs no xz tool
"$py" - "$here" "$work" <<'PY'
import lzma, os, sys
here, work = sys.argv[1], sys.argv[2]
for source, target in [("pdecay.xz", "pdecay"),
                       ("data/tinyshakespeare/input.txt.xz", "data/tinyshakespeare/input.txt")] + [
        (f"data/fashion-mnist/{s}-{k}.xz", f"data/fashion-mnist/{s}-{k}")
        for s in ("train", "t10k") for k in ("images-idx3-ubyte", "labels-idx1-ubyte")]:
    os.makedirs(os.path.dirname(os.path.join(work, target)), exist_ok=True)
    with lzma.open(os.path.join(here, source)) as f, open(os.path.join(work, target), "wb") as o:
        o.write(f.read())
os.chmod(os.path.join(work, "pdecay"), 0o755)
PY
bin=$work/pdecay
images=$work/data/fashion-mnist
text=$work/data/tinyshakespeare/input.txt
# CubeCL's NVPTX kernels link libdevice's exp/log/pow/erf/tanh; a toolkit already here wins
[ -e "${CUDA_PATH:-/nonexistent}/nvvm/libdevice/libdevice.10.bc" ] || export CUDA_PATH=$here/cuda

# ResNet-18's images: CIFAR_DIR's first 10,000 as one batch file, or synthetic CIFAR-shaped ones
resnet_images=10000
[ "${GPU_CHECK_DRY_RUN:-0}" = 1 ] && resnet_images=512
mkdir -p "$work/cifar"
"$py" - "$work/cifar" "$resnet_images" "$cifar" <<'PY'
import os, random, sys
out, n, source = sys.argv[1], int(sys.argv[2]), sys.argv[3]
record = 3073
if source:
    data = open(os.path.join(source, "data_batch_1.bin"), "rb").read()[: n * record]
    test = open(os.path.join(source, "test_batch.bin"), "rb").read()[: 1000 * record]
else:
    rng = random.Random(0)
    def synthetic(count):
        body = bytearray(rng.randbytes(count * record))
        for i in range(count):
            body[i * record] = i % 10
        return bytes(body)
    data, test = synthetic(n), synthetic(1000)
# the reader wants all five training batches, none empty: each holds one fifth of the images
fifth = (len(data) // record) // 5 * record
for i in range(5):
    open(os.path.join(out, f"data_batch_{i + 1}.bin"), "wb").write(data[i * fifth:(i + 1) * fifth])
open(os.path.join(out, "test_batch.bin"), "wb").write(test)
PY

if [ "${GPU_CHECK_DRY_RUN:-0}" = 1 ]; then
  device=cpu preset=cpu gpt_batch=12 gpt_iters=5 image_steps=43 real_epochs=1 cifar_epochs=1
  gpu="none (dry run on the CPU)"
  images_flag=(--embedded)
else
  device=cuda preset=paper gpt_batch=64 gpt_iters=60 real_epochs=6 cifar_epochs=3
  image_steps=$(((train_images + 127) / 128))
  gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1)
  "$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "PyTorch sees no GPU")'
  images_flag=(--data "$images")
fi
resnet_steps=$(((resnet_images + 127) / 128))
field() { grep -o "\"$1\": *[0-9.e+-]*" "$2" | head -1 | sed 's/.*: *//'; }
torch_version=$("$py" -c 'import torch; print(torch.__version__)')

echo "GPU: $gpu; PyTorch $torch_version"
echo "pdecay's shared libraries (libcuda is opened at run time):"
ldd "$bin" | sed 's/^/  /'
echo "first run: the MLP, one epoch on $device"
timeout 120 "$bin" train --device "$device" --model mlp "${images_flag[@]}" --epochs 1 --out "$work/first" \
  >"$out/first-run.log" 2>&1 || { echo "error: the first run failed; see $out/first-run.log:" >&2; tail -20 "$out/first-run.log" >&2; exit 1; }
echo "  ok: $(field samples_per_second "$work/first/summary.json") samples/s"

pdecay_sps() { # model optim -> samples/s
  local dir=$work/$1-$2
  case $1 in
    mlp|cnn) timeout 120 "$bin" train --device "$device" --model "$1" "${images_flag[@]}" --epochs 1 \
               --optim "$2" --lambda 1e-2 --out "$dir" >"$dir.log" 2>&1
             field samples_per_second "$dir/summary.json" ;;
    resnet18) timeout 200 "$bin" train --device "$device" --model resnet18 --data "$work/cifar" --epochs 1 \
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
  case $1 in mlp|cnn) steps=$image_steps ;; resnet18) steps=$resnet_steps ;; gpt) steps=$gpt_iters ;; esac
  timeout 200 "$py" "$here/torch_ref.py" --device "$device" --preset "$preset" --model "$1" --optim "$2" \
    --steps "$steps" --images "$images" --cifar "$work/cifar" --text "$text" >"$work/torch-$1-$2.json"
  field samples_per_second "$work/torch-$1-$2.json"
}

rows=() real_rows=()
write_json() {
  local json_rows json_real
  json_rows=$(IFS=,; echo "${rows[*]}")
  json_real=$(IFS=,; echo "${real_rows[*]}")
  cat >"$out/gpu-check.json.tmp" <<JSON
{"gpu": "$gpu", "pytorch": "$torch_version", "resnet18_images": "$([ -n "$cifar" ] && echo cifar-10 || echo synthetic)",
 "throughput": [$json_rows],
 "real_runs": [$json_real]}
JSON
  mv "$out/gpu-check.json.tmp" "$out/gpu-check.json"
}

printf '%-8s %-6s %18s %18s %16s\n' model optim "pdecay samples/s" "PyTorch samples/s" "pdecay/PyTorch"
for model in mlp cnn resnet18 gpt; do
  for optim in adamw padam; do
    ours=$(pdecay_sps "$model" "$optim" || echo 0)
    theirs=$(torch_sps "$model" "$optim" || echo 0)
    ratio=$(awk -v a="${ours:-0}" -v b="${theirs:-0}" 'BEGIN {printf "%.3f", (b > 0) ? a / b : 0}')
    printf '%-8s %-6s %18.0f %18.0f %16s\n' "$model" "$optim" "${ours:-0}" "${theirs:-0}" "$ratio"
    rows+=("{\"model\": \"$model\", \"optim\": \"$optim\", \"pdecay_samples_per_second\": ${ours:-0}, \"pytorch_samples_per_second\": ${theirs:-0}, \"ratio\": $ratio}")
  done
  write_json
done

real_run() { # name, then pdecay's train flags -> a row of real_rows
  local name=$1 dir=$out/$1
  shift
  rm -rf "$dir"
  timeout 280 "$bin" train --device "$device" "$@" --out "$dir" >"$dir.log" 2>&1 || echo "the real run $name failed: see $dir.log"
  local accuracy sparsity
  accuracy=$(field final_test_accuracy "$dir/summary.json" 2>/dev/null || true)
  sparsity=$(field sparsity "$dir/summary.json" 2>/dev/null || true)
  echo "$name: test accuracy ${accuracy:-?}, sparsity ${sparsity:-?}"
  real_rows+=("{\"run\": \"$name\", \"flags\": \"$*\", \"final_test_accuracy\": ${accuracy:-null}, \"sparsity\": ${sparsity:-null}}")
  write_json
}

echo "real run: CNN, pAdam p 0.8 lambda 5e-2, $real_epochs epochs"
real_run cnn-padam --model cnn "${images_flag[@]}" --epochs "$real_epochs" --optim padam --p 0.8 --lambda 5e-2
if [ -n "$cifar" ]; then
  echo "real run: ResNet-18 on CIFAR-10, configs/cifar-paper-padam.toml cut to $cifar_epochs epochs"
  real_run resnet18-padam --config "$here/configs/cifar-paper-padam.toml" --data "$cifar" --epochs "$cifar_epochs" --warmup-epochs 1
fi
echo "wrote $out/gpu-check.json"
