"""Compile time of the same MLP spec at hidden widths 4, 64 and 4096 (and several depths).

    python benchmarks/bench_compile_width.py            # full run
    python benchmarks/bench_compile_width.py --quick    # smoke run

The compiler works on whole arrays (one graph node per layer, not per unit), so
compile time should not grow with the width; it may grow with the depth.  The
spec is the digits benchmark network (64 -> width tanh x depth -> 10,
softmax cross-entropy) with only the width and the number of hidden layers
changed.  One warm-up compile pays for the imports; then every (depth, width)
is compiled ``rounds`` times, interleaved, and the min and median are printed
with the ratio of the mins to width 4 at the same depth (the min: other
processes on a shared machine only ever add time).  Nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from _common import blas_info

import bpcompile  # noqa: E402

WIDTHS = (4, 64, 4096)
DEPTHS = (1, 3, 8)


def mlp_spec(width, depth, inputs=64, classes=10):
    """The digits benchmark MLP with ``depth`` hidden tanh layers of ``width`` units."""
    layers = [{"input": "x"}] + [{"dense": width, "activation": "tanh"}] * depth + [{"dense": classes}]
    return {
        "name": f"mlp_w{width}_d{depth}",
        "inputs": {"x": [inputs], "label": {"classes": classes}},
        "layers": layers,
        "loss": f"softmax_cross_entropy(z{depth + 1}, label)",
        "reduction": "mean",
    }


def compile_seconds(spec):
    t0 = time.perf_counter()
    compiled = bpcompile.compile(spec)
    return time.perf_counter() - t0, compiled


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: depth 1 and 3, 3 rounds")
    ap.add_argument("--rounds", type=int, default=None, help="compiles per configuration (default 9)")
    args = ap.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 9)
    depths = DEPTHS[:2] if args.quick else DEPTHS

    print(f"# machine: {blas_info()}")
    compile_seconds(mlp_spec(8, 1))  # warm-up: imports, caches
    configs = [(d, w) for d in depths for w in WIDTHS]
    times = {c: [] for c in configs}
    info = {}
    for r in range(rounds):
        order = configs if r % 2 == 0 else configs[::-1]
        for d, w in order:
            t, compiled = compile_seconds(mlp_spec(w, d))
            times[(d, w)].append(t)
            info[(d, w)] = (compiled.stats()["nodes"], len(compiled.source))

    header = (f"{'depth':>5} {'width':>6} {'params':>10} {'nodes':>6} {'source B':>9}"
              f" {'min ms':>8} {'median ms':>9} {'min/min w4':>10}")
    print(header)
    print("-" * len(header))
    worst = 0.0
    for d in depths:
        base = min(times[(d, WIDTHS[0])])
        for w in WIDTHS:
            t = times[(d, w)]
            med = statistics.median(t)
            sizes = [64] + [w] * d + [10]
            n_params = sum(a * b + b for a, b in zip(sizes, sizes[1:]))
            nodes, src = info[(d, w)]
            ratio = min(t) / base
            worst = max(worst, ratio)
            print(f"{d:>5} {w:>6} {n_params:>10} {nodes:>6} {src:>9}"
                  f" {min(t) * 1e3:>8.1f} {med * 1e3:>9.1f} {ratio:>10.2f}")
    deep = min(times[(depths[-1], WIDTHS[0])]) / min(times[(depths[0], WIDTHS[0])])
    print(f"overall: worst width ratio {worst:.2f} (width 4096 vs 4 at the same depth; ~1 means"
          f" independent of width); depth {depths[-1]} vs {depths[0]} at width 4: x{deep:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
