"""Timings behind the suggestions for the NumPy code generator.

    python benchmarks/line_alternatives.py [--quick] [--threads N]

Part 2 (printed first, on a fresh heap) times whole ``value_and_grad``
variants, from the generated module as it is to the hand-written one, applying
the suggested changes one at a time; it also counts minor page faults per call,
the cost that isolated line timings cannot see (fresh large temporaries are
mmap'd or trimmed off the heap by malloc and faulted in again on every call).

Part 1 times single generated lines against alternatives, on the shapes of the
benchmark networks (digits: N=256, H=128, K=10; MNIST: N=128, H=256/128).  Each
alternative runs once per repetition after a setup that restores its inputs
(in-place lines must not compound), and the min and median over repetitions
are printed.
"""

from __future__ import annotations

import argparse
import ast
import statistics
import sys
import timeit

import numpy as np

from _common import SPECS, blas_info, random_batch, set_blas_threads

import bpcompile  # noqa: E402
from bench_numpy import check_same, hand_digits, hand_mnist, time_interleaved  # noqa: E402


# ---------------------------------------------------------------------------
# Part 1: single lines
# ---------------------------------------------------------------------------

def _state(N, D, H, K, seed=0):
    rng = np.random.default_rng(seed)
    s = {"np": np, "N": N}
    s["x"] = rng.standard_normal((N, D))
    s["W1"] = rng.standard_normal((H, D)) / np.sqrt(D)
    s["b1"] = rng.standard_normal(H) * 0.1
    s["t0"] = s["x"] @ s["W1"].T
    s["z1"] = s["t0"] + s["b1"]
    s["h1"] = np.tanh(s["z1"])
    s["h1_bar"] = rng.standard_normal((N, H))
    s["z2"] = rng.standard_normal((N, K)) * 3
    s["t2"] = s["z2"].max(axis=1, keepdims=True)
    s["t3"] = np.exp(s["z2"] - s["t2"])
    s["t7"] = s["t3"].sum(axis=1)
    s["t9"] = 1 / N
    s["t10"] = -s["t9"]
    s["t13"] = (s["t9"] / s["t7"])[:, None]
    s["z2_bar"] = s["t13"] * s["t3"]
    s["label"] = rng.integers(0, K, N)
    s["rows"] = np.arange(N)
    s["flat_label"] = s["rows"] * K + s["label"]
    s["onesN"] = np.ones(N)
    s["z1_bar"] = rng.standard_normal((N, H))
    s["r_z"] = rng.standard_normal((N, H))             # relu pre-activation
    s["r_bar"] = rng.standard_normal((N, H))           # relu output adjoint
    return s


def _restore(s, names):
    """Setup code that restores ``names`` from pristine copies before each run."""
    for n in names:
        s["_orig_" + n] = s[n].copy()
    return "; ".join(f"np.copyto({n}, _orig_{n})" for n in names) or "pass"


