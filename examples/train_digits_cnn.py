"""Train the generated digits_cnn module (a small CNN) on scikit-learn's handwritten digits.

The training loop uses only the generated gradient module and NumPy: ``adam_step``
does the forward pass, the backward pass and the Adam update; ``predict`` measures
the accuracy.  The data, its stratified train/test split and the accuracy helper
are examples/train_digits.py's (imported, not copied), so the CNN's test accuracy
is directly comparable with the MLP's.  Each minibatch is augmented by random
shifts of up to one pixel in each direction (pad by one with zeros, crop 8x8 at
a random offset), vectorised over the batch and seeded.

    python examples/train_digits_cnn.py                  # 1x8x8 -> conv 32 -> conv 64 -> pool -> 10
    python examples/train_digits_cnn.py --compile        # compile the spec in-process

By default the module is imported from generated/digits_cnn.py, written by
``bpcompile compile examples/*.yaml -o generated``.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
NAME = "digits_cnn"


def _import(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# load_data (the fixed stratified split), accuracy and learning_rate (cosine annealing)
td = _import("train_digits", ROOT / "examples" / "train_digits.py")


def load_module(compile=False):
    """The generated digits_cnn module: imported from generated/, or compiled now."""
    if compile:
        import bpcompile
        return bpcompile.compile(bpcompile.load_spec(ROOT / "examples" / f"{NAME}.yaml")).load()
    path = ROOT / "generated" / f"{NAME}.py"
    if not path.exists():
        raise SystemExit(f"{path} not found: run `bpcompile compile examples/*.yaml -o generated`, "
                         "or pass --compile")
    return _import(NAME, path)


def load_data(seed=0):
    """train_digits.load_data's split, the 64 pixels of each image as one channel [1, 8, 8]."""
    x_tr, y_tr, x_te, y_te = td.load_data(seed=seed)
    return x_tr.reshape(-1, 1, 8, 8), y_tr, x_te.reshape(-1, 1, 8, 8), y_te


def shift(x, rng, max_shift=1):
    """Each image of the batch ``x`` [N, C, H, W] moved by its own random offset of
    up to ``max_shift`` pixels along each axis, the uncovered border filled with zeros.

    Pads by ``max_shift`` and crops H x W at a random corner, all images at once:
    the crop indices are built by broadcasting, no loop over the batch.
    """
    n, c, h, w = x.shape
    m = max_shift
    padded = np.pad(x, ((0, 0), (0, 0), (m, m), (m, m)))
    dy = rng.integers(0, 2 * m + 1, size=n)
    dx = rng.integers(0, 2 * m + 1, size=n)
    rows = (dy[:, None] + np.arange(h))[:, None, :, None]     # [N, 1, H, 1]
    cols = (dx[:, None] + np.arange(w))[:, None, None, :]     # [N, 1, 1, W]
    return padded[np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None], rows, cols]


def train(module, epochs=30, lr=4e-3, batch_size=32, seed=0, data=None, augment=True,
          progress=True):
    """Train ``module`` with Adam and cosine annealing; returns the history dict.

    Each epoch shuffles the training set (seeded) and takes one ``adam_step`` per
    minibatch, each minibatch shifted at random (``augment``).

    history: epoch, train_acc, test_acc (one entry per epoch, entry 0 before
    training), seconds (training time, evaluation excluded), params.
    """
    x_tr, y_tr, x_te, y_te = load_data(seed=seed) if data is None else data
    x_tr, x_te = np.asarray(x_tr, module.DTYPE), np.asarray(x_te, module.DTYPE)
    params = module.init_params(seed=seed)
    state = {}
    rng = np.random.default_rng(seed)
    hist = {k: [] for k in ("epoch", "train_acc", "test_acc")}

    def record(epoch):
        hist["epoch"].append(epoch)
        hist["train_acc"].append(td.accuracy(module, params, x_tr, y_tr))
        hist["test_acc"].append(td.accuracy(module, params, x_te, y_te))

    record(0)
    bar = range(1, epochs + 1)
    if progress:
        from tqdm import tqdm
        bar = tqdm(bar, desc=f"{module.NAME} adam", unit="epoch")
    seconds = 0.0
    for epoch in bar:
        t0 = time.perf_counter()
        step = td.learning_rate(lr, epoch - 1, epochs)
        order = rng.permutation(len(y_tr))
        for i in range(0, len(order), batch_size):
            b = order[i:i + batch_size]
            xb = shift(x_tr[b], rng) if augment else x_tr[b]
            module.adam_step(params, state, step, x=xb, label=y_tr[b])
        seconds += time.perf_counter() - t0
        record(epoch)
        if progress:
            bar.set_postfix(test_acc=f"{hist['test_acc'][-1]:.4f}")
    hist.update(seconds=seconds, params=params, lr=lr, batch_size=batch_size, epochs=epochs)
    return hist


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=4e-3, help="Adam's initial step size (cosine-annealed)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-augment", action="store_true", help="train without the random shifts")
    ap.add_argument("--compile", action="store_true",
                    help="compile examples/digits_cnn.yaml in-process instead of importing generated/")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    module = load_module(args.compile)
    hist = train(module, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                 augment=not args.no_augment, progress=not args.no_progress)
    print(f"{module.NAME} (adam, cosine lr {args.lr:g}, batch {args.batch_size}, {args.epochs} epochs, "
          f"{hist['seconds']:.2f} s training)")
    print(f"  train: accuracy {100 * hist['train_acc'][-1]:.2f}%")
    print(f"  test:  accuracy {100 * hist['test_acc'][-1]:.2f}%")
    return hist


if __name__ == "__main__":
    main()
