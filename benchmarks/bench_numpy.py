"""Generated ``value_and_grad`` against hand-written NumPy backprop of the same networks.

    python benchmarks/bench_numpy.py            # full run (several minutes)
    python benchmarks/bench_numpy.py --quick    # smoke run (a few configs, short rounds)
    python benchmarks/bench_numpy.py --network deep --batch 256 --dtype float64 --mode proc

Networks (each in float64 and float32, at batch 1, 8, 32 and 256):

* seed001: examples/tanh_regression.yaml, 3 -> tanh 3 -> sum(v * e), squared error
  (at batch 1 a few dozen NumPy calls of about half a microsecond are the whole cost);
* digits: 64 -> 128 tanh -> 10, softmax cross-entropy;
* mnist: 784 -> 256 relu -> 128 relu -> 10, softmax cross-entropy;
* deep: 64 -> 32 tanh layers of width 64, half the squared error (the deep-thin net);
* wide: 1024 -> 4096 sigmoid -> 1024, half the squared error (BLAS products are the
  work; its goal is <= 1.0, the others' <= 0.9).

Both sides first compute the same loss and gradients (checked: allclose, 1e-9
relative in float64, 1e-4 in float32).  Two modes of timing:

* ``same``: both in this process; blocks of back-to-back calls (a round is one
  block per side, about ``--round-seconds`` each), the order of the sides rotated
  every round so that drift in the machine's speed hits both alike.
* ``proc``: one process per side, the way a training script runs (one framework
  in the process, default glibc malloc: a deep net's temporaries freed and
  allocated each call cost page faults there).  The generated side imports only
  numpy and the generated module's file, the hand-written side only numpy and
  this file's functions; both read the same params and batch from a file.  This
  process tells each in turn, the order rotated every round, to time a block.

The table gives, per config and mode, the median and the min over rounds of the
per-call time; ``ratio med``, the median over rounds of generated/hand within the
round (the two blocks of a round run back to back: a load drifting between rounds
cancels out); ``ratio min``, the ratio of the minima; and minor page faults per call.  The
generated side runs as users call it, with the argument checks on (``check=True``,
the default).  ``--check-costs`` adds a table of what the checks cost
(check=True against check=False, same-process).  Nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

import numpy as np

from _common import (ROOT, SPECS, _minflt, blas_info, calls_per_round, random_batch, set_blas_threads,
                     softmax_ce_backward_inplace, time_interleaved)


# ---------------------------------------------------------------------------
# Hand-written backprop: the same math as the specs, written for speed.
# Fresh arrays per call (the returned gradients must not alias anything), but
# every temporary is reused in place once its value is no longer needed.
# ---------------------------------------------------------------------------

def hand_seed001(params, x, y):
    """d = W x, e = tanh(d + b), g = sum(v * e), L = mean (y - g)^2."""
    W, b, v = params["W"], params["b"], params["v"]
    N = x.shape[0]
    e = x @ W.T
    e += b
    np.tanh(e, out=e)
    r = e @ v
    r -= y                                      # g - y
    loss = np.vdot(r, r) / N
    r *= 2.0 / N                                # dL/dg
    gv = r @ e
    e *= e                                      # e no longer needed: 1 - e^2 in place
    np.subtract(1.0, e, out=e)
    e *= r[:, None]
    e *= v                                      # dL/da
    gW = e.T @ x
    gb = e.sum(axis=0)
    return float(loss), {"W": gW, "b": gb, "v": gv}


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


def hand_half_sse_chain(params, x, y, act):
    """A dense chain h_i = act(W_i h_{i-1} + b_i), loss sum((h_L - y)^2) / 2, mean over the batch."""
    layers = len(params) // 2
    N = x.shape[0]
    hs = [x]
    for i in range(1, layers + 1):
        h = hs[-1] @ params[f"W{i}"].T
        h += params[f"b{i}"]
        if act == "tanh":
            np.tanh(h, out=h)
        else:                                   # sigmoid as 0.5 + 0.5 tanh(z / 2): one ufunc pass
            h *= 0.5
            np.tanh(h, out=h)
            h *= 0.5
            h += 0.5
        hs.append(h)
    d = hs[-1] - y
    loss = 0.5 * np.vdot(d, d) / N
    d /= N                                      # dL/dh_L
    grads = {}
    for i in range(layers, 0, -1):
        h = hs[i]                               # h_i no longer needed: act' in place
        if act == "tanh":
            h *= h
            np.subtract(1.0, h, out=h)
            d *= h                              # dL/dz_i = dL/dh_i (1 - h_i^2)
        else:
            d *= h
            np.subtract(1.0, h, out=h)
            d *= h                              # dL/dz_i = dL/dh_i h_i (1 - h_i)
        grads[f"W{i}"] = d.T @ hs[i - 1]
        grads[f"b{i}"] = d.sum(axis=0)
        if i > 1:
            d = d @ params[f"W{i}"]
    return float(loss), {k: grads[k] for k in params}


def hand_deep(params, x, y):
    """64 -> 32 tanh layers of width 64, half the squared error, mean over the batch."""
    return hand_half_sse_chain(params, x, y, "tanh")


def hand_wide(params, x, y):
    """1024 -> 4096 sigmoid -> 1024 (linear), half the squared error, mean over the batch."""
    W1, b1, W2, b2 = params["W1"], params["b1"], params["W2"], params["b2"]
    N = x.shape[0]
    h1 = x @ W1.T
    h1 += b1
    h1 *= 0.5                                   # sigmoid as 0.5 + 0.5 tanh(z / 2)
    np.tanh(h1, out=h1)
    h1 *= 0.5
    h1 += 0.5
    d = h1 @ W2.T
    d += b2
    d -= y
    loss = 0.5 * np.vdot(d, d) / N
    d /= N                                      # dL/dz2
    gW2 = d.T @ h1
    gb2 = d.sum(axis=0)
    d1 = d @ W2
    d1 *= h1
    np.subtract(1.0, h1, out=h1)
    d1 *= h1                                    # dL/dz1 = dL/dh1 h1 (1 - h1)
    gW1 = d1.T @ x
    gb1 = d1.sum(axis=0)
    return float(loss), {"W1": gW1, "b1": gb1, "W2": gW2, "b2": gb2}


# network name -> (spec file, hand-written function, goal for generated/hand)
NETWORKS = {
    "seed001": (ROOT / "examples" / "tanh_regression.yaml", hand_seed001, 0.9),
    "digits": (SPECS / "digits_mlp_bench.yaml", hand_digits, 0.9),
    "mnist": (SPECS / "mnist_mlp_bench.yaml", hand_mnist, 0.9),
    "deep": (SPECS / "deep_chain_bench_f32.yaml", hand_deep, 0.9),
    "wide": (SPECS / "wide_mlp_bench_f32.yaml", hand_wide, 1.0),
}
BATCHES = (1, 8, 32, 256)
DTYPES = ("float64", "float32")
QUICK = [("seed001", 1), ("digits", 32), ("deep", 8)]


def spec_text(net: str, dtype: str) -> str:
    """The network's spec in ``dtype``: its dtype line replaced (or added), its name suffixed."""
    text = NETWORKS[net][0].read_text()
    text = re.sub(r"(?m)^dtype:.*\n", "", text)
    text = re.sub(r"(?m)^name: *(\w+?)(_f32)?\s*$", lambda m: f"name: {m.group(1)}_{dtype}", text)
    return text + f"dtype: {dtype}\n"