# (group, [(label, statement, names written in place)])
LINES = [
    ("bias add after the forward GEMM (N x H)", [
        ("gen:  z1 = b1 + t0", "z1 = b1 + t0", ()),
        ("alt:  t0 += b1   (in place, z1 = t0)", "t0 += b1", ("t0",)),
    ]),
    ("tanh forward (N x H)", [
        ("gen:  h1 = np.tanh(b1 + t0)", "h1 = np.tanh(b1 + t0)", ()),
        ("alt:  t0 += b1; np.tanh(t0, out=t0)", "t0 += b1; np.tanh(t0, out=t0)", ("t0",)),
    ]),
    ("tanh backward (N x H)", [
        ("gen:  z1_bar = h1_bar*(1 - h1**2)", "z1_bar = h1_bar*(1 - h1**2)", ()),
        ("alt:  z1_bar = h1_bar*(1 - h1*h1)", "z1_bar = h1_bar*(1 - h1*h1)", ()),
        ("alt:  h1_bar *= 1 - h1*h1", "h1_bar *= 1 - h1*h1", ("h1_bar",)),
        ("alt:  h1 *= h1; np.subtract(1, h1, out=h1); h1_bar *= h1  (h1 dead)",
         "h1 *= h1; np.subtract(1.0, h1, out=h1); h1_bar *= h1", ("h1", "h1_bar")),
    ]),
    ("relu forward (N x H)", [
        ("gen:  h = np.maximum(z, 0)", "h = np.maximum(r_z, 0)", ()),
        ("alt:  np.maximum(z, 0.0, out=z)", "np.maximum(r_z, 0.0, out=r_z)", ("r_z",)),
    ]),
    ("relu backward (N x H)", [
        ("gen:  z_bar = h_bar*(z > 0)", "z_bar = r_bar*(r_z > 0)", ()),
        ("alt:  h_bar *= (z > 0)", "r_bar *= (r_z > 0)", ("r_bar",)),
        ("alt:  np.copyto(h_bar, 0.0, where=z <= 0)", "np.copyto(r_bar, 0.0, where=r_z <= 0)", ("r_bar",)),
        ("alt:  h_bar[z <= 0] = 0.0", "r_bar[r_z <= 0] = 0.0", ("r_bar",)),
        ("alt:  z_bar = np.where(z > 0, h_bar, 0.0)", "z_bar = np.where(r_z > 0, r_bar, 0.0)", ()),
    ]),
    ("softmax-CE: label scatter (N x K)", [
        ("gen:  t11 = np.broadcast_to(t10, (N,)); z2_bar[rows, label] += t11",
         "t11 = np.broadcast_to(t10, (N,)); z2_bar[rows, label] += t11", ("z2_bar",)),
        ("alt:  z2_bar[rows, label] -= t9   (scalar)", "z2_bar[rows, label] -= t9", ("z2_bar",)),
        ("alt:  z2_bar.ravel()[rows*K + label] -= t9  (flat index, computed here)",
         "z2_bar.ravel()[rows*K + label] -= t9", ("z2_bar",)),
        ("alt:  z2_bar.ravel()[flat] -= t9  (flat index shared with the forward pick)",
         "z2_bar.ravel()[flat_label] -= t9", ("z2_bar",)),
    ]),
    ("softmax-CE: forward pick of the label logit (N x K)", [
        ("gen:  t5 = z2[rows, label]", "t5 = z2[rows, label]", ()),
        ("alt:  flat = rows*K + label; t5 = z2.ravel()[flat]", "flat = rows*K + label; t5 = z2.ravel()[flat]", ()),
        ("alt:  t5 = np.take_along_axis(z2, label[:, None], 1)",
         "t5 = np.take_along_axis(z2, label[:, None], 1)", ()),
    ]),
    ("softmax-CE: exp and scale (N x K)", [
        ("gen:  t3 = np.exp(z2 - t2) ... z2_bar = t13*t3",
         "t3 = np.exp(z2 - t2); z2_bar = t13*t3", ()),
        ("alt:  t3 = z2 - t2; np.exp(t3, out=t3); t3 *= t13  (z2_bar = t3)",
         "t3 = z2 - t2; np.exp(t3, out=t3); t3 *= t13", ()),
    ]),
    ("bias gradient over the batch (N x H)", [
        ("gen:  b1_bar = z1_bar.sum(axis=0)", "b1_bar = z1_bar.sum(axis=0)", ()),
        ("alt:  b1_bar = onesN @ z1_bar   (GEMV, ones cached)", "b1_bar = onesN @ z1_bar", ()),
        ("alt:  b1_bar = np.add.reduce(z1_bar, axis=0)", "b1_bar = np.add.reduce(z1_bar, axis=0)", ()),
    ]),
    ("bias gradient over the batch (N x K)", [
        ("gen:  b2_bar = z2_bar.sum(axis=0)", "b2_bar = z2_bar.sum(axis=0)", ()),
        ("alt:  b2_bar = onesN @ z2_bar", "b2_bar = onesN @ z2_bar", ()),
    ]),
    ("weight gradient GEMM (H x D)", [
        ("gen:  W1_bar = z1_bar.T @ x", "W1_bar = z1_bar.T @ x", ()),
        ("alt:  W1_bar = (x.T @ z1_bar).T   (F-ordered result)", "W1_bar = (x.T @ z1_bar).T", ()),
        ("alt:  W1_bar = np.dot(z1_bar.T, x)", "W1_bar = np.dot(z1_bar.T, x)", ()),
    ]),
]


def time_line(stmt, setup, s, reps):
    # timeit runs stmt inside a function: names it assigns must be declared global
    stores = sorted({n.id for n in ast.walk(ast.parse(stmt))
                     if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)})
    if stores:
        setup = f"global {', '.join(stores)}; {setup}"
    ts = timeit.repeat(stmt, setup=setup, globals=s, number=1, repeat=reps)
    return min(ts), statistics.median(ts)


