"""Checks that an image-classifier ResNet file from `pdecay export RUN --format dense|sparse`
loads into the authors' PyTorch CIFAR ResNet (torch_ref.ResNet, with the module names of their
code, which follows kuangliu's pytorch-cifar: conv1, bn1,
layer{1..4}.{j}.{conv1,bn1,conv2,bn2,shortcut.0,shortcut.1}, linear) with
`load_state_dict(..., strict=False)`, missing only BatchNorm's num_batches_tracked, and gives
pdecay's logits.

    python bench/resnet_check.py --reference LOGITS.json FILE

LOGITS.json is `pdecay logits FILE --embedded --out LOGITS.json`: {"inputs": [[...]] (images
already normalised), "labels": [...], "logits": [[...]]}. Prints the max |difference| of the
logits and exits 1 when it exceeds 1e-4. Sparse files are densified from their CSR arrays.
"""

import argparse
import json
import os
import re
import sys
import tomllib

import torch
from safetensors import safe_open
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_ref import ResNet  # noqa: E402  (the authors' model, their module names)

TOLERANCE = 1e-4


def load(path):
    """The file -> (ResNet with its weights, image shape [C, H, W], format name)."""
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
    fmt = meta["format"]
    if fmt not in ("dense", "sparse"):
        sys.exit(f"{path}: format {fmt!r}; this check takes dense and sparse files")
    config = tomllib.loads(meta["model_config"])
    shape = config.get("image_shape", [1, 28, 28])
    tensors = load_file(path)
    for key in [k for k in meta if k.startswith("shape.")]:  # CSR of the [out, rest] view
        name = key[len("shape."):]
        full = json.loads(meta[key])
        rows = full[0]
        cols = 1
        for n in full[1:]:
            cols *= n
        values = tensors.pop(f"{name}.values")
        col = tensors.pop(f"{name}.col_indices").long()
        offsets = tensors.pop(f"{name}.row_offsets").long()
        row = torch.repeat_interleave(torch.arange(rows), offsets[1:] - offsets[:-1])
        dense = torch.zeros(rows, cols, dtype=torch.float32)
        dense[row, col] = values
        tensors[name] = dense.reshape(full)
    model = ResNet(config["model"], shape[0], config.get("resnet_width"))
    result = model.load_state_dict(tensors, strict=False)
    bad_missing = [k for k in result.missing_keys if not re.search(r"num_batches_tracked$", k)]
    assert not bad_missing, f"missing from the file: {bad_missing}"
    assert not result.unexpected_keys, f"not in the authors' ResNet: {result.unexpected_keys}"
    return model.eval(), shape, fmt


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file")
    parser.add_argument("--reference", required=True, help="pdecay's logits JSON")
    args = parser.parse_args()
    model, shape, fmt = load(args.file)
    with open(args.reference) as f:
        reference = json.load(f)
    x = torch.tensor(reference["inputs"], dtype=torch.float32).reshape(-1, *shape)
    with torch.no_grad():
        logits = model(x)
    expected = torch.tensor(reference["logits"], dtype=torch.float32)
    worst = (logits - expected).abs().max().item()
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.file}: {fmt}, {params} parameters, loaded into the authors' ResNet (missing "
          f"only num_batches_tracked); max |logit - pdecay's| on {len(x)} images: {worst:.2e}")
    if not worst <= TOLERANCE:
        sys.exit(f"logits differ by {worst} > {TOLERANCE}")


if __name__ == "__main__":
    main()
