#!/usr/bin/env python3
"""Builds the embedded Fashion-MNIST subset that `pdecay` trains on with no data download.

Takes the first TRAIN_PER_CLASS training and TEST_PER_CLASS test images of each class, in file
order (deterministic, class-balanced), from the original IDX files, and writes them as gzip'd IDX
files (the same format `pdecay train --data` reads) into crates/pdecay-cli/data/fashion-mnist-subset/.

Usage: scripts/make_fashion_subset.py [SOURCE_DIR]   (default ../shared/data/fashion-mnist)
Fashion-MNIST is (c) Zalando SE, MIT licence; see the LICENSE file written beside the data.
"""
import gzip
import os
import struct
import sys

TRAIN_PER_CLASS = 550  # 5,500 images: keeps the four files under 3 MB
TEST_PER_CLASS = 100   # 1,000 images

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "crates", "pdecay-cli", "data", "fashion-mnist-subset")


def read_idx(path):
    data = gzip.open(path).read()
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return data[:4], dims, data[4 + 4 * ndim:]


def write_idx(path, magic, dims, body):
    header = magic + struct.pack(">" + "I" * len(dims), *dims)
    # mtime=0: the same input gives the same bytes
    with open(path, "wb") as f:
        f.write(gzip.compress(header + body, compresslevel=9, mtime=0))


def subset(src, prefix, per_class):
    img_magic, img_dims, images = read_idx(os.path.join(src, f"{prefix}-images-idx3-ubyte.gz"))
    lab_magic, _, labels = read_idx(os.path.join(src, f"{prefix}-labels-idx1-ubyte.gz"))
    size = img_dims[1] * img_dims[2]
    taken = {c: 0 for c in range(10)}
    keep = []
    for i, label in enumerate(labels):
        if taken[label] < per_class:
            taken[label] += 1
            keep.append(i)
    body = b"".join(images[i * size:(i + 1) * size] for i in keep)
    write_idx(os.path.join(OUT, f"{prefix}-images-idx3-ubyte.gz"), img_magic,
              (len(keep), img_dims[1], img_dims[2]), body)
    write_idx(os.path.join(OUT, f"{prefix}-labels-idx1-ubyte.gz"), lab_magic,
              (len(keep),), bytes(labels[i] for i in keep))
    return len(keep)


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "..", "shared", "data", "fashion-mnist")
    os.makedirs(OUT, exist_ok=True)
    n_train = subset(src, "train", TRAIN_PER_CLASS)
    n_test = subset(src, "t10k", TEST_PER_CLASS)
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT) if f.endswith(".gz"))
    print(f"wrote {n_train} train + {n_test} test images, {total / 1e6:.2f} MB, to {OUT}")


if __name__ == "__main__":
    main()
