"""Checks that a GPT file from `pdecay export RUN --format dense|sparse --out FILE` loads into
nanoGPT (bench/nanogpt.py, nanoGPT's module names) with `load_state_dict(..., strict=False)`,
missing only the tied lm_head.weight, and computes its logits at every position of a text.

    python bench/nanogpt_check.py [--reference LOGITS.json] [--out LOGITS.json] [--] FILE [TEXT...]

(`--` before FILE when TEXT may start with `-`.)

TEXT (its words joined by spaces; at most block_size characters) is encoded with the file's
vocabulary. With --reference (pdecay's `pdecay logits FILE --text TEXT --out LOGITS.json`:
{"tokens": [...], "logits": [[...], ...]}) the reference's tokens are used (TEXT, if given,
must encode to them), and the script prints the max |difference| of the logits and exits 1
when it exceeds 1e-4. --out writes this model's logits in the same JSON form. Sparse files are
densified from their CSR arrays; compacted files (fewer heads in some blocks) are refused.
"""

import argparse
import json
import os
import re
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nanogpt import GPT, GPTConfig  # noqa: E402

TOLERANCE = 1e-4


def load(path):
    """The file -> (GPT with its weights, vocabulary string, format name)."""
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
    fmt = meta["format"]
    if fmt not in ("dense", "sparse"):
        sys.exit(f"{path}: format {fmt!r}; this check takes dense and sparse files")
    config = GPTConfig(**json.loads(meta["gpt_config"]))
    vocab = json.loads(meta["vocab"])
    tensors = load_file(path)
    for key in [k for k in meta if k.startswith("shape.")]:  # CSR of an [out, in] matrix
        name = key[len("shape."):]
        rows, cols = json.loads(meta[key])
        values = tensors.pop(f"{name}.values")
        col = tensors.pop(f"{name}.col_indices").long()
        offsets = tensors.pop(f"{name}.row_offsets").long()
        row = torch.repeat_interleave(torch.arange(rows), offsets[1:] - offsets[:-1])
        dense = torch.zeros(rows, cols, dtype=torch.float32)
        dense[row, col] = values
        tensors[name] = dense
    model = GPT(config)
    result = model.load_state_dict(tensors, strict=False)
    allowed = re.compile(r"lm_head\.weight|transformer\.h\.\d+\.attn\.bias")  # tied; mask buffer
    bad_missing = [k for k in result.missing_keys if not allowed.fullmatch(k)]
    assert not bad_missing, f"missing from the file: {bad_missing}"
    assert not result.unexpected_keys, f"not in nanoGPT: {result.unexpected_keys}"
    assert model.lm_head.weight is model.transformer.wte.weight, "lm_head no longer tied"
    assert len(vocab) == config.vocab_size, f"vocab of {len(vocab)}, vocab_size {config.vocab_size}"
    return model.eval(), vocab, fmt


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file")
    parser.add_argument("text", nargs="*")
    parser.add_argument("--reference", help="pdecay's logits JSON to compare with")
    parser.add_argument("--out", help="write these logits as JSON")
    args = parser.parse_args()

    model, vocab, fmt = load(args.file)
    c = model.config
    print(f"{args.file}: {fmt}, {c.n_layer} layers, {c.n_head} heads, width {c.n_embd}, "
          f"block {c.block_size}, vocab {c.vocab_size}, bias {c.bias}: loaded into nanoGPT "
          "(missing only the tied lm_head.weight)")
    text = " ".join(args.text)
    index = {ch: i for i, ch in enumerate(vocab)}
    unknown = sorted(set(text) - index.keys())
    assert not unknown, f"characters not in the vocabulary: {unknown}"
    tokens = [index[ch] for ch in text]
    reference = None
    if args.reference:
        with open(args.reference) as f:
            reference = json.load(f)
        assert not text or tokens == reference["tokens"], "TEXT does not encode to the reference's tokens"
        tokens = reference["tokens"]
    assert 1 <= len(tokens) <= c.block_size, f"{len(tokens)} tokens; 1 to {c.block_size} allowed"

    with torch.no_grad():
        logits = model(torch.tensor([tokens]))[0]  # [T, V]
    print(f"{len(tokens)} positions; argmax at each: {repr(''.join(vocab[i] for i in logits.argmax(-1)))}")
    print("last position's first 8 logits: " + " ".join(f"{v:.6f}" for v in logits[-1, :8].tolist()))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"tokens": tokens, "logits": logits.tolist()}, f)
    if reference is not None:
        ref = torch.tensor(reference["logits"], dtype=torch.float32)
        assert ref.shape == logits.shape, f"reference logits {list(ref.shape)}, ours {list(logits.shape)}"
        diff = (ref - logits).abs().max().item()
        ok = diff <= TOLERANCE
        print(f"max |pdecay - nanoGPT| over {ref.numel()} logits: {diff:.3e} "
              f"({'ok' if ok else 'FAIL'}: tolerance {TOLERANCE:g})")
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
