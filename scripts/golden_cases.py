#!/usr/bin/env python3
"""Golden pWD trajectories: our own float64 implementation of the authors' formulas.

Writes one JSON per case into crates/pdecay-burn/tests/golden/ in exactly the format of
../shared/golden (read by crates/pdecay-burn/tests/golden.rs). Standard library only.

The update rules, as in the paper authors' code (Outmezguine & Levi, "Decoupled Weight Decay for
Any p Norm": `PAdam` / `PAdam_late` subclass torch.optim.AdamW with weight_decay=0):

  Adam, PyTorch's single-tensor order, step t (1-based), lr_t the scheduled rate:
      m = lerp(m, g, 1 - beta1)           # m + (1-beta1)*(g - m)
      v = v*beta2 + (1 - beta2)*g*g
      denom = sqrt(v) / sqrt(1 - beta2^t) + eps
      w_step = w + (-(lr_t / (1 - beta1^t)) * m) / denom
  SGD (PyTorch): buf = g at the first step, then buf = momentum*buf + g; w_step = w - lr_t*buf
      (no momentum: w_step = w - lr_t*g).
  pWD, decayed tensors only:
      X = |w_ref|^(2-p),  factor = X / (X + p*lr_t*lambda),  w_new = w_step * factor
      with w_ref = the weight before the base step (variant "old", the paper's pWD)
      or the weight after it (variant "late").

Loss: sum_i 0.5*a_i*(weight_i - b_i)^2 + sum_j 0.5*(bias_j - bias_target_j)^2, so
grad_weight = a*(weight - b) and grad_bias = bias - bias_target.

All inputs (weight_init, a, b, bias_init, bias_target, lr_per_step) are rounded to f32 before the
float64 run, as in the shared cases. `f32_reference_max_abs_deviation_at_end` comes from the same
update emulated in f32 (every operation rounded to the nearest f32): information only, one
emulation's rounding is not any real f32 implementation's.

Weight entries are drawn one at a time; an ill-conditioned one (see `entry_sensitivity`: its
float64 trajectory moves by more than --max-sensitivity when perturbed by f32-sized amounts) is
redrawn as the same kind, so the cases measure the implementation and not its rounding luck.

Usage:
    python3 scripts/golden_cases.py                 # (re)write every case, one line per case
    python3 scripts/golden_cases.py --check-shared  # reproduce ../shared/golden, print worst deviation
    python3 scripts/golden_cases.py --out DIR       # write elsewhere
    python3 scripts/golden_cases.py --no-filter --out DIR  # the unfiltered draw (ill-conditioned too)
"""

import argparse
import json
import math
import os
import random
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_OUT = os.path.join(ROOT, "crates", "pdecay-burn", "tests", "golden")
DEFAULT_SHARED = os.path.normpath(os.path.join(ROOT, "..", "shared", "golden"))

LOSS = "sum_i 0.5*a_i*(weight_i - b_i)^2 + sum_j 0.5*(bias_j - bias_target_j)^2"
SNAPSHOT_STEPS = (1, 2, 5, 10, 20, 50, 100, 200, 300, 400, 500)
F32_MAX = 3.4028234663852886e38


def f32(x):
    """Nearest f32 (round half to even, subnormals kept), as a Python float."""
    if x != x or abs(x) > F32_MAX:
        return x  # NaN / overflow: left to the caller's finiteness check
    return struct.unpack("<f", struct.pack("<f", x))[0]


def f64(x):
    return x


# ----------------------------------------------------------------------------------------------
# The optimizers. `r` rounds every intermediate result: identity (f64) or f32 (the f32 emulation).


