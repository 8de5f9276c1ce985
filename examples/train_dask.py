"""Train the generated digits_mlp module on a large synthetic dataset with Dask.

The data (64 features, 10 classes: noisy copies of 10 random prototypes) is
written once to .npy files and read from them chunk by chunk, as data larger
than memory would be; bpcompile.dask computes each step's gradient over the
chunks in parallel (synchronous data parallelism) and applies the module's own
``adam_step`` (or ``sgd_step`` / ``momentum_step``), with a progress bar and a
line per epoch; ``--lbfgs`` then polishes with full-batch L-BFGS.

    python examples/train_dask.py                         # 200,000 rows, 2 epochs: seconds
    python examples/train_dask.py --rows 20000000 --epochs 5 --batch 65536   # 10 GB of rows
    python examples/train_dask.py --lbfgs 20              # then 20 iterations of L-BFGS
    python examples/train_dask.py --workers 2             # a LocalCluster of 2 processes
    python examples/train_dask.py --address tcp://scheduler:8786   # a running cluster
                                                          # (--data on a file system its workers see)

Without --workers or --address it runs on Dask's local threaded scheduler.
The module is imported from generated/digits_mlp.py (``bpcompile compile
examples/*.yaml -o generated``), or compiled in-process with --compile.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def load_module(compile=False):
    if compile:
        import bpcompile
        return bpcompile.compile(ROOT / "examples" / "digits_mlp.yaml").load()
    path = ROOT / "generated" / "digits_mlp.py"
    if not path.exists():
        raise SystemExit(f"{path} not found: run `bpcompile compile examples/*.yaml -o generated`, "
                         "or pass --compile")
    spec = importlib.util.spec_from_file_location("digits_mlp", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_data(directory, rows, seed=0, block=1_000_000):
    """x.npy (rows x 64, float64) and label.npy in ``directory``, written a block at a
    time (never all in memory); reused if already there with that many rows."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    xpath, lpath = directory / "x.npy", directory / "label.npy"
    if xpath.exists() and lpath.exists() and np.load(lpath, mmap_mode="r").shape == (rows,):
        return xpath, lpath
    rng = np.random.default_rng(seed)
    prototypes = rng.uniform(0, 1, (10, 64))
    x = np.lib.format.open_memmap(xpath, mode="w+", dtype=np.float64, shape=(rows, 64))
    label = np.lib.format.open_memmap(lpath, mode="w+", dtype=np.int64, shape=(rows,))
    for lo in range(0, rows, block):
        n = min(block, rows - lo)
        y = rng.integers(0, 10, n)
        x[lo:lo + n] = prototypes[y] + 0.6 * rng.standard_normal((n, 64))
        label[lo:lo + n] = y
    x.flush()
    label.flush()
    del x, label
    return xpath, lpath


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=200_000, help="rows of synthetic data (default 200,000)")
    ap.add_argument("--chunk", type=int, default=8192, help="rows per chunk (at most --batch: a step reads "
                    "whole chunks)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8192, help="rows per step")
    ap.add_argument("--optimizer", choices=("sgd", "momentum", "adam"), default="adam")
    ap.add_argument("--lr", type=float, default=None, help="default: 0.5 sgd, 0.05 momentum, 3e-3 adam")
    ap.add_argument("--lbfgs", type=int, default=0, metavar="ITERS", help="then full-batch L-BFGS")
    ap.add_argument("--data", help="directory of x.npy/label.npy (default: a temporary one)")
    ap.add_argument("--workers", type=int, default=0, help="a LocalCluster of this many processes")
    ap.add_argument("--address", help="the scheduler of a running dask.distributed cluster")
    ap.add_argument("--compile", action="store_true", help="compile the spec in-process")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()

    from bpcompile.dask import DaskModule, from_npy
    module = load_module(args.compile)
    client = cluster = None
    if args.address or args.workers:
        import distributed
        if args.address:
            client = distributed.Client(args.address)
        else:
            cluster = distributed.LocalCluster(n_workers=args.workers, threads_per_worker=1,
                                               dashboard_address=":0")
            client = distributed.Client(cluster)
    with tempfile.TemporaryDirectory(prefix="train_dask_") as tmp:
        t0 = time.perf_counter()
        xpath, lpath = make_data(args.data or tmp, args.rows)
        data = {"x": from_npy(xpath, rows=args.chunk), "label": from_npy(lpath, rows=args.chunk)}
        print(f"{args.rows:,} rows ({os.path.getsize(xpath) / 1e6:,.0f} MB) in {len(data['x'].chunks[0])} chunks, "
              f"ready in {time.perf_counter() - t0:.1f} s; running on "
              f"{client if client is not None else 'the local threaded scheduler'}")
        dm = DaskModule(module, client=client)
        params = module.init_params(seed=0)
        lr = args.lr or {"sgd": 0.5, "momentum": 0.05, "adam": 3e-3}[args.optimizer]
        print(f"start: loss {dm.loss(params, **data):.4f}")
        dm.fit(params, data, optimizer=args.optimizer, lr=lr, epochs=args.epochs, batch_size=args.batch,
               progress=not args.no_progress)
        if args.lbfgs:
            dm.minimize(params, data, maxiter=args.lbfgs, progress=not args.no_progress)
        loss = dm.loss(params, **data)
        hit = (dm.predict(params, x=data["x"]).argmax(axis=1) == data["label"]).mean()
        print(f"end: loss {loss:.4f}, accuracy {float(hit.compute()):.4f} over all {args.rows:,} rows")
    if client is not None:
        client.close()
    if cluster is not None:
        cluster.close()


if __name__ == "__main__":
    main()