def tolerance(dtype):
    return 1e-9 if dtype == "float64" else 1e-4


def check_same(module, hand, params, inputs):
    """Assert that generated and hand-written compute the same loss and gradients."""
    lg, gg = module.value_and_grad(params, **inputs)
    lh, gh = hand(params, **inputs)
    dtype = np.dtype(module.DTYPE)
    rtol = tolerance(dtype.name)
    assert np.isclose(lg, lh, rtol=rtol, atol=rtol), (lg, lh)
    assert set(gg) == set(gh), (sorted(gg), sorted(gh))
    for k in gg:
        assert gg[k].shape == gh[k].shape and gg[k].dtype == gh[k].dtype == dtype, (k, gg[k].dtype, gh[k].dtype)
        scale = max(float(np.abs(gh[k]).max()), 1e-30)
        np.testing.assert_allclose(gg[k], gh[k], rtol=rtol, atol=rtol * scale, err_msg=k)
    return lg


# ---------------------------------------------------------------------------
# One process per side


def worker(directory: str, role: str) -> int:
    """The loop of a timing process: load one side, then answer the parent's lines.

    ``calibrate S``: the number of calls a block of about S seconds holds;
    ``run K``: time K calls back to back, answer ``seconds-per-call faults-per-call``;
    ``quit``.  Nothing but numpy and the side itself is imported."""
    d = Path(directory)
    cfg = json.loads((d / "config.json").read_text())
    data = np.load(d / "data.npz")
    params = {k[2:]: data[k] for k in data.files if k.startswith("p_")}
    inputs = {k[2:]: data[k] for k in data.files if k.startswith("i_")}
    if role == "gen":
        spec = importlib.util.spec_from_file_location(cfg["module"], d / f"{cfg['module']}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        vag = module.value_and_grad
        call = lambda: vag(params, **inputs)  # noqa: E731
    else:
        hand = NETWORKS[cfg["network"]][1]
        call = lambda: hand(params, **inputs)  # noqa: E731
    for _ in range(3):
        call()
    print("ready", flush=True)
    for line in sys.stdin:
        cmd, arg = line.split()
        if cmd == "calibrate":
            print(calls_per_round(call, float(arg)), flush=True)
        elif cmd == "run":
            n = int(arg)
            f0 = _minflt()
            t = timeit.timeit(call, number=n)
            print(f"{t / n!r} {(_minflt() - f0) / n!r}", flush=True)
        else:
            break
    return 0


def time_processes(directory, rounds, target_s, threads):
    """Per-call times and page faults of the two sides, one process each, blocks interleaved."""
    env = dict(os.environ)
    if threads is not None:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", role, "--worker-dir", str(directory)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                              cwd=Path(__file__).parent)
             for role in ("gen", "hand")]
    try:
        for p in procs:
            line = p.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"a timing process did not start: {line!r}")

        def ask(p, text):
            p.stdin.write(text + "\n")
            p.stdin.flush()
            return p.stdout.readline().split()

        number = max(int(ask(p, f"calibrate {target_s}")[0]) for p in procs)
        times, faults = [[], []], [0.0, 0.0]
        for r in range(rounds):
            for i in ((0, 1) if r % 2 == 0 else (1, 0)):
                t, f = ask(procs[i], f"run {number}")
                times[i].append(float(t))
                faults[i] += float(f)
        return [(times[i], faults[i] / rounds) for i in range(2)]
    finally:
        for p in procs:
            try:
                p.stdin.write("quit 0\n")
                p.stdin.close()
            except OSError:
                pass
            p.wait(timeout=30)