class Adam:
    def __init__(self, n, betas, eps, r):
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.r = r
        self.m = [0.0] * n
        self.v = [0.0] * n
        self.t = 0

    def step(self, w, g, lr):
        r, b1, b2 = self.r, self.beta1, self.beta2
        self.t += 1
        # Scalars are Python floats, as in torch.optim.Adam(W); an f32 kernel casts them to f32.
        weight = r(1.0 - b1)
        one_minus_b2 = r(1.0 - b2)
        bias_correction1 = 1.0 - b1**self.t
        bias_correction2 = 1.0 - b2**self.t
        neg_step_size = r(-(lr / bias_correction1))
        bc2_sqrt = r(math.sqrt(bias_correction2))
        eps = r(self.eps)
        b2r = r(b2)
        out = [0.0] * len(w)
        m, v = self.m, self.v
        for i, gi in enumerate(g):
            # exp_avg.lerp_(grad, 1 - beta1): weight < 0.5, so self + weight*(end - self)
            m[i] = r(m[i] + r(weight * r(gi - m[i])))
            # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            v[i] = r(r(v[i] * b2r) + r(r(one_minus_b2 * gi) * gi))
            # denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
            denom = r(r(r(math.sqrt(v[i])) / bc2_sqrt) + eps)
            # param.addcdiv_(exp_avg, denom, value=-step_size)
            out[i] = r(w[i] + r(r(neg_step_size * m[i]) / denom))
        return out


class Sgd:
    def __init__(self, n, momentum, r):
        self.momentum = momentum or 0.0
        self.r = r
        self.buf = None

    def step(self, w, g, lr):
        r = self.r
        neg_lr = r(-lr)
        if self.momentum != 0.0:
            mom = r(self.momentum)
            if self.buf is None:
                self.buf = list(g)  # torch.clone(grad)
            else:
                self.buf = [r(r(mom * bi) + gi) for bi, gi in zip(self.buf, g)]
            d = self.buf
        else:
            d = g
        return [r(wi + r(neg_lr * di)) for wi, di in zip(w, d)]


def pwd(w_step, w_ref, p, lr, lam, r):
    """The pWD factor X/(X + p*lr*lambda), X = |w_ref|^(2-p), applied to w_step."""
    c = p * lr * lam  # Python: self.p_norm * group['lr'] * lambda_p
    if c == 0.0:
        return list(w_step)  # no decay this step (the authors' code would give 0/0 at w = 0)
    c = r(c)
    e = 2.0 - p
    out = []
    for ws, wr in zip(w_step, w_ref):
        x = r(abs(wr) ** e)
        out.append(r(ws * r(x / r(x + c))))
    return out


def simulate(case, r=f64, record=None, nudge=None):
    """Runs a case (a dict in the golden format, inputs only). Returns {step: (weight, bias)}
    for the steps in `record` (default: the case's after_step keys) and the final state.
    `nudge(t)`, if given, is a relative perturbation: the weight after step t is multiplied by
    (1 + nudge(t)) (the conditioning filter's perturbed runs; None for every golden run)."""
    n = len(case["weight_init"])
    nb = len(case["bias_init"])
    a = [r(x) for x in case["a"]]
    b = [r(x) for x in case["b"]]
    bt = [r(x) for x in case["bias_target"]]
    w = [r(x) for x in case["weight_init"]]
    bias = [r(x) for x in case["bias_init"]]

    def make():
        if case["optimizer"] == "adam":
            return Adam(n, case["betas"], case["eps"], r), Adam(nb, case["betas"], case["eps"], r)
        if case["optimizer"] == "sgd":
            return Sgd(n, case["momentum"], r), Sgd(nb, case["momentum"], r)
        raise ValueError("unknown optimizer %r" % case["optimizer"])

    opt_w, opt_b = make()
    variant = case["variant"]
    if variant not in ("old", "late"):
        raise ValueError("unknown variant %r" % variant)
    if record is None:
        record = set(int(k) for k in case["after_step"])
    snaps = {}
    for t, lr in enumerate(case["lr_per_step"], start=1):
        gw = [r(ai * r(wi - bi)) for ai, wi, bi in zip(a, w, b)]
        gb = [r(x - y) for x, y in zip(bias, bt)]
        w_step = opt_w.step(w, gw, lr)
        b_step = opt_b.step(bias, gb, lr)
        if case["weight_decayed"]:
            w_step = pwd(w_step, w if variant == "old" else w_step, case["p"], lr, case["lambda"], r)
        if case["bias_decayed"]:
            b_step = pwd(b_step, bias if variant == "old" else b_step, case["p"], lr, case["lambda"], r)
        w, bias = w_step, b_step
        if nudge is not None:
            k = 1.0 + nudge(t)
            w = [x * k for x in w]
        if not all(math.isfinite(x) for x in w + bias):
            raise FloatingPointError("%s: non-finite value at step %d" % (case["name"], t))
        if t in record:
            snaps[t] = (list(w), list(bias))
    return snaps, (w, bias)