def part1(shapes, reps):
    for title, (N, D, H, K) in shapes:
        print(f"\n## Part 1, {title}: N={N} D={D} H={H} K={K}   (us per line: min / median of {reps})")
        for group, alts in LINES:
            print(f"# {group}")
            base = None
            for label, stmt, inplace in alts:
                s = _state(N, D, H, K)
                s["K"] = K
                setup = _restore(s, inplace)
                tmin, tmed = time_line(stmt, setup, s, reps)
                base = base or tmed
                print(f"  {tmin * 1e6:8.2f} / {tmed * 1e6:8.2f} us  x{tmed / base:5.2f}  {label}")


# ---------------------------------------------------------------------------
# Part 2: whole value_and_grad variants (digits: 64 -> H tanh -> 10)
# ---------------------------------------------------------------------------

def digits_fix_forward(params, x, label):
    """Generated code + fix A: bias added in place into the GEMM output, tanh in place."""
    W1, b1, W2, b2 = params["W1"], params["b1"], params["W2"], params["b2"]
    N = x.shape[0]
    rows = np.arange(N)
    h1 = x @ W1.T                 # was: t0 = x @ W1.T; h1 = np.tanh(b1 + t0)
    h1 += b1
    np.tanh(h1, out=h1)
    z2 = h1 @ W2.T                # was: t1 = h1 @ W2.T; z2 = b2 + t1
    z2 += b2
    t2 = z2.max(axis=1, keepdims=True)
    t3 = np.exp(z2 - t2)
    t4 = t3.sum(axis=1, keepdims=True)
    t5 = z2[rows, label]
    t7 = t4[:, 0]
    L_n = t2[:, 0] + np.log(t7) - t5
    L = L_n.sum(axis=0) / N
    t9 = 1 / N
    t11 = np.broadcast_to(-t9, (N,))
    z2_bar = (t9 / t7)[:, None] * t3
    z2_bar[rows, label] += t11
    b2_bar = z2_bar.sum(axis=0)
    W2_bar = z2_bar.T @ h1
    h1_bar = z2_bar @ W2
    z1_bar = h1_bar * (1 - h1 ** 2)
    b1_bar = z1_bar.sum(axis=0)
    W1_bar = z1_bar.T @ x
    return float(L), {"W1": W1_bar, "b1": b1_bar, "W2": W2_bar, "b2": b2_bar}


def digits_fix_backward(params, x, label):
    """Fix A + fix B: tanh backward in place (h1 is dead after W2_bar)."""
    W1, b1, W2, b2 = params["W1"], params["b1"], params["W2"], params["b2"]
    N = x.shape[0]
    rows = np.arange(N)
    h1 = x @ W1.T
    h1 += b1
    np.tanh(h1, out=h1)
    z2 = h1 @ W2.T
    z2 += b2
    t2 = z2.max(axis=1, keepdims=True)
    t3 = np.exp(z2 - t2)
    t4 = t3.sum(axis=1, keepdims=True)
    t5 = z2[rows, label]
    t7 = t4[:, 0]
    L_n = t2[:, 0] + np.log(t7) - t5
    L = L_n.sum(axis=0) / N
    t9 = 1 / N
    t11 = np.broadcast_to(-t9, (N,))
    z2_bar = (t9 / t7)[:, None] * t3
    z2_bar[rows, label] += t11
    b2_bar = z2_bar.sum(axis=0)
    W2_bar = z2_bar.T @ h1
    z1_bar = z2_bar @ W2          # was: h1_bar = ...; z1_bar = h1_bar*(1 - h1**2)
    h1 *= h1
    np.subtract(1.0, h1, out=h1)
    z1_bar *= h1
    b1_bar = z1_bar.sum(axis=0)
    W1_bar = z1_bar.T @ x
    return float(L), {"W1": W1_bar, "b1": b1_bar, "W2": W2_bar, "b2": b2_bar}


