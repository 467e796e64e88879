"""The PyTorch side of bench/vs_pytorch.sh (CPU) and scripts/gpu-check.sh (CUDA): the same
models, batch sizes and threads as pdecay, trained for a fixed number of steps; prints one JSON
object with samples per second.

    python bench/torch_ref.py --model mlp|cnn|resnet18|resnet20|gpt --optim adamw|padam --steps N \
        [--threads T] [--images DIR] [--cifar DIR] [--batch B] [--text FILE] [--device cpu|cuda] \
        [--preset cpu|paper]
    python bench/torch_ref.py --whole-run RUN/config.toml [--threads T] [--images DIR] [--text FILE]

`--whole-run` (bench/sparse_training.sh) trains the paper's pAdam for the whole run a pdecay
config describes (an MLP, the CNN or the GPT; its lr, p, lambda, epochs or iterations, batch,
warm-up and cosine, p schedule from `p_start` and lambda release as pdecay's
config/optim.rs builds them), then prints the training time, samples per second, the final
test accuracy (classifiers; the GPT: validation loss and next-character accuracy over
`eval_batches` seeded windows) and the share of decayed weights below 1e-13.

Models (as crates/pdecay-cli/src/models/classifier.rs and gpt.rs):
- mlp: 784-300-100-10, ReLU, batch 128;
- cnn: conv3x3(32, same)-ReLU-pool2-conv3x3(64, same)-ReLU-pool2-dense128-ReLU-dropout0.2-dense10,
  batch 128 (421,642 parameters);
- resnet18, resnet20 (models/resnet.rs): the CIFAR ResNets of BasicBlocks with BatchNorm, 1x1
  projection shortcuts, global average pooling; on CIFAR-10's binary batches (`--cifar DIR`,
  per-channel normalisation) or else Fashion-MNIST as 1x28x28 images; batch 128 unless `--batch`;
- gpt: nanoGPT's char model, no bias, output tied to the token embedding, betas (0.9, 0.99),
  global-norm clipping at 1.0; `--preset cpu` (pdecay's default): 4 layers, 4 heads, width 128,
  block 64, batch 12, no dropout; `--preset paper`: 6 layers, 6 heads, width 384, block 256,
  batch 64, dropout 0.2.

pAdam is Adam followed by pWD, written from the paper's formula: with w_old the weight before
the step, w <- w_step * |w_old|^(2-p) / (|w_old|^(2-p) + p*lr*lambda), computed in the
overflow-free form w_step / (1 + p*lr*lambda*|w_old|^(p-2)). It decays the rank >= 2 tensors,
as pdecay does. AdamW uses PyTorch's own implementation (`torch.optim.AdamW`).

The timed span is the training loop (batch selection, forward, backward, clipping, optimizer),
as pdecay's `samples_per_second` and `seconds_per_iter`; data loading and model creation are
outside it. On a GPU (`--device cuda`) the data sit on the GPU, two untimed steps warm it up,
and the clock stops after a synchronisation.
"""

import argparse
import gzip
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def read_images(folder, split="train"):
    """`split`'s images of an IDX folder, flattened, in [0, 1], and their labels."""

    def find(stem):
        for name in (stem, stem + ".gz"):
            path = os.path.join(folder, name)
            if os.path.exists(path):
                return path
        raise SystemExit(f"{stem} not found in {folder}")

    images = read_idx(find(f"{split}-images-idx3-ubyte")).reshape(-1, 784)
    labels = read_idx(find(f"{split}-labels-idx1-ubyte"))
    return torch.from_numpy(images.astype(np.float32) / 255.0), torch.from_numpy(labels.astype(np.int64))


def load_images(folder):
    """The training images, normalised by their own mean and std, and labels."""
    x, labels = read_images(folder)
    return (x - x.mean()) / x.std(), labels


class Mlp(nn.Module):
    def __init__(self, hidden=(300, 100)):
        super().__init__()
        layers, width = [], 784
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.layers = nn.Sequential(*layers, nn.Linear(width, 10))

    def forward(self, x):
        return self.layers(x)


class Cnn(nn.Module):
    def __init__(self, widths=(32, 64, 128)):
        super().__init__()
        c1, c2, units = widths
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.dense = nn.Linear(c2 * 7 * 7, units)
        self.dropout = nn.Dropout(0.2)
        self.output = nn.Linear(units, 10)

    def forward(self, x):
        x = x.view(-1, 1, 28, 28)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = self.dropout(F.relu(self.dense(x.flatten(1))))
        return self.output(x)