# ----------------------------------------------------------------------------------------------
# Learning-rate schedules (the same shapes as the shared cases).


def lr_constant(lr, steps):
    return [f32(lr)] * steps


def lr_warmup_cosine(peak, steps, warmup_frac=0.1, start_frac=0.1, final_frac=0.01):
    """Linear warm-up from start_frac*peak over the first warmup_frac of the steps, then cosine
    from peak to final_frac*peak at the last step: the shared padam_p1.5_cosine schedule exactly."""
    warm = int(round(warmup_frac * steps))
    floor = final_frac * peak
    out = []
    for t in range(steps):
        if t < warm:
            x = peak * (start_frac + (1.0 - start_frac) * t / warm)
        else:
            x = floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * (t - warm) / (steps - 1 - warm)))
        out.append(f32(x))
    return out


# ----------------------------------------------------------------------------------------------
# Case inputs.


# The conditioning filter. f32 rounds every operation to a relative 2^-24; a weight whose float64
# trajectory moves by more than `max_sensitivity` when its inputs or its per-step results are
# nudged by that much is ill-conditioned (typically a zero crossing that lands within a hair of 0,
# where the factor X/(X+c) amplifies the difference): any f32 implementation's result there
# depends on its rounding details, so such an entry measures rounding luck, not the implementation.

ULP32 = 2.0**-24
MAX_SENSITIVITY = 2e-7  # see the README: real f32 deviated ~30-70x an entry's sensitivity


def entry_sensitivity(case, w0, a, b):
    """Largest |perturbed - unperturbed| over every step of one weight entry run alone in float64
    under `case`'s optimizer (the problem is separable and every optimizer here is elementwise, so
    an entry's trajectory does not depend on the others). The perturbed runs: weight_init, b and a
    each times (1 +- 2^-24), and the weight after every step times (1 + s*2^-24) with
    s = +1, -1, +1, ... and with the opposite pattern."""
    steps = set(range(1, len(case["lr_per_step"]) + 1))

    def run(w0, a, b, nudge=None):
        one = dict(case, weight_init=[w0], a=[a], b=[b], bias_init=[], bias_target=[])
        snaps, _ = simulate(one, f64, steps, nudge)
        return [snaps[t][0][0] for t in sorted(steps)]

    base = run(w0, a, b)
    runs = []
    for s in (1.0, -1.0):
        k = 1.0 + s * ULP32
        runs.append(run(w0 * k, a, b))
        runs.append(run(w0, a, b * k))
        runs.append(run(w0, a * k, b))
        runs.append(run(w0, a, b, lambda t, s=s: s * ULP32 if t % 2 else -s * ULP32))
    return max(abs(x - y) for other in runs for x, y in zip(base, other))


