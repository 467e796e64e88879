"""SparseProp's side of bench/sparse_layers.sh: one layer, forward + backward, with SparseProp's
`SparseLinear` / `SparseConv2d` (Nikdan et al., ICML 2023; AVX2 CPU kernels over a fixed mask)
against `torch.nn.Linear` / `torch.nn.Conv2d`, on the shapes and sparsities of pdecay's
`sparse_linear` and `sparse_conv` benches (crates/pdecay-burn/benches), with the same weights:
zeros at the positions the same hash picks, so both sides multiply the same support.

    python bench/sparseprop_layers.py [--repeats R] [--threads T] [--only NAME] [--sparsity S]

Prints one line per layer and sparsity: `layer batch sparsity dense_ms sparse_ms sparse/dense`
(medians of R calls, dense and sparse alternated call by call). A convolution is timed with
both of SparseProp's layouts (`vectorizing_over_on` false and true) and its faster one is kept,
as SparseProp's own `swap_modules_with_sparse` picks by timing. Needs `pip install
sparseprop==0.1.14` in bench/.venv (its setup.py calls `python3 -m pybind11`: install pybind11
first and build with `--no-build-isolation`, the venv first on PATH; bench/sparse_layers.sh does).
"""

import argparse
import os
import time

# (name, batch, inputs, outputs): as crates/pdecay-burn/benches/sparse_linear.rs
LINEAR = [
    ("mlp hidden.0", 128, 784, 300),
    ("mlp hidden.1", 128, 300, 100),
    ("mlp output", 128, 100, 10),
    ("cnn dense", 128, 3136, 128),
    ("gpt c_attn", 768, 128, 384),
    ("gpt attn c_proj", 768, 128, 128),
    ("gpt c_fc", 768, 128, 512),
    ("gpt mlp c_proj", 768, 512, 128),
    ("1024x1024", 256, 1024, 1024),
    ("4096x1024", 256, 1024, 4096),
]
# (name, batch, channels, side, outputs, kernel, stride, padding): as benches/sparse_conv.rs
CONV = [
    ("cnn conv1", 128, 1, 28, 32, 3, 1, 1),
    ("cnn conv2", 128, 32, 14, 64, 3, 1, 1),
    ("resnet20 layer1", 128, 16, 28, 16, 3, 1, 1),
    ("resnet20 layer2", 128, 32, 14, 32, 3, 1, 1),
    ("resnet20 layer3", 128, 64, 7, 64, 3, 1, 1),
]
SPARSITIES = [0.0, 0.5, 0.8, 0.9, 0.95, 0.99]


def hashed_weight(np, count, sparsity):
    """pdecay's bench weights: entry i is zero where u(i) < sparsity, else (u - 0.5) * 0.1, with
    u(i) = ((i * 0x9E3779B97F4A7C15 mod 2^64) >> 40) / 2^24."""
    i = np.arange(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = (i * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)
    u = h.astype(np.float64) / float(1 << 24)
    return np.where(u < sparsity, 0.0, (u.astype(np.float32) - 0.5) * 0.1).astype(np.float32)


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


def timed(torch, layer, x, g):
    """One forward + backward from cleared gradients (none accumulated into earlier ones), the
    backward seeded with g directly: no loss op around the layer, as pdecay's benches seed
    theirs (`y.backward()`)."""
    x.grad = None
    for p in layer.parameters():
        p.grad = None
    start = time.perf_counter()
    layer(x).backward(g)
    return time.perf_counter() - start


def alternated(torch, dense, sparse, x, g, repeats):
    """Medians of `repeats` forward + backward calls of each, alternated call by call."""
    timed(torch, dense, x, g), timed(torch, sparse, x, g)
    times = ([], [])
    for _ in range(repeats):
        times[0].append(timed(torch, dense, x, g))
        times[1].append(timed(torch, sparse, x, g))
    return median(times[0]), median(times[1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--only", default="")
    parser.add_argument("--sparsity", type=float)
    args = parser.parse_args()
    # SparseProp's kernels run on OpenMP's threads, PyTorch's on its own pool: the same count
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import numpy as np
    import torch
    from sparseprop.modules import SparseConv2d, SparseLinear

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sparsities = [args.sparsity] if args.sparsity is not None else SPARSITIES
    print(f"# sparseprop, {args.threads} threads, medians of {args.repeats} alternated calls (ms)")
    for name, batch, inputs, outputs in LINEAR:
        if args.only not in name:
            continue
        x = torch.randn(batch, inputs, requires_grad=True)
        g = torch.randn(batch, outputs)
        for sparsity in sparsities:
            # pdecay's weight is [inputs, outputs]; torch's Linear keeps its transpose
            w = hashed_weight(np, inputs * outputs, sparsity).reshape(inputs, outputs)
            dense = torch.nn.Linear(inputs, outputs, bias=False)
            with torch.no_grad():
                dense.weight.copy_(torch.from_numpy(w.T.copy()))
            sparse = SparseLinear.from_dense(dense)
            d, s = alternated(torch, dense, sparse, x, g, args.repeats)
            print(f"{name}\t{batch}x{inputs}->{outputs}\t{sparsity}\t{1e3 * d:.3f}\t{1e3 * s:.3f}\t{s / d:.3f}")
    for name, batch, channels, side, outputs, k, stride, padding in CONV:
        if args.only not in name:
            continue
        x = torch.randn(batch, channels, side, side, requires_grad=True)
        dense = torch.nn.Conv2d(channels, outputs, k, stride=stride, padding=padding, bias=False)
        g = torch.randn_like(dense(x))
        for sparsity in sparsities:
            w = hashed_weight(np, outputs * channels * k * k, sparsity)
            with torch.no_grad():
                dense.weight.copy_(torch.from_numpy(w.reshape(outputs, channels, k, k)))
            best = None
            for over_on in (False, True):
                sparse = SparseConv2d.from_dense(dense, vectorizing_over_on=over_on)
                d, s = alternated(torch, dense, sparse, x, g, args.repeats)
                if best is None or s / d < best[1] / best[0]:
                    best = (d, s)
            d, s = best
            shape = f"{batch}x{channels}x{side}x{side}->{outputs}"
            print(f"{name}\t{shape}\t{sparsity}\t{1e3 * d:.3f}\t{1e3 * s:.3f}\t{s / d:.3f}")


if __name__ == "__main__":
    main()
