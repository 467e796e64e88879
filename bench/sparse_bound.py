"""The most that sparse training could buy a finished run, whatever its kernels.

    python3 bench/sparse_bound.py RUN/metrics.jsonl [--share F ...] [--cost C ...] [--layers REGEX]
    python3 bench/sparse_bound.py RUN/metrics.jsonl --step-ms S --ms LAYER=MS ... [--cost C ...]

Reads the zeros of every layer at each evaluation of a pdecay run (metrics.jsonl) and bounds the
whole-run speed-up of `--sparse-training auto` over `off` (Amdahl's law), given

- F, the share of a dense step spent in the layers that may go sparse (measure it: their dense
  forward + backward times in `cargo bench -p pdecay-burn --bench sparse_linear` against the
  run's milliseconds per step);
- C, what one stored weight costs in the sparse products against one weight in the dense gemm
  (1: as cheap as gemm; pdecay's CSR products cost 1.5-2.1 on one thread, bench/README.md);

and no cost per call at all (no transposes, no support scan, no thread joins). A layer at density
d then takes min(1, C*d) of its dense time. Two bounds: the density known at each evaluation
(where `auto` decides, for the interval that follows it) and the density at the interval's end
(as if each layer moved the moment it got there). Steps are taken to cost the same throughout.
Each layer's part of F is its part of the layers' weights, which holds where every layer sees
the same rows (an MLP's batch, the GPT's tokens); for convolutions give each layer's dense
milliseconds per step instead (`--ms conv2=19.0`, a substring of its name, from
`--bench sparse_conv` or `--bench sparse_linear`) and the step's (`--step-ms`): the layers
named are then the ones that may go sparse, each its own share of the step.
"""

import argparse
import json
import re


def read_evaluations(path, layers):
    """[(position, {layer: (weights, density)})], position the iteration or epoch."""
    evaluations = []
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            position = record.get("iter", record.get("epoch"))
            chosen = {
                layer["name"]: (layer["params"], 1 - layer["zeros"] / layer["params"])
                for layer in record["layers"]
                if len(layer["shape"]) >= 2 and layers.search(layer["name"])
            }
            evaluations.append((position, chosen))
    if not evaluations or not evaluations[0][1]:
        raise SystemExit(f"{path}: no evaluation with a layer matching the pattern")
    return evaluations


def shares_by_weights(evaluations, share):
    """{layer: its share of a dense step}: `share` split by the layers' weights."""
    weights = {name: w for name, (w, _) in evaluations[0][1].items()}
    total = sum(weights.values())
    return {name: share * w / total for name, w in weights.items()}


def shares_by_times(evaluations, layer_ms, step_ms):
    """{layer: its share of a dense step}: each named layer's milliseconds over the step's."""
    shares = {}
    for entry in layer_ms:
        part, _, ms = entry.partition("=")
        names = [n for n in evaluations[0][1] if part in n]
        if len(names) != 1:
            raise SystemExit(f"--ms {entry}: '{part}' names {len(names)} layers, not one")
        shares[names[0]] = float(ms) / step_ms
    return shares


def relative_time(evaluations, shares, cost, known_at_start):
    """The run's time with sparse layers, as a fraction of its dense time."""
    time, start = 0.0, 0
    for k, (end, _) in enumerate(evaluations):
        if known_at_start and k == 0:
            densities = {name: 1.0 for name in shares}
        else:
            densities = {n: d for n, (_, d) in evaluations[k - 1 if known_at_start else k][1].items()}
        saved = sum(share * (1 - min(1.0, cost * densities[n])) for n, share in shares.items())
        time += (end - start) * (1 - saved)
        start = end
    return time / start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("metrics")
    parser.add_argument("--share", type=float, nargs="+", default=[0.5])
    parser.add_argument("--cost", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    # the GPT's and the MLP's linear layers (not the GPT's embeddings, which stay dense)
    parser.add_argument("--layers", default=r"^(blocks\..*|hidden\.\d+|output)\.weight$")
    parser.add_argument("--ms", nargs="+", metavar="LAYER=MS", help="dense ms per step by layer")
    parser.add_argument("--step-ms", type=float, help="a dense step's ms (with --ms)")
    args = parser.parse_args()
    if args.ms:
        if not args.step_ms:
            raise SystemExit("--ms needs --step-ms, the dense step's milliseconds")
        evaluations = read_evaluations(args.metrics, re.compile(""))
        plans = [shares_by_times(evaluations, args.ms, args.step_ms)]
    else:
        evaluations = read_evaluations(args.metrics, re.compile(args.layers))
        plans = [shares_by_weights(evaluations, f) for f in args.share]
    print(f"{len(plans[0])} layers, evaluations at {[e for e, _ in evaluations]}")
    for shares in plans:
        for cost in args.cost:
            at_evaluation = 1 / relative_time(evaluations, shares, cost, known_at_start=True)
            at_once = 1 / relative_time(evaluations, shares, cost, known_at_start=False)
            print(
                f"share {sum(shares.values()):.2f}, cost per stored weight {cost:.1f}x dense: "
                f"at most {at_evaluation:.3f}x (moving at evaluations), {at_once:.3f}x "
                "(moving at once)"
            )


if __name__ == "__main__":
    main()