# ---------------------------------------------------------------------------
# The tables


def paired_ratio(tg, th):
    """The median over rounds of generated/hand within the round: the two blocks of a
    round run back to back, so a load that drifts between rounds cancels out."""
    return statistics.median(g / h for g, h in zip(tg, th))


def fmt_row(net, dtype, n, mode, tg, th, fg, fh):
    gmed, hmed = statistics.median(tg), statistics.median(th)
    gmin, hmin = min(tg), min(th)
    return (f"{net:<8} {dtype:<8} {n:>5} {mode:<5} {gmed * 1e6:>10.1f} {hmed * 1e6:>10.1f} {paired_ratio(tg, th):>9.3f}"
            f" {gmin * 1e6:>10.1f} {hmin * 1e6:>10.1f} {gmin / hmin:>9.3f} {fg:>6.1f}/{fh:<6.1f}")


def print_check_costs(rows):
    """The table of what the argument checks cost: value_and_grad, check=True / check=False."""
    print()
    print("# the argument checks: value_and_grad with check=True (default) against check=False")
    header = (f"{'checks':<7} {'network':<8} {'dtype':<8} {'batch':>5} {'on med us':>10} {'off med us':>10}"
              f" {'ratio med':>9} {'cost us':>8}")
    print(header)
    print("-" * len(header))
    for net, dtype, n, on, off in rows:
        omed, fmed = statistics.median(on), statistics.median(off)
        print(f"{'checks':<7} {net:<8} {dtype:<8} {n:>5} {omed * 1e6:>10.1f} {fmed * 1e6:>10.1f}"
              f" {omed / fmed:>9.3f} {(omed - fmed) * 1e6:>8.2f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: a few configs, few short rounds")
    ap.add_argument("--rounds", type=int, default=None, help="timing rounds per side (default 15, quick 3)")
    ap.add_argument("--round-seconds", type=float, default=None,
                    help="target length of one block (default 0.1 s, quick 0.02 s)")
    ap.add_argument("--network", choices=sorted(NETWORKS), action="append", help="only these (repeatable)")
    ap.add_argument("--batch", type=int, action="append", help="only these batch sizes (repeatable)")
    ap.add_argument("--dtype", choices=DTYPES, action="append", help="only these dtypes (repeatable)")
    ap.add_argument("--mode", choices=("same", "proc"), action="append",
                    help="same-process, one process per side, or both (default)")
    ap.add_argument("--check-costs", action="store_true", help="also time check=True against check=False")
    ap.add_argument("--threads", type=int, default=None,
                    help="set the BLAS thread count first (default: leave it as numpy starts)")
    ap.add_argument("--worker", choices=("gen", "hand"), help=argparse.SUPPRESS)
    ap.add_argument("--worker-dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads is not None and not set_blas_threads(args.threads):
        print(f"# warning: could not set BLAS threads to {args.threads}", file=sys.stderr)
    if args.worker:
        return worker(args.worker_dir, args.worker)
    import bpcompile

    rounds = args.rounds or (3 if args.quick else 15)
    target_s = args.round_seconds or (0.02 if args.quick else 0.1)
    modes = args.mode or ["same", "proc"]
    dtypes = args.dtype or list(DTYPES)
    if args.quick and not (args.network or args.batch):
        configs = QUICK
    else:
        configs = [(net, n) for net in (args.network or NETWORKS) for n in (args.batch or BATCHES)]

    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    print(f"# machine: {blas_info()}; load average {load:.2f} at the start")
    print(f"# rounds={rounds} round_seconds={target_s}; per-call times; ratio = generated/hand;"
          " faults = minor page faults per call, generated/hand")
    header = (f"{'network':<8} {'dtype':<8} {'batch':>5} {'mode':<5} {'gen med us':>10} {'hand med us':>10}"
              f" {'ratio med':>9} {'gen min us':>10} {'hand min us':>10} {'ratio min':>9} {'faults g/h':>13}")
    print(header)
    print("-" * len(header))
    results = []   # (net, dtype, n, mode, median ratio)
    check_rows = []
    modules = {}
    with tempfile.TemporaryDirectory(prefix="bench_numpy_") as tmp:
        for (net, n), dtype in itertools.product(configs, dtypes):
            if (net, dtype) not in modules:
                t0 = time.perf_counter()
                compiled = bpcompile.compile(spec_text(net, dtype))
                modules[net, dtype] = (compiled.load(), compiled.source, time.perf_counter() - t0)
            module, source, _ = modules[net, dtype]
            hand = NETWORKS[net][1]
            params = module.init_params(0)
            inputs = random_batch(module, n, seed=n)
            check_same(module, hand, params, inputs)
            if "same" in modes:
                vag = module.value_and_grad
                gen_call = lambda: vag(params, **inputs)  # noqa: E731
                hand_call = lambda: hand(params, **inputs)  # noqa: E731
                (tg, fg), (th, fh) = time_interleaved([gen_call, hand_call], rounds, target_s)
                print(fmt_row(net, dtype, n, "same", tg, th, fg, fh), flush=True)
                results.append((net, dtype, n, "same", paired_ratio(tg, th)))
                if args.check_costs:
                    unchecked = lambda: vag(params, **inputs, check=False)  # noqa: E731
                    (tc, _), (tu, _) = time_interleaved([gen_call, unchecked], rounds, target_s)
                    check_rows.append((net, dtype, n, tc, tu))
            if "proc" in modes:
                d = Path(tmp) / f"{net}_{dtype}_{n}"
                d.mkdir()
                name = module.NAME
                (d / f"{name}.py").write_text(source)
                (d / "config.json").write_text(json.dumps({"module": name, "network": net}))
                np.savez(d / "data.npz", **{f"p_{k}": v for k, v in params.items()},
                         **{f"i_{k}": v for k, v in inputs.items()})
                (tg, fg), (th, fh) = time_processes(d, rounds, target_s, args.threads)
                print(fmt_row(net, dtype, n, "proc", tg, th, fg, fh), flush=True)
                results.append((net, dtype, n, "proc", paired_ratio(tg, th)))
    for (net, dtype), (_, _, compile_s) in modules.items():
        print(f"# {net} {dtype}: compiled in {compile_s:.2f} s; loss and gradients match hand-written (allclose)")
    if check_rows:
        print_check_costs(check_rows)
    ratios = [r for *_, r in results]
    gm = float(np.exp(np.mean(np.log(ratios))))
    missed = [(net, dtype, n, mode, r) for net, dtype, n, mode, r in results if r > NETWORKS[net][2]]
    print(f"overall: geomean median ratio {gm:.3f}; worst {max(ratios):.3f};"
          f" goal (<= 0.9, wide <= 1.0) met on {len(results) - len(missed)} of {len(results)}")
    for net, dtype, n, mode, r in missed:
        print(f"  not met: {net} {dtype} batch {n} {mode}: {r:.3f} > {NETWORKS[net][2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
