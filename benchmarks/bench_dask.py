"""Full-batch gradient of the digits MLP over 2,000,000 rows: one thread vs Dask.

    python benchmarks/bench_dask.py                 # 2,000,000 rows, 5 rounds
    python benchmarks/bench_dask.py --quick         # smoke run (a few seconds)
    python benchmarks/bench_dask.py --big-npy DIR --gb 8 --worker-memory 1GiB
                                                    # the out-of-core run (README)

The model is examples/digits_mlp.yaml (64 -> 64 tanh -> 10, softmax cross-entropy,
float64), the data random (x normal, labels uniform), chunked in --rows rows.
Each round times, in a rotated order (so that drift in the machine's speed, and
other users of its cores, hit every side alike):

    full batch, 1 thread   module.value_and_grad on all rows at once
    loop, 1 thread         a Python loop calling it on each chunk, sums undone and redone
                           as bpcompile.dask does: the baseline
    dask threads=1         DaskModule, local threaded scheduler, one thread
    dask threads=2         the same, two threads
    cluster 2x1            DaskModule on a LocalCluster of 2 worker processes of 1 thread,
                           the data persisted on the workers beforehand (as a cluster holds
                           it) and rebalanced (tasks run where their chunk is)

BLAS runs one thread everywhere (this process: set here; the workers: Dask's
nanny sets OPENBLAS_NUM_THREADS=1), so "threads" means cores used.  The table
reports the min and median seconds per call over the rounds and each side's
speed-up over the loop (median); the goals are >= 1.7x for two threads or two
workers on two cores, and <= 10% overhead for Dask at one thread.  The machine's
load (uptime) is printed before and after: on a shared machine, the ratios are
only as good as the cores were free.  All sides are checked to agree first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import numpy as np

from _common import ROOT, blas_info, set_blas_threads

import bpcompile  # noqa: E402  (path set up by _common)


def load():
    return open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else ["?"] * 3


def loop(module, params, x, label, rows):
    """The baseline: the module on each chunk in a Python loop; the mean undone and redone."""
    n = len(x)
    total, sums = 0.0, None
    for lo in range(0, n, rows):
        value, grads = module.value_and_grad(params, x=x[lo:lo + rows], label=label[lo:lo + rows])
        m = min(rows, n - lo)
        total += value * m
        if sums is None:
            sums = {k: g * m for k, g in grads.items()}
        else:
            for k, g in grads.items():
                sums[k] += g * m
    return total / n, {k: s / n for k, s in sums.items()}


def big_npy(args, module):
    """Out of core: --gb GB of rows in DIR/x.npy against workers of --worker-memory."""
    import dask.utils
    import distributed

    from bpcompile.dask import DaskModule, from_npy
    rows = int(args.gb * 1e9) // (64 * 8)
    path = os.path.join(args.big_npy, "x.npy")
    if not (os.path.exists(path) and np.load(path, mmap_mode="r").shape == (rows, 64)):
        print(f"writing {rows:,} rows ({rows * 512 / 1e9:.1f} GB) to {path} ...", flush=True)
        x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(rows, 64))
        rng = np.random.default_rng(0)
        for lo in range(0, rows, 1_000_000):
            x[lo:lo + 1_000_000] = rng.standard_normal((min(1_000_000, rows - lo), 64))
        x.flush()
        del x
        np.save(os.path.join(args.big_npy, "label.npy"), rng.integers(0, 10, rows))
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, memory_limit=args.worker_memory,
                                       dashboard_address=":0")
    client = distributed.Client(cluster)
    limit = dask.utils.parse_bytes(args.worker_memory)

    def peak():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

    data = {k: from_npy(os.path.join(args.big_npy, f"{k}.npy"), rows=args.rows) for k in ("x", "label")}
    pids = client.run(os.getpid)
    print(f"load before {' '.join(load())}")
    t0 = time.perf_counter()
    value, grads = DaskModule(module, client=client).value_and_grad(module.init_params(), **data)
    seconds = time.perf_counter() - t0
    peaks = client.run(peak)
    print(f"load after {' '.join(load())}")
    print(f"out of core: {rows:,} rows, {os.path.getsize(path) / 2**30:.2f} GiB of x; 2 workers limited to "
          f"{limit / 2**30:.2f} GiB each; chunks of {args.rows:,} rows; {seconds:.1f} s; loss {value:.6f}")
    print("worker peak RSS (VmHWM): " + ", ".join(f"{p / 2**20:.0f} MiB" for p in sorted(peaks.values())))
    print("workers restarted: " + ("no" if client.run(os.getpid) == pids else "YES"))
    client.close()
    cluster.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2_000_000, help="rows (default 2,000,000)")
    ap.add_argument("--rows", type=int, default=32768, help="rows per chunk")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="100,000 rows, 2 rounds")
    ap.add_argument("--no-cluster", action="store_true", help="skip the LocalCluster side")
    ap.add_argument("--big-npy", metavar="DIR", help="the out-of-core run instead, its data in DIR")
    ap.add_argument("--gb", type=float, default=8.0, help="--big-npy: GB of rows")
    ap.add_argument("--worker-memory", default="1GiB", help="--big-npy: each worker's memory limit")
    args = ap.parse_args()
    if args.quick:
        args.n, args.rounds = min(args.n, 100_000), 2

    import dask.array as da

    from bpcompile.dask import DaskModule
    set_blas_threads(1)
    module = bpcompile.compile(ROOT / "examples" / "digits_mlp.yaml").load()
    if args.big_npy:
        return big_npy(args, module)
    print(blas_info())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.n, 64))
    label = rng.integers(0, 10, args.n)
    params = module.init_params()
    X = da.from_array(x, chunks=(args.rows, 64))
    L = da.from_array(label, chunks=(args.rows,))
    sides = {
        "full batch, 1 thread": lambda: module.value_and_grad(params, x=x, label=label),
        "loop, 1 thread": lambda: loop(module, params, x, label, args.rows),
        "dask threads=1": (lambda d=DaskModule(module, num_workers=1): d.value_and_grad(params, x=X, label=L)),
        "dask threads=2": (lambda d=DaskModule(module, num_workers=2): d.value_and_grad(params, x=X, label=L)),
    }
    cluster = client = None
    if not args.no_cluster:
        import distributed
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0")
        client = distributed.Client(cluster)
        with warnings.catch_warnings():   # the data goes to the workers once, here, untimed
            warnings.filterwarnings("ignore", message=".*large graph", category=UserWarning)
            Xc, Lc = client.persist([X, L])
        distributed.wait([Xc, Lc])
        # tasks run where their chunk is: spread the chunks evenly over the two workers
        client.rebalance(distributed.futures_of(Xc) + distributed.futures_of(Lc))
        sides["cluster 2x1"] = (lambda d=DaskModule(module, client=client): d.value_and_grad(params, x=Xc, label=Lc))
    ref = sides["loop, 1 thread"]()
    for name, fn in sides.items():
        v, g = fn()
        assert abs(v - ref[0]) <= 1e-12 * abs(ref[0]) and all(
            np.abs(g[k] - ref[1][k]).max() <= 1e-12 * np.abs(ref[1][k]).max() for k in g), name
    times = {name: [] for name in sides}
    names = list(sides)
    print(f"digits MLP 64-64-10, {args.n:,} rows in chunks of {args.rows:,}, {args.rounds} rounds; "
          f"load before {' '.join(load())}", flush=True)
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            sides[name]()
            times[name].append(time.perf_counter() - t0)
    after = load()
    base = statistics.median(times["loop, 1 thread"])
    print(f"{'side':24s} {'min s':>8s} {'median s':>9s} {'speed-up':>9s}")
    for name in names:
        med = statistics.median(times[name])
        print(f"{name:24s} {min(times[name]):8.3f} {med:9.3f} {base / med:8.2f}x")
    one = statistics.median(times["dask threads=1"])
    print(f"dask overhead at one thread: {100 * (one / base - 1):+.1f}% over the loop (goal <= 10%)")
    print(f"speed-up of two threads: {base / statistics.median(times['dask threads=2']):.2f}x"
          + (f", of the 2-worker cluster: {base / statistics.median(times['cluster 2x1']):.2f}x"
             if client else "") + " (goal >= 1.7x)")
    print(f"load after {' '.join(after)} (1, 5, 15 min averages; 2 cores)")
    if client is not None:
        client.close()
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
