#!/usr/bin/env bash
# Installs the LLVM that the CUDA build (`--features cuda`) links, from PyPI instead of
# github.com, so the build needs only the registries.
#
#   scripts/install-llvm.sh        (idempotent: a complete install is checked and kept)
#
# Why: CubeCL compiles its kernels with LLVM, and burn 0.22's tracel-llvm-bundler downloads a
# prebuilt LLVM from github.com in its build script. It skips the download when its bundle folder
# already holds its sentinel file. PyPI ships the same LLVM major (23) as relocatable static
# libraries with headers and an `llvm-config`: `mlc-llvm-static` (host targets) plus
# `mlc-llvm-static-extra-targets` (adds NVPTX, the one CUDA needs). Unpacked into the bundler's
# folder, `cargo build --release -p pdecay-cli --features cuda` links with no patched crate and
# Cargo.lock unchanged.
#
# Needs python3 and pip (the wheels' `llvm-config` is a Python script, also at build time).
# The wheels are pinned by version and sha256.
set -euo pipefail
cd "$(dirname "$0")/.."

# the bundler's folder: dirs::data_local_dir()/tracel/tracel-llvm-<bundler version>
bundler=$(awk '/^name = "tracel-llvm-bundler"$/ {getline; gsub(/version = |"/, ""); print; exit}' Cargo.lock)
[ -n "$bundler" ] || { echo "error: Cargo.lock has no tracel-llvm-bundler; is this pdecay's root?" >&2; exit 1; }
dest=${XDG_DATA_HOME:-$HOME/.local/share}/tracel/tracel-llvm-$bundler
sentinel=$dest/.tracel-llvm-installed
major=${bundler%%.*}

version=23.1.1.post0
wheels=(
  "mlc-llvm-static==$version --hash=sha256:dcfec888abfaa418be77d41af585805f31463584cf9c90582992c00f392c1ac5"
  "mlc-llvm-static-extra-targets==$version --hash=sha256:c36e834d9a4e9cf9759f27fece65711ece7a2fc2b5a96dbb15d66f5e9e787929"
)

check() { # prefix -> 0 when it is an LLVM of the bundler's major with NVPTX
  local got targets
  got=$("$1/bin/llvm-config" --version 2>/dev/null) || return 1
  targets=$("$1/bin/llvm-config" --targets-built 2>/dev/null) || return 1
  [ "${got%%.*}" = "$major" ] || { echo "LLVM $got in $1, the bundler wants $major.x" >&2; return 1; }
  case " $targets " in *" NVPTX "*) ;; *) echo "LLVM in $1 lacks NVPTX (targets: $targets)" >&2; return 1 ;; esac
}

if [ -e "$sentinel" ]; then
  if check "$dest"; then
    echo "LLVM $("$dest/bin/llvm-config" --version) with NVPTX already installed in $dest"
    exit 0
  fi
  echo "error: $dest is marked installed but is not a usable LLVM (above); remove that folder and run this again" >&2
  exit 1
fi
if [ -e "$dest" ]; then
  echo "error: $dest exists without the bundler's sentinel (an interrupted install?); remove it and run this again" >&2
  exit 1
fi

py=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/pdecay-llvm.XXXXXX")
trap 'rm -rf "$work"' EXIT
printf '%s\n' "${wheels[@]}" >"$work/requirements.txt"
"$py" -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
  --platform manylinux_2_28_x86_64 -r "$work/requirements.txt" -d "$work/wheels"
for whl in "$work"/wheels/mlc_llvm_static-*.whl "$work"/wheels/mlc_llvm_static_extra_targets-*.whl; do
  "$py" -m zipfile -e "$whl" "$work/unpacked"
done
prefix=$work/unpacked/mlc_llvm_static/static
chmod +x "$prefix/bin/llvm-config"
check "$prefix" || { echo "error: the wheels did not give a usable LLVM (above)" >&2; exit 1; }

# same filesystem as the destination, so the final step is one rename: no half install is
# ever visible under the bundler's name
mkdir -p "$(dirname "$dest")"
staging=$(mktemp -d "$(dirname "$dest")/.pdecay-llvm.XXXXXX")
trap 'rm -rf "$work" "$staging"' EXIT
cp -a "$prefix/." "$staging/"
touch "$staging/.tracel-llvm-installed"
mv -T "$staging" "$dest"
check "$dest"
echo "installed LLVM $("$dest/bin/llvm-config" --version) with NVPTX in $dest ($(du -sm "$dest" | cut -f1) MiB)"
echo "now: cargo build --release -p pdecay-cli --features cuda"