def make_inputs(rng, case, tiny_share, cross_share, zero_init, max_sensitivity):
    """weight_init, a, b, bias_init, bias_target (all f32-rounded) for `case`'s weight, how many
    weight entries of each kind were redrawn ({kind: count}), and the kept entries' `entry_sensitivity`.

    Entries come in kinds, assigned in a shuffled order with exact counts:
      tiny:  |b| in [1e-5, 1e-3] (log-uniform), random sign: pWD with p < 1 drives these to 0;
      cross: b of the opposite sign to the initial weight, |b| in [0.3, 1.2]: the weight crosses 0;
      zero:  initial weight exactly 0 with a nonzero target: an exact zero must stay 0 (p < 2);
      plain: |b| in [0.2, 1.5], random sign, independent of the initial weight.
    An entry whose `entry_sensitivity` exceeds `max_sensitivity` (ill-conditioned: typically a
    crossing that lands within a hair of 0, where the factor X/(X+c) amplifies rounding) is redrawn
    as the same kind, so a correct f32 implementation passes a 5e-5 comparison with margin.
    `max_sensitivity=None` keeps the first draw of every entry (--no-filter).
    """
    rows, cols = case["weight_shape"]
    n = rows * cols
    n_tiny = int(round(tiny_share * n))
    n_cross = int(round(cross_share * n))
    kinds = ["tiny"] * n_tiny + ["cross"] * n_cross + ["zero"] * zero_init
    kinds += ["plain"] * (n - len(kinds))
    rng.shuffle(kinds)
    w0, a, b, sens = [], [], [], []
    redrawn = {}
    for kind in kinds:
        for attempt in range(100):
            ai = f32(math.exp(rng.uniform(math.log(0.2), math.log(5.0))))
            sign = rng.choice((-1.0, 1.0))
            if kind == "tiny":
                wi = f32(sign * rng.uniform(0.02, 0.6))
                bi = f32(rng.choice((-1.0, 1.0)) * 10.0 ** rng.uniform(-5.0, -3.0))
            elif kind == "cross":
                wi = f32(sign * rng.uniform(0.1, 0.6))
                bi = f32(-sign * rng.uniform(0.3, 1.2))
            elif kind == "zero":
                wi = 0.0
                bi = f32(sign * rng.uniform(0.3, 1.0))
            else:
                wi = f32(sign * rng.uniform(0.02, 0.6))
                bi = f32(rng.choice((-1.0, 1.0)) * rng.uniform(0.2, 1.5))
            si = entry_sensitivity(case, wi, ai, bi)
            if max_sensitivity is None or si <= max_sensitivity:
                break
            redrawn[kind] = redrawn.get(kind, 0) + 1
        else:
            raise RuntimeError("%s: no well-conditioned %s entry in 100 draws" % (case["name"], kind))
        sens.append(si)
        w0.append(wi)
        a.append(ai)
        b.append(bi)
    bias_init = [f32(rng.uniform(-0.6, 0.6)) for _ in range(cols)]
    bias_target = [f32(rng.uniform(-1.2, 1.2)) for _ in range(cols)]
    return w0, a, b, bias_init, bias_target, redrawn, sens


# name, optimizer, p, lambda, lr kind, lr (peak), steps, shape, momentum, seed, extras
# Adam: p in {0.1, 0.2, 0.3, 0.5} x {constant, warm-up + cosine}; SGD: p in {0.3, 0.5}, with and
# without momentum. padam_p0.3_const is issue 16's case (a), padam_p0.5_cosine its case (b).
CASES = [
    # (a): Adam, p=0.3, lambda=1e-3, constant lr 5e-3, 500 steps, 10x12, half the targets tiny.
    dict(name="padam_p0.3_const", optimizer="adam", p=0.3, lam=1e-3, sched="const", lr=5e-3,
         steps=500, shape=(10, 12), seed=1603, tiny=0.5, cross=0.15, zero=0),
    # (b): Adam, p=0.5, warm-up + cosine, peak 1e-2, lambda=3e-3.
    dict(name="padam_p0.5_cosine", optimizer="adam", p=0.5, lam=3e-3, sched="cosine", lr=1e-2,
         steps=600, shape=(7, 13), seed=1605, tiny=0.3, cross=0.2, zero=1),
    dict(name="padam_p0.1_const", optimizer="adam", p=0.1, lam=1e-3, sched="const", lr=5e-3,
         steps=500, shape=(7, 13), seed=1101, tiny=0.3, cross=0.2, zero=1),
    dict(name="padam_p0.1_cosine", optimizer="adam", p=0.1, lam=1e-3, sched="cosine", lr=1e-2,
         steps=500, shape=(5, 11), seed=1102, tiny=0.3, cross=0.2, zero=0),
    dict(name="padam_p0.2_const", optimizer="adam", p=0.2, lam=2e-3, sched="const", lr=5e-3,
         steps=500, shape=(5, 11), seed=1201, tiny=0.3, cross=0.2, zero=1),
    dict(name="padam_p0.2_cosine", optimizer="adam", p=0.2, lam=2e-3, sched="cosine", lr=1e-2,
         steps=500, shape=(7, 13), seed=1202, tiny=0.3, cross=0.2, zero=0),
    dict(name="padam_p0.3_cosine", optimizer="adam", p=0.3, lam=1e-3, sched="cosine", lr=1e-2,
         steps=500, shape=(9, 37), seed=1302, tiny=0.3, cross=0.2, zero=1),
    dict(name="padam_p0.5_const", optimizer="adam", p=0.5, lam=3e-3, sched="const", lr=5e-3,
         steps=500, shape=(5, 11), seed=1501, tiny=0.3, cross=0.2, zero=0),
    dict(name="psgd_p0.3_momentum_const", optimizer="sgd", p=0.3, lam=2e-2, sched="const",
         lr=2e-2, momentum=0.9, steps=500, shape=(7, 13), seed=2301, tiny=0.3, cross=0.2, zero=1),
    dict(name="psgd_p0.5_momentum_cosine", optimizer="sgd", p=0.5, lam=2e-2, sched="cosine",
         lr=3e-2, momentum=0.9, steps=600, shape=(5, 11), seed=2502, tiny=0.3, cross=0.2, zero=0),
    dict(name="psgd_p0.3_const", optimizer="sgd", p=0.3, lam=2e-2, sched="const", lr=5e-2,
         momentum=0.0, steps=500, shape=(5, 11), seed=2311, tiny=0.3, cross=0.2, zero=1),
    dict(name="psgd_p0.5_cosine", optimizer="sgd", p=0.5, lam=2e-2, sched="cosine", lr=0.1,
         momentum=0.0, steps=500, shape=(9, 37), seed=2512, tiny=0.3, cross=0.2, zero=0),
]


