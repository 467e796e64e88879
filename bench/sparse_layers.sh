#!/usr/bin/env bash
# One layer, forward + backward, at 0-99% zeros: pdecay's sparse-training ops against the dense
# ones a layer trains with otherwise (pdecay_burn::dense_linear, burn's product without its
# output copies; pdecay_burn::dense_conv2d for convolutions)
# (cargo bench -p pdecay-burn --bench sparse_linear / sparse_conv), beside
# SparseProp's SparseLinear / SparseConv2d against torch.nn.Linear / Conv2d on the same shapes,
# weights and threads (bench/sparseprop_layers.py). The two run in turn for ROUNDS rounds; each
# alternates its dense and sparse calls call by call. Prints, per layer and sparsity, the
# medians over rounds of each side's dense and sparse ms and sparse / dense, and
#   speed-up vs SparseProp's: (pdecay dense / sparse) / (SparseProp's torch dense / sparse)
# (R > 1: pdecay's sparse op gains more over its dense one than SparseProp's over PyTorch's).
# A benchmark, not a test.
#
#   bench/sparse_layers.sh [ROUNDS [ONLY]]   (default 3; ONLY keeps layers whose name has it)
#
# SparseProp needs bench/.venv with torch (bench/README.md) and sparseprop 0.1.14, which this
# script installs on first use: its setup.py runs `python3 -m pybind11`, so pybind11 goes in
# first and the build sees the venv's python (no build isolation). PYTHON=none leaves it out.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
only=${2:-}
python=${PYTHON:-bench/.venv/bin/python}
if [ "$python" != none ] && ! "$python" -c 'import sparseprop' 2>/dev/null; then
  venv_bin=$(dirname "$python")
  "$venv_bin/pip" install -q pybind11==2.13.6 scipy==1.16.3 setuptools
  PATH="$venv_bin:$PATH" "$venv_bin/pip" install -q --no-build-isolation --no-deps sparseprop==0.1.14
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# the workspace build's features, so that the benches reuse its artifacts
bench() { cargo bench -q --workspace --features pdecay-burn/train --bench "$1" 2>/dev/null; }
bench sparse_linear >/dev/null # build before the first timed round
bench sparse_conv >/dev/null
for r in $(seq "$rounds"); do
  echo "round $r of $rounds" >&2
  SPARSE_BENCH_TSV=1 SPARSE_LINEAR_ONLY="$only" bench sparse_linear >>"$work/pdecay.tsv"
  SPARSE_BENCH_TSV=1 SPARSE_CONV_ONLY="$only" bench sparse_conv >>"$work/pdecay.tsv"
  if [ "$python" != none ]; then
    "$python" bench/sparseprop_layers.py --only "$only" | grep -v '^#' >>"$work/sparseprop.tsv"
  fi
done
touch "$work/sparseprop.tsv"
# medians over rounds per (layer, sparsity), then the two sides side by side
awk -F'\t' '
  function median(list,   n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
    return (n % 2) ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2
  }
  FNR == 1 { side++ }
  {
    k = $1 "\t" ($3 + 0)
    if (!(k in shape)) { order[++rows] = k; shape[k] = $2 }
    d[side, k] = d[side, k] " " $4; s[side, k] = s[side, k] " " $5; q[side, k] = q[side, k] " " $6
  }
  END {
    printf "%-16s %-24s %8s | %-28s | %-28s | %s\n", "layer", "shape", "sparsity",
      "pdecay dense sparse ratio", "SparseProp dense sparse ratio", "speed-up vs SparseProp"
    for (i = 1; i <= rows; i++) {
      k = order[i]; split(k, parts, "\t")
      r1 = median(q[1, k])
      line = sprintf("%-16s %-24s %7.0f%% | %8.3f %8.3f %8.2fx | ", parts[1], shape[k], 100 * parts[2],
        median(d[1, k]), median(s[1, k]), r1)
      if ((2, k) in q) {
        r2 = median(q[2, k])
        line = line sprintf("%8.3f %8.3f %8.2fx | %.2f", median(d[2, k]), median(s[2, k]), r2, r2 / r1)
      } else line = line sprintf("%28s | -", "-")
      print line
    }
    print "(ratios are sparse / dense time: below 1 the sparse op is faster)"
  }' "$work/pdecay.tsv" "$work/sparseprop.tsv"