class BasicBlock(nn.Module):
    def __init__(self, inputs, outputs, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut = nn.Sequential()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """The authors' CIFAR ResNet, with their module names (conv1, bn1, layer{i+1}.{j},
    shortcut.0/1, linear: their code follows kuangliu's pytorch-cifar), so that pdecay's
    exported files load into it (bench/resnet_check.py). Their F.avg_pool2d(out, 4) on 32x32
    inputs is the global average pool used here, which also takes 28x28 ones."""

    # (stem width, stages, blocks per stage): each later stage doubles the width at stride 2
    SIZES = {"resnet18": (64, 4, 2), "resnet20": (16, 3, 3)}

    def __init__(self, kind, channels, width=None):
        super().__init__()
        standard, stages, blocks = self.SIZES[kind]
        width = width or standard
        self.channels, self.stages = channels, stages
        self.conv1 = nn.Conv2d(channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        inputs = width
        for i in range(stages):
            outputs = width << i
            layer = []
            for j in range(blocks):
                layer.append(BasicBlock(inputs, outputs, 2 if i > 0 and j == 0 else 1))
                inputs = outputs
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
        self.linear = nn.Linear(inputs, 10)

    def forward(self, x):
        if x.dim() == 2:  # flattened square images, as pdecay's batches
            side = int(round((x.shape[1] // self.channels) ** 0.5))
            x = x.view(-1, self.channels, side, side)
        x = F.relu(self.bn1(self.conv1(x)))
        for i in range(self.stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.linear(x.mean(dim=(2, 3)))


def load_cifar(folder):
    records = []
    for i in range(1, 6):
        path = os.path.join(folder, f"data_batch_{i}.bin")
        if not os.path.exists(path):
            raise SystemExit(f"{path} not found: --cifar takes the cifar-10-batches-bin folder")
        with open(path, "rb") as f:
            records.append(np.frombuffer(f.read(), dtype=np.uint8).reshape(-1, 3073))
    data = np.concatenate(records)
    x = torch.from_numpy(data[:, 1:].astype(np.float32) / 255.0).view(-1, 3, 1024)
    x = (x - x.mean(dim=(0, 2), keepdim=True)) / x.std(dim=(0, 2), keepdim=True)
    return x.reshape(len(data), -1), torch.from_numpy(data[:, 0].astype(np.int64))


class Block(nn.Module):
    def __init__(self, width, heads, dropout):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.ln_1 = nn.LayerNorm(width, bias=False)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.ln_2 = nn.LayerNorm(width, bias=False)
        self.fc = nn.Linear(width, 4 * width, bias=False)
        self.fc_proj = nn.Linear(4 * width, width, bias=False)

    def attention(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        # nanoGPT's fast path: PyTorch's fused attention kernel
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        y = self.proj(y.transpose(1, 2).contiguous().view(b, t, c))
        return F.dropout(y, self.dropout, self.training)

    def forward(self, x):
        x = x + self.attention(self.ln_1(x))
        mlp = self.fc_proj(F.gelu(self.fc(self.ln_2(x))))
        return x + F.dropout(mlp, self.dropout, self.training)


GPT_PRESETS = {
    # layers, heads, width, block, batch, dropout
    "cpu": (4, 4, 128, 64, 12, 0.0),
    "paper": (6, 6, 384, 256, 64, 0.2),
}


class Gpt(nn.Module):
    def __init__(self, vocab, layers, heads, width, block, dropout):
        super().__init__()
        self.dropout = dropout
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(block, width)
        self.blocks = nn.ModuleList(Block(width, heads, dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width, bias=False)
        for name, param in self.named_parameters():
            if param.dim() >= 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(param, 0.0, std)

    def forward(self, idx):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        x = F.dropout(x, self.dropout, self.training)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.t()


class PAdam(torch.optim.Adam):
    """Adam, then pWD on the rank >= 2 tensors (the paper's formula, from the pre-step weight).
    `p` and `lam` may be changed between steps (the schedules of a whole run)."""

    def __init__(self, params, lr, betas, p, lam):
        super().__init__(params, lr=lr, betas=betas)
        self.p, self.lam = p, lam

    @torch.no_grad()
    def step(self):
        decayed = [q for g in self.param_groups for q in g["params"] if q.dim() >= 2]
        before = [q.abs() for q in decayed]
        super().step()
        strength = self.p * self.param_groups[0]["lr"] * self.lam
        for q, old in zip(decayed, before):
            # 1 / (1 + p lr lambda |w_old|^(p-2)): |w_old| = 0 gives inf and a factor of 0
            factor = old.pow_(self.p - 2.0).mul_(strength).add_(1.0).reciprocal_()
            q.mul_(factor)


def optimizer(model, name, betas):
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=1e-3, betas=betas, weight_decay=1e-2)
    return PAdam(model.parameters(), lr=1e-3, betas=betas, p=0.8, lam=1e-2)


def between(a, b, t):
    return a * (1.0 - t) + b * t


def schedule_value(kind, start, end, steps, step):
    """pdecay's schedule.rs: `linear` or `cosine` from start to end over steps."""
    t = min(step, steps) / steps
    if kind == "linear":
        return between(start, end, t)
    return between(end, start, 0.5 * (1.0 + math.cos(math.pi * t)))


def warmup_then(start, warmup, then, step):
    """Linear from `start` to then(0) over `warmup` steps, then `then(step - warmup)`."""
    if step < warmup:
        return between(start, then(0), step / warmup)
    return then(step - warmup)


def whole_run(args):
    """The whole run of a pdecay config.toml with PyTorch's pAdam (see the module's doc)."""
    import tomllib

    with open(args.whole_run, "rb") as f:
        c = tomllib.load(f)
    if c["optim"] != "padam":
        raise SystemExit(f"--whole-run runs pAdam, the config has optim = {c['optim']}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(c.get("seed", 0))
    generator = torch.Generator().manual_seed(c.get("seed", 0))
    gpt = c["model"] == "gpt"
    if gpt:
        g = c["gpt"]
        if g.get("bias") or g.get("dropout", 0.0) > 0.0:
            raise SystemExit("--whole-run's GPT has no biases and no dropout (pdecay's CPU preset)")
        with open(args.text, encoding="utf-8") as f:
            text = f.read()
        chars = sorted(set(text))
        index = {ch: i for i, ch in enumerate(chars)}
        tokens = torch.tensor([index[ch] for ch in text], dtype=torch.long)
        split = int(0.9 * len(tokens))
        train, val = tokens[:split], tokens[split:]
        block, batch = g["block_size"], g["batch_size"]
        model = Gpt(len(chars), g["layers"], g["heads"], g["width"], block, 0.0)
        total, betas = g["iters"], (0.9, g.get("beta2", 0.99))
        warmup = min(g["warmup_iters"], total)
        after = max(total - warmup, 1)
        lr_end = c["lr"] * g["min_lr_ratio"]
        offsets = torch.arange(block + 1)

        def windows(data, gen):
            starts = torch.randint(len(data) - block - 1, (batch,), generator=gen)
            w = data[starts[:, None] + offsets]
            return w[:, :-1], w[:, 1:]

        def loss_of(x, y):
            logits = model(x)
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)), logits

        def steps_of_run():
            for _ in range(total):
                x, y = windows(train, generator)
                yield loss_of(x, y)[0]
    else:
        images, labels = read_images(args.images)
        test_x, test_y = read_images(args.images, "t10k")
        # both by the training images' mean and std, as pdecay normalises
        mean, std = images.mean(), images.std()
        images, test_x = (images - mean) / std, (test_x - mean) / std
        if c["model"] not in ("mlp", "cnn"):
            raise SystemExit(f"--whole-run trains the MLP, the CNN or the GPT, not {c['model']}")
        model = Mlp(c["hidden"]) if c["model"] == "mlp" else Cnn(c["cnn_widths"])
        batch, epochs = c["batch_size"], c["epochs"]
        per_epoch = math.ceil(len(images) / batch)
        total, betas = per_epoch * epochs, (0.9, 0.999)
        warmup = round(c["warmup_epochs"] * per_epoch)
        after = max(total - warmup, 1)
        lr_end = c["lr"] * c["min_lr_ratio"]

        def steps_of_run():
            for _ in range(epochs):
                order = torch.randperm(len(images), generator=generator)
                for start in range(0, len(images), batch):
                    picked = order[start : start + batch]
                    yield F.cross_entropy(model(images[picked]), labels[picked])
    opt = PAdam(model.parameters(), lr=0.0, betas=betas, p=c["p"], lam=c["lambda"])
    p_start, release = c.get("p_start"), c.get("lambda_release")
    lam_end = c["lambda"] * c.get("lambda_release_ratio", 0.01)
    release_steps = max(round(total * release), 1) if release else 0

    def lr_at(step):
        return warmup_then(0.0, warmup, lambda s: schedule_value("cosine", c["lr"], lr_end, after, s), step)

    def p_at(step):
        if p_start is None:
            return c["p"]
        return schedule_value("linear", p_start, c["p"], max(total // 2, 1), step)

    def lam_at(step):
        if not release:
            return c["lambda"]
        hold = max(total - release_steps, 0)
        fall = lambda s: schedule_value("cosine", c["lambda"], lam_end, release_steps, s)
        return warmup_then(c["lambda"], hold, fall, step)

    model.train()
    step = 0
    began = time.perf_counter()
    for loss in steps_of_run():
        opt.param_groups[0]["lr"] = lr_at(step)
        opt.p, opt.lam = p_at(step), lam_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if gpt and c["gpt"].get("grad_clip", 0.0) > 0.0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), c["gpt"]["grad_clip"])
        opt.step()
        step += 1
    seconds = time.perf_counter() - began
    model.eval()
    result = {"model": c["model"], "steps": step, "seconds": seconds, "threads": torch.get_num_threads()}
    with torch.no_grad():
        decayed = [q for q in model.parameters() if q.dim() >= 2]
        small = sum(int((q.abs() < 1e-13).sum()) for q in decayed)
        result["sparsity"] = small / sum(q.numel() for q in decayed)
        if gpt:
            eval_gen = torch.Generator().manual_seed(c.get("seed", 0) + 0x5EED)
            losses, correct, count = [], 0, 0
            for _ in range(c["gpt"]["eval_batches"]):
                x, y = windows(val, eval_gen)
                loss, logits = loss_of(x, y)
                losses.append(float(loss))
                correct += int((logits.argmax(-1) == y).sum())
                count += y.numel()
            result["final_val_loss"] = sum(losses) / len(losses)
            result["final_val_accuracy"] = correct / count
            result["seconds_per_iter"] = seconds / step
        else:
            predicted = torch.cat([model(test_x[i : i + 1000]).argmax(1) for i in range(0, len(test_x), 1000)])
            result["final_test_accuracy"] = float((predicted == test_y).float().mean())
            result["samples_per_second"] = len(images) * epochs / seconds
    result["torch"] = torch.__version__
    print(json.dumps(result))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["mlp", "cnn", "resnet18", "resnet20", "gpt"])
    parser.add_argument("--optim", choices=["adamw", "padam"])
    parser.add_argument("--steps", type=int)
    parser.add_argument("--whole-run", metavar="CONFIG", help="a pdecay run's config.toml")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--images", default="../shared/data/fashion-mnist")
    parser.add_argument("--cifar", help="CIFAR-10's binary batches (the ResNets' data)")
    parser.add_argument("--batch", type=int, default=128, help="images per step")
    parser.add_argument("--text", default="../shared/data/tinyshakespeare/input.txt")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--preset", choices=sorted(GPT_PRESETS), default="cpu")
    args = parser.parse_args()
    if args.whole_run:
        return whole_run(args)
    if not (args.model and args.optim and args.steps):
        parser.error("--model, --optim and --steps are required (or --whole-run CONFIG)")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)

    if args.model == "gpt":
        with open(args.text, encoding="utf-8") as f:
            text = f.read()
        chars = sorted(set(text))
        index = {c: i for i, c in enumerate(chars)}
        data = torch.tensor([index[c] for c in text[: int(0.9 * len(text))]], dtype=torch.long)
        layers, heads, width, block, batch, dropout = GPT_PRESETS[args.preset]
        model = Gpt(len(chars), layers, heads, width, block, dropout).to(device)
        opt = optimizer(model, args.optim, (0.9, 0.99))
        offsets = torch.arange(block + 1)

        def step():
            starts = torch.randint(len(data) - block - 1, (batch,), generator=generator)
            windows = data[starts[:, None] + offsets].to(device)
            x, y = windows[:, :-1], windows[:, 1:]
            logits = model(x)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    else:
        resnet = args.model.startswith("resnet")
        cifar = resnet and args.cifar
        images, labels = load_cifar(args.cifar) if cifar else load_images(args.images)
        images, labels = images.to(device), labels.to(device)
        if resnet:
            model = ResNet(args.model, 3 if cifar else 1)
        else:
            model = Mlp() if args.model == "mlp" else Cnn()
        model = model.to(device)
        opt = optimizer(model, args.optim, (0.9, 0.999))
        batch = args.batch
        order = torch.randperm(len(images), generator=generator).to(device)
        position = [0]

        def step():
            start = position[0]
            if start + batch > len(order):
                order.copy_(torch.randperm(len(images), generator=generator))
                start = 0
            picked = order[start : start + batch]
            position[0] = start + batch
            loss = F.cross_entropy(model(images[picked]), labels[picked])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    model.train()
    gpu = device.type == "cuda"
    if gpu:
        for _ in range(2):
            step()
        torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(args.steps):
        step()
    if gpu:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    print(
        json.dumps(
            {
                "model": args.model,
                "optim": args.optim,
                "steps": args.steps,
                "batch": batch,
                "threads": torch.get_num_threads(),
                "seconds": seconds,
                "samples_per_second": args.steps * batch / seconds,
                "seconds_per_iter": seconds / args.steps,
                "device": torch.cuda.get_device_name() if gpu else "cpu",
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