def build_case(spec, max_sensitivity):
    rng = random.Random(spec["seed"])
    shape = spec["shape"]
    steps = spec["steps"]
    if spec["sched"] == "const":
        lrs = lr_constant(spec["lr"], steps)
    else:
        lrs = lr_warmup_cosine(spec["lr"], steps)
    adam = spec["optimizer"] == "adam"
    case = {
        "name": spec["name"],
        "loss": LOSS,
        "optimizer": spec["optimizer"],
        "variant": spec.get("variant", "old"),
        "p": spec["p"],
        "lambda": spec["lam"],
        "betas": [0.9, 0.999] if adam else None,
        "eps": 1e-08 if adam else None,
        "momentum": None if adam else spec.get("momentum"),
        "weight_shape": list(shape),
        "weight_decayed": True,
        "bias_decayed": spec.get("bias_decayed", False),
        "lr_per_step": lrs,
    }
    w0, a, b, bias_init, bias_target, redrawn, sens = make_inputs(
        rng, case, spec["tiny"], spec["cross"], spec["zero"], max_sensitivity)
    case.update(weight_init=w0, a=a, b=b, bias_init=bias_init, bias_target=bias_target)
    record = sorted(set(s for s in SNAPSHOT_STEPS if s <= steps) | {steps})
    snaps, (w_end, _) = simulate(case, f64, set(record))
    case["after_step"] = {
        str(k): {"weight": snaps[k][0], "bias": snaps[k][1]} for k in record
    }
    # The same run emulated in f32: drift at the end (the shared key) and over every snapshot.
    # Information only: one emulation's rounding is not any real implementation's (the filter is
    # the conditioning one above).
    snaps32, _ = simulate(case, f32, set(record))
    dev_end, dev_all = 0.0, 0.0
    for k in record:
        d = max(abs(x - y) for x, y in zip(snaps32[k][0] + snaps32[k][1], snaps[k][0] + snaps[k][1]))
        dev_all = max(dev_all, d)
        if k == steps:
            dev_end = d
    case["f32_reference_max_abs_deviation_at_end"] = dev_end
    crossed = sum(1 for x0, x in zip(w0, w_end) if x0 * x < 0.0)
    stats = dict(
        steps=steps,
        max_abs=max(abs(x) for x in w_end),
        zeros=sum(1 for x in w_end if x == 0.0),
        crossed=crossed,
        sens_max=max(sens),
        f32_dev_end=dev_end,
        f32_dev_all=dev_all,
        n=len(w_end),
        redrawn=redrawn,
    )
    return case, stats


