#!/usr/bin/env bash
# Packs what scripts/gpu-check.sh needs into one folder for a GPU machine that has CUDA and
# PyTorch but no network and no Rust: the CUDA build of pdecay (stripped), the check script,
# the PyTorch reference and the data. Run it on a CPU machine with Rust and network (the CUDA
# build downloads a prebuilt LLVM from github.com once; it needs no GPU and no CUDA toolkit).
#
#   scripts/gpu-pack.sh [DIR]     (default gpu-check/; data: $PDECAY_DATA, $PDECAY_TEXT, else ../shared/data)
#
# Then copy DIR to the GPU machine and run `DIR/gpu-check.sh RESULTS_DIR` there.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-gpu-check}
images=${PDECAY_DATA:-../shared/data/fashion-mnist}
text=${PDECAY_TEXT:-../shared/data/tinyshakespeare/input.txt}
# the driver of the GPU machine decides the CUDA API version; 12.x drivers lack some 13.x
# symbols, so CUDARC_CUDA_VERSION (e.g. 12080) can pin the bindings
cargo build --release -p pdecay-cli --features cuda
if [ -e "$dir" ] && [ ! -e "$dir/.gpu-pack" ]; then
  echo "error: $dir exists and is not a folder this script made; give a new folder" >&2
  exit 1
fi
rm -rf "$dir"
mkdir -p "$dir/data/fashion-mnist" "$dir/data/tinyshakespeare"
touch "$dir/.gpu-pack"
strip -o "$dir/pdecay" target/release/pdecay
cp scripts/gpu-check.sh bench/torch_ref.py "$dir/"
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  cp "$images/$f.gz" "$dir/data/fashion-mnist/"
done
cp "$text" "$dir/data/tinyshakespeare/input.txt"
size=$(du -sm "$dir" | cut -f1)
echo "packed $dir: ${size} MiB"
if [ "$size" -gt 64 ]; then
  echo "error: $dir is ${size} MiB, over the 64 MiB a GPU machine takes; drop the test images or ship the binary compressed (xz)" >&2
  exit 1
fi