def digits_fix_all(params, x, label):
    """Fix A + B + C: scalar label scatter (no broadcast_to), softmax in place."""
    W1, b1, W2, b2 = params["W1"], params["b1"], params["W2"], params["b2"]
    N = x.shape[0]
    rows = np.arange(N)
    h1 = x @ W1.T
    h1 += b1
    np.tanh(h1, out=h1)
    z2 = h1 @ W2.T
    z2 += b2
    t2 = z2.max(axis=1, keepdims=True)
    t5 = z2[rows, label]
    z2 -= t2                      # was: t3 = np.exp(z2 - t2)
    np.exp(z2, out=z2)
    t7 = z2.sum(axis=1)
    L = (t2.sum() + np.log(t7).sum() - t5.sum()) / N
    t9 = 1 / N
    t7 *= N
    np.reciprocal(t7, out=t7)
    z2 *= t7[:, None]             # was: z2_bar = t13*t3
    z2[rows, label] -= t9         # was: broadcast_to + fancy +=
    b2_bar = z2.sum(axis=0)
    W2_bar = z2.T @ h1
    z1_bar = z2 @ W2
    h1 *= h1
    np.subtract(1.0, h1, out=h1)
    z1_bar *= h1
    b1_bar = z1_bar.sum(axis=0)
    W1_bar = z1_bar.T @ x
    return float(L), {"W1": W1_bar, "b1": b1_bar, "W2": W2_bar, "b2": b2_bar}


def mnist_fix_all(params, x, label):
    """MNIST, generated code with fixes A (bias/relu in place) and D (relu mask in place)."""
    W1, b1, W2, b2, W3, b3 = (params[k] for k in ("W1", "b1", "W2", "b2", "W3", "b3"))
    N = x.shape[0]
    rows = np.arange(N)
    z1 = x @ W1.T
    z1 += b1
    h1 = np.maximum(z1, 0.0, out=z1)
    z2 = h1 @ W2.T
    z2 += b2
    h2 = np.maximum(z2, 0.0, out=z2)
    z3 = h2 @ W3.T
    z3 += b3
    t3 = z3.max(axis=1, keepdims=True)
    t5 = z3[rows, label]
    z3 -= t3
    np.exp(z3, out=z3)
    t8 = z3.sum(axis=1)
    L = (t3.sum() + np.log(t8).sum() - t5.sum()) / N
    t10 = 1 / N
    t8 *= N
    np.reciprocal(t8, out=t8)
    z3 *= t8[:, None]
    z3[rows, label] -= t10
    b3_bar = z3.sum(axis=0)
    W3_bar = z3.T @ h2
    z2_bar = z3 @ W3
    z2_bar *= h2 > 0.0            # was: h2_bar*(z2 > 0), a fresh N x H array
    b2_bar = z2_bar.sum(axis=0)
    W2_bar = z2_bar.T @ h1
    z1_bar = z2_bar @ W2
    z1_bar *= h1 > 0.0
    b1_bar = z1_bar.sum(axis=0)
    W1_bar = z1_bar.T @ x
    return float(L), {"W1": W1_bar, "b1": b1_bar, "W2": W2_bar, "b2": b2_bar, "W3": W3_bar, "b3": b3_bar}


def part2(rounds, round_s):
    cases = [
        ("digits", "digits_mlp_bench.yaml", (32, 256),
         [("fix A (bias+tanh in place)", digits_fix_forward),
          ("fix A+B (+tanh backward in place)", digits_fix_backward),
          ("fix A+B+C (+softmax/scatter)", digits_fix_all),
          ("hand-written", hand_digits)]),
        ("mnist", "mnist_mlp_bench.yaml", (128,),
         [("fix A+C+D (bias/relu/mask in place)", mnist_fix_all),
          ("hand-written", hand_mnist)]),
    ]
    for net, spec, batches, variants in cases:
        module = bpcompile.compile(SPECS / spec).load()
        params = module.init_params(0)
        for N in batches:
            inputs = random_batch(module, N, seed=N)
            fns = [("generated as is", lambda: module.value_and_grad(params, **inputs))]
            for name, f in variants:
                check_same(module, f, params, inputs)
                fns.append((name, lambda f=f: f(params, **inputs)))
            results = time_interleaved([f for _, f in fns], rounds, round_s)
            base = statistics.median(results[0][0])
            print(f"\n## Part 2, {net} N={N}: whole value_and_grad (min / median of {rounds} rounds)")
            for (name, _), (t, faults) in zip(fns, results):
                print(f"  {min(t) * 1e6:9.1f} / {statistics.median(t) * 1e6:9.1f} us"
                      f"  x{statistics.median(t) / base:5.2f}  faults/call {faults:6.1f}  {name}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads is not None:
        set_blas_threads(args.threads)
    print(f"# machine: {blas_info()}")
    reps = 20 if args.quick else 300
    # whole-function variants first: a fresh heap, as in a training script
    part2(3 if args.quick else 15, 0.02 if args.quick else 0.1)
    part1([("digits", (256, 64, 128, 10)), ("MNIST layer 2", (128, 256, 128, 10))], reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