def check_shared(shared_dir):
    """Reruns every shared case from its inputs; returns the worst |ours - theirs| over all
    recorded steps, weight and bias."""
    files = sorted(f for f in os.listdir(shared_dir) if f.endswith(".json"))
    if not files:
        raise SystemExit("no *.json in %s" % shared_dir)
    worst_all = 0.0
    for fn in files:
        with open(os.path.join(shared_dir, fn)) as fh:
            case = json.load(fh)
        snaps, _ = simulate(case, f64)
        worst = 0.0
        for k, snap in case["after_step"].items():
            ours_w, ours_b = snaps[int(k)]
            for ours, theirs in ((ours_w, snap["weight"]), (ours_b, snap["bias"])):
                if len(ours) != len(theirs):
                    raise SystemExit("%s: step %s length %d != %d" % (fn, k, len(ours), len(theirs)))
                for x, y in zip(ours, theirs):
                    worst = max(worst, abs(x - y))
        # Our f32 emulation's drift at the end, beside the authors' measured f32 drift.
        last = max(int(k) for k in case["after_step"])
        s32, _ = simulate(case, f32, {last})
        end = case["after_step"][str(last)]
        dev32 = max(abs(x - y) for x, y in zip(s32[last][0] + s32[last][1], end["weight"] + end["bias"]))
        print("shared %-24s steps=%d worst |ours - golden| = %.3e   f32 drift at end: ours %.6e, theirs %.6e"
              % (case["name"], len(case["lr_per_step"]), worst, dev32,
                 case.get("f32_reference_max_abs_deviation_at_end", float("nan"))))
        worst_all = max(worst_all, worst)
    print("shared worst deviation over all cases and recorded steps: %.3e" % worst_all)
    return worst_all


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    ap.add_argument("--check-shared", action="store_true",
                    help="reproduce the shared golden cases and print the worst deviation")
    ap.add_argument("--shared", default=DEFAULT_SHARED, help="shared golden folder (default: %(default)s)")
    ap.add_argument("--tolerance", type=float, default=1e-12,
                    help="largest accepted deviation for --check-shared (default: %(default)s)")
    ap.add_argument("--max-sensitivity", type=float, default=MAX_SENSITIVITY,
                    help="redraw a weight entry whose float64 trajectory moves more than this at any "
                         "step when its inputs or per-step results are perturbed by a relative 2^-24 "
                         "(default: %(default)s; the Rust test's tolerance is 5e-5, see the README)")
    ap.add_argument("--no-filter", action="store_true",
                    help="keep the first draw of every entry, ill-conditioned ones included")
    args = ap.parse_args(argv)

    if args.check_shared:
        worst = check_shared(args.shared)
        if worst > args.tolerance:
            print("FAIL: worst deviation %.3e > %.1e" % (worst, args.tolerance))
            return 1
        return 0

    bound = None if args.no_filter else args.max_sensitivity
    os.makedirs(args.out, exist_ok=True)
    for spec in CASES:
        case, st = build_case(spec, bound)
        if st["crossed"] == 0 or st["zeros"] == 0:
            raise SystemExit("%s: %d zero crossings, %d exact zeros at the end (want both > 0)"
                             % (spec["name"], st["crossed"], st["zeros"]))
        text = json.dumps(case)
        path = os.path.join(args.out, spec["name"] + ".json")
        with open(path, "w") as fh:
            fh.write(text)
        redrawn = st["redrawn"]
        print("%-26s steps=%d shape=%dx%d max|w|_end=%.4f zeros_end=%d/%d crossed=%d "
              "sensitivity max=%.1e redrawn=%d (%s) f32_emulation_drift end=%.1e max=%.1e %.0fKB"
              % (spec["name"], st["steps"], spec["shape"][0], spec["shape"][1], st["max_abs"],
                 st["zeros"], st["n"], st["crossed"], st["sens_max"], sum(redrawn.values()),
                 " ".join("%s=%d" % kv for kv in sorted(redrawn.items())) or "-",
                 st["f32_dev_end"], st["f32_dev_all"], len(text) / 1024))
    return 0


if __name__ == "__main__":
    sys.exit(main())
