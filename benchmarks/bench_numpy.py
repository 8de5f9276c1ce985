"""Generated ``value_and_grad`` against hand-written NumPy backprop of the same MLPs.

    python benchmarks/bench_numpy.py            # full run (a minute or so)
    python benchmarks/bench_numpy.py --quick    # smoke run (a few seconds)

Both sides run in this process on the same float64 parameters and batch; they
are first checked to agree (loss and every gradient, allclose), then timed with
interleaved rounds (generated, hand, hand, generated, ...) so that drift in the
machine's speed hits both alike.  Each round times ``number`` calls; the table
reports the min and the median over rounds of the per-call time, and the ratio
generated/hand of each.  The generated side runs as users call it, with the
argument checks on (``check=True``, the default).

A second table shows what those checks cost: ``value_and_grad`` with
``check=True`` against ``check=False`` on the same configs, timed the same way
(blocks of back-to-back calls, the order of the two rotated every round); the
ratio is checked/unchecked and the difference the checks' cost per call.
Nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from _common import (SPECS, blas_info, random_batch, set_blas_threads, softmax_ce_backward_inplace,
                     time_interleaved)

import bpcompile  # noqa: E402  (path set up by _common)


# ---------------------------------------------------------------------------
# Hand-written backprop: the same math as the specs, written for speed.
# Fresh arrays per call (the returned gradients must not alias anything), but
# every temporary is reused in place once its value is no longer needed.
# ---------------------------------------------------------------------------

def hand_digits(params, x, label):
    """64 -> 128 tanh -> 10, softmax cross-entropy, mean over the batch."""
    W1, b1, W2, b2 = params["W1"], params["b1"], params["W2"], params["b2"]
    N = x.shape[0]
    rows = np.arange(N)
    h1 = x @ W1.T
    h1 += b1
    np.tanh(h1, out=h1)
    g = h1 @ W2.T
    g += b2
    loss = softmax_ce_backward_inplace(g, label, rows, N)
    gW2 = g.T @ h1
    gb2 = g.sum(axis=0)
    d1 = g @ W2
    h1 *= h1                                    # h1 no longer needed: 1 - h1^2 in place
    np.subtract(1.0, h1, out=h1)
    d1 *= h1
    gW1 = d1.T @ x
    gb1 = d1.sum(axis=0)
    return float(loss), {"W1": gW1, "b1": gb1, "W2": gW2, "b2": gb2}


def hand_mnist(params, x, label):
    """784 -> 256 relu -> 128 relu -> 10, softmax cross-entropy, mean over the batch."""
    W1, b1 = params["W1"], params["b1"]
    W2, b2 = params["W2"], params["b2"]
    W3, b3 = params["W3"], params["b3"]
    N = x.shape[0]
    rows = np.arange(N)
    h1 = x @ W1.T
    h1 += b1
    np.maximum(h1, 0.0, out=h1)
    h2 = h1 @ W2.T
    h2 += b2
    np.maximum(h2, 0.0, out=h2)
    g = h2 @ W3.T
    g += b3
    loss = softmax_ce_backward_inplace(g, label, rows, N)
    gW3 = g.T @ h2
    gb3 = g.sum(axis=0)
    d2 = g @ W3
    d2 *= h2 > 0.0                              # relu': h > 0 iff z > 0 (bool mask multiply
                                                # beats copyto(where=) and boolean indexing)
    gW2 = d2.T @ h1
    gb2 = d2.sum(axis=0)
    d1 = d2 @ W2
    d1 *= h1 > 0.0
    gW1 = d1.T @ x
    gb1 = d1.sum(axis=0)
    return float(loss), {"W1": gW1, "b1": gb1, "W2": gW2, "b2": gb2, "W3": gW3, "b3": gb3}


# network name -> (spec file, hand-written function, batch sizes)
NETWORKS = {
    "digits": ("digits_mlp_bench.yaml", hand_digits, (32, 256)),
    "mnist": ("mnist_mlp_bench.yaml", hand_mnist, (128,)),
}


def check_same(module, hand, params, inputs):
    """Assert that generated and hand-written compute the same loss and gradients."""
    lg, gg = module.value_and_grad(params, **inputs)
    lh, gh = hand(params, **inputs)
    assert np.isclose(lg, lh, rtol=1e-12, atol=1e-12), (lg, lh)
    assert set(gg) == set(gh), (sorted(gg), sorted(gh))
    for k in gg:
        assert gg[k].shape == gh[k].shape and gg[k].dtype == gh[k].dtype == np.float64, k
        np.testing.assert_allclose(gg[k], gh[k], rtol=1e-9, atol=1e-12, err_msg=k)
    return lg


def print_check_costs(rows):
    """The table of what the argument checks cost: value_and_grad, check=True / check=False."""
    print()
    print("# the argument checks: value_and_grad with check=True (default) against check=False")
    header = (f"{'checks':<7} {'network':<8} {'batch':>5} {'on min us':>10} {'off min us':>10} {'ratio min':>9}"
              f" {'on med us':>10} {'off med us':>10} {'ratio med':>9} {'cost us':>8}")
    print(header)
    print("-" * len(header))
    for net, n, on, off in rows:
        omin, fmin = min(on), min(off)
        omed, fmed = statistics.median(on), statistics.median(off)
        print(f"{'checks':<7} {net:<8} {n:>5} {omin * 1e6:>10.1f} {fmin * 1e6:>10.1f} {omin / fmin:>9.3f}"
              f" {omed * 1e6:>10.1f} {fmed * 1e6:>10.1f} {omed / fmed:>9.3f} {(omed - fmed) * 1e6:>8.2f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: few short rounds")
    ap.add_argument("--rounds", type=int, default=None, help="timing rounds per side (default 21, quick 3)")
    ap.add_argument("--round-seconds", type=float, default=None,
                    help="target length of one round (default 0.2 s, quick 0.02 s)")
    ap.add_argument("--network", choices=sorted(NETWORKS), action="append",
                    help="only these networks (repeatable)")
    ap.add_argument("--threads", type=int, default=None,
                    help="set the BLAS thread count first (default: leave it as numpy starts)")
    args = ap.parse_args(argv)
    if args.threads is not None and not set_blas_threads(args.threads):
        print(f"# warning: could not set BLAS threads to {args.threads}", file=sys.stderr)
    rounds = args.rounds or (3 if args.quick else 21)
    target_s = args.round_seconds or (0.02 if args.quick else 0.2)

    print(f"# machine: {blas_info()}")
    print(f"# rounds={rounds} round_seconds={target_s} (per-call times; ratio = generated/hand;"
          " faults = minor page faults per call, generated/hand)")
    header = (f"{'network':<8} {'batch':>5} {'gen min us':>11} {'hand min us':>11} {'ratio min':>9}"
              f" {'gen med us':>11} {'hand med us':>11} {'ratio med':>9} {'faults g/h':>11}")
    print(header)
    print("-" * len(header))
    ratios_min, ratios_med = [], []
    check_rows = []
    for net in args.network or NETWORKS:
        spec_file, hand, batches = NETWORKS[net]
        t0 = time.perf_counter()
        module = bpcompile.compile(SPECS / spec_file).load()
        compile_s = time.perf_counter() - t0
        params = module.init_params(0)
        for N in batches:
            inputs = random_batch(module, N, seed=N)
            check_same(module, hand, params, inputs)
            vag = module.value_and_grad
            gen_call = lambda: vag(params, **inputs)  # noqa: E731
            hand_call = lambda: hand(params, **inputs)  # noqa: E731
            (tg, fg), (th, fh) = time_interleaved([gen_call, hand_call], rounds, target_s)
            gmin, hmin = min(tg), min(th)
            gmed, hmed = statistics.median(tg), statistics.median(th)
            ratios_min.append(gmin / hmin)
            ratios_med.append(gmed / hmed)
            print(f"{net:<8} {N:>5} {gmin * 1e6:>11.1f} {hmin * 1e6:>11.1f} {gmin / hmin:>9.3f}"
                  f" {gmed * 1e6:>11.1f} {hmed * 1e6:>11.1f} {gmed / hmed:>9.3f} {fg:>5.0f}/{fh:<5.0f}")
            unchecked_call = lambda: vag(params, **inputs, check=False)  # noqa: E731
            (tc, _), (tu, _) = time_interleaved([gen_call, unchecked_call], rounds, target_s)
            check_rows.append((net, N, tc, tu))
        print(f"# {net}: compiled in {compile_s:.2f} s; loss and gradients match hand-written (allclose)")
    print_check_costs(check_rows)
    gm_min = float(np.exp(np.mean(np.log(ratios_min))))
    gm_med = float(np.exp(np.mean(np.log(ratios_med))))
    worst = max(ratios_med)
    print(f"overall: geomean ratio min {gm_min:.3f}, median {gm_med:.3f}; worst median ratio {worst:.3f}"
          f" (goal <= 1.05: {'met' if worst <= 1.05 else 'not met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
