#!/usr/bin/env bash
# Packs what scripts/gpu-check.sh needs into one folder for a GPU machine that has an NVIDIA
# driver and PyTorch but no network, no Rust and no CUDA toolkit: the CUDA build of pdecay
# (stripped, xz'd), libdevice, the check script, the PyTorch reference, the two CIFAR-10 configs
# and the data. Run it on a CPU machine with Rust and the registries (crates.io, PyPI); it needs
# no GPU. Nothing is fetched from github.com: the LLVM comes from PyPI (scripts/install-llvm.sh).
#
#   scripts/gpu-pack.sh [DIR]     (default gpu-check/)
#
# Environment: PDECAY_DATA (Fashion-MNIST folder) and PDECAY_TEXT (Tiny Shakespeare) [default:
# ../shared/data]; CUDARC_CUDA_VERSION, the CUDA API the binary binds to [default: 13000, for
# drivers >= 580; 12080 for a 12.8 driver]; PACK_TRAIN_IMAGES, how many Fashion-MNIST training
# images go in [default: 40000 of 60000, so the folder fits]; PACK_LIMIT_MIB [default: 64], the
# most a GPU machine receives, this repository's own files included.
#
# Then copy DIR to the GPU machine (with the repository, or alone) and run
# `DIR/gpu-check.sh RESULTS_DIR [CIFAR_DIR]` there.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-gpu-check}
images=${PDECAY_DATA:-../shared/data/fashion-mnist}
text=${PDECAY_TEXT:-../shared/data/tinyshakespeare/input.txt}
train_images=${PACK_TRAIN_IMAGES:-40000}
limit=${PACK_LIMIT_MIB:-64}
py=${PYTHON:-python3}
for f in "$images/train-images-idx3-ubyte.gz" "$text"; do
  [ -e "$f" ] || { echo "error: $f is missing: set PDECAY_DATA (Fashion-MNIST folder) and PDECAY_TEXT" >&2; exit 1; }
done
if [ -e "$dir" ] && [ ! -e "$dir/.gpu-pack" ]; then
  echo "error: $dir exists and is not a folder this script made; give a new folder" >&2
  exit 1
fi

scripts/install-llvm.sh
# its own target folder: switching the feature in target/ would rebuild the CPU build too
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
target=${CUDA_TARGET_DIR:-target/cuda}
CARGO_TARGET_DIR=$target cargo build --release -p pdecay-cli --features cuda

# libdevice.10.bc: the math functions (exp, log, pow, erf, tanh) CubeCL's NVPTX kernels link,
# found at run time through CUDA_PATH/nvvm/libdevice/; PyPI ships it inside nvcc's wheel
nvcc=nvidia-cuda-nvcc-cu12==12.9.86
nvcc_hash=5d6a0d32fdc7ea39917c20065614ae93add6f577d840233237ff08e9a38f58f0
work=$(mktemp -d "${TMPDIR:-/tmp}/pdecay-pack.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "$nvcc --hash=sha256:$nvcc_hash" >"$work/requirements.txt"
"$py" -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
  --platform manylinux_2_12_x86_64 -r "$work/requirements.txt" -d "$work/wheels"

rm -rf "$dir"
mkdir -p "$dir/data/fashion-mnist" "$dir/data/tinyshakespeare" "$dir/cuda/nvvm/libdevice" "$dir/configs"
touch "$dir/.gpu-pack"
"$py" - "$work"/wheels/*.whl "$dir/cuda/nvvm/libdevice/libdevice.10.bc" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("nvvm/libdevice/libdevice.10.bc"))
    open(out, "wb").write(z.read(name))
PY
# xz's x86 filter makes machine code compress better (measured: 143 MB -> 30 MB)
strip -o "$work/pdecay" "$target/release/pdecay"
xz -9e --x86 --lzma2=preset=9e -T1 -c "$work/pdecay" >"$dir/pdecay.xz"
cp scripts/gpu-check.sh bench/torch_ref.py "$dir/"
cp configs/cifar-paper-adamw.toml configs/cifar-paper-padam.toml "$dir/configs/"
# Fashion-MNIST: the first PACK_TRAIN_IMAGES training images and every test image, as raw IDX
# files xz'd (xz compresses them 15% better than their gzip; gpu-check.sh unpacks them)
"$py" - "$images" "$dir/data/fashion-mnist" "$train_images" <<'PY'
import gzip, lzma, os, struct, sys
source, out, keep = sys.argv[1], sys.argv[2], int(sys.argv[3])
for split, n in (("train", keep), ("t10k", None)):
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        data = gzip.open(os.path.join(source, f"{split}-{kind}.gz")).read()
        ndim = data[3]
        dims = list(struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim]))
        if n is not None:
            if n > dims[0]:
                sys.exit(f"PACK_TRAIN_IMAGES={n}, but {split}-{kind} holds {dims[0]}")
            item = 1
            for d in dims[1:]:
                item *= d
            body = data[4 + 4 * ndim:4 + 4 * ndim + n * item]
            dims[0] = n
            data = data[:4] + struct.pack(">" + "I" * ndim, *dims) + body
        with lzma.open(os.path.join(out, f"{split}-{kind}.xz"), "wb", preset=9 | lzma.PRESET_EXTREME) as f:
            f.write(data)
PY
xz -9e -c "$text" >"$dir/data/tinyshakespeare/input.txt.xz"
echo "train_images=$train_images" >"$dir/pack.env"

# what a GPU machine receives: this folder and the repository's own files
bytes() { du -cb "$@" 2>/dev/null | tail -1 | cut -f1; }
packed=$(bytes "$dir")
own=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }
echo "packed $dir: $(mib "$packed") MiB (pdecay.xz $(mib "$(bytes "$dir/pdecay.xz")"), data $(mib "$(bytes "$dir/data")"), libdevice $(mib "$(bytes "$dir/cuda")")); with the repository's files $(mib $((packed + own))) MiB of $limit"
if [ $((packed + own)) -gt $((limit * 1048576)) ]; then
  echo "error: over the $limit MiB a GPU machine takes; lower PACK_TRAIN_IMAGES (each 1,000 images is about 0.36 MiB)" >&2
  exit 1
fi
