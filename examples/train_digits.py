"""Train the generated digits_mlp module on scikit-learn's handwritten digits.

The training loop uses only the generated gradient module and NumPy:
``sgd_step`` (or ``momentum_step`` / ``adam_step``) does the forward pass, the
backward pass and the update; ``predict`` and ``loss`` measure progress.
scikit-learn only supplies the data (``load_digits``: 1797 8x8 images), tqdm the
progress bar and matplotlib the plot of the learning curves.

    python examples/train_digits.py                      # float64, minibatch SGD
    python examples/train_digits.py --dtype float32      # the float32 module
    python examples/train_digits.py --optimizer adam --lr 1e-3
    python examples/train_digits.py --compile            # compile the spec in-process

By default the module is imported from generated/digits_mlp.py (or
generated/digits_mlp_f32.py), written by
``bpcompile compile examples/*.yaml -o generated``.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SPECS = {"float64": "digits_mlp", "float32": "digits_mlp_f32"}
OPTIMIZERS = ("sgd", "momentum", "adam")
DEFAULT_LR = {"sgd": 0.5, "momentum": 0.05, "adam": 2e-3}
SCHEDULES = ("cosine", "constant")


def load_module(dtype="float64", compile=False):
    """The generated digits module for ``dtype``: imported from generated/, or compiled now."""
    name = SPECS[dtype]
    if compile:
        import bpcompile
        return bpcompile.compile(bpcompile.load_spec(ROOT / "examples" / f"{name}.yaml")).load()
    path = ROOT / "generated" / f"{name}.py"
    if not path.exists():
        raise SystemExit(f"{path} not found: run `bpcompile compile examples/*.yaml -o generated`, "
                         "or pass --compile")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_data(test_fraction=0.25, seed=0):
    """(x_train, y_train, x_test, y_test): pixels scaled to [0, 1], a fixed stratified split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.data / 16.0                      # pixel intensities 0..16 -> [0, 1]
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), bool)
    for c in np.unique(y):                      # the same fraction of every class held out
        idx = rng.permutation(np.flatnonzero(y == c))
        test[idx[:round(test_fraction * len(idx))]] = True
    return x[~test], y[~test], x[test], y[test]


def accuracy(module, params, x, y):
    return float(np.mean(module.predict(params, x=x).argmax(axis=1) == y))


def learning_rate(lr, epoch, epochs, schedule="cosine"):
    """The step size for ``epoch`` (0-based): cosine annealing from lr towards 0, or constant."""
    if schedule == "constant":
        return lr
    return lr * 0.5 * (1 + np.cos(np.pi * epoch / epochs))


def train(module, epochs=40, lr=None, batch_size=16, optimizer="sgd", schedule="cosine",
          seed=0, data=None, progress=True):
    """Train ``module`` on the digits with minibatches; returns the history dict.

    Each epoch shuffles the training set (seeded) and takes one ``optimizer`` step
    per minibatch of ``batch_size`` examples; the step size follows ``schedule``.

    history: epoch, train_loss, test_loss, train_acc, test_acc (one entry per epoch,
    entry 0 before training), seconds (training time, evaluation excluded), params
    (the trained parameters), dtype and optimizer.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}")
    lr0 = DEFAULT_LR[optimizer] if lr is None else lr
    x_tr, y_tr, x_te, y_te = load_data(seed=seed) if data is None else data
    x_tr, x_te = np.asarray(x_tr, module.DTYPE), np.asarray(x_te, module.DTYPE)
    params = module.init_params(seed=seed)
    state = {}
    rng = np.random.default_rng(seed)
    hist = {k: [] for k in ("epoch", "train_loss", "test_loss", "train_acc", "test_acc")}

    def record(epoch):
        hist["epoch"].append(epoch)
        hist["train_loss"].append(module.loss(params, x=x_tr, label=y_tr))
        hist["test_loss"].append(module.loss(params, x=x_te, label=y_te))
        hist["train_acc"].append(accuracy(module, params, x_tr, y_tr))
        hist["test_acc"].append(accuracy(module, params, x_te, y_te))

    record(0)
    bar = range(1, epochs + 1)
    if progress:
        from tqdm import tqdm
        bar = tqdm(bar, desc=f"{module.NAME} {optimizer}", unit="epoch")
    seconds = 0.0
    for epoch in bar:
        t0 = time.perf_counter()
        lr = learning_rate(lr0, epoch - 1, epochs, schedule)
        order = rng.permutation(len(y_tr))
        for i in range(0, len(order), batch_size):
            b = order[i:i + batch_size]
            if optimizer == "sgd":
                module.sgd_step(params, lr, x=x_tr[b], label=y_tr[b])
            elif optimizer == "momentum":
                module.momentum_step(params, state, lr, x=x_tr[b], label=y_tr[b])
            else:
                module.adam_step(params, state, lr, x=x_tr[b], label=y_tr[b])
        seconds += time.perf_counter() - t0
        record(epoch)
        if progress:
            bar.set_postfix(loss=f"{hist['train_loss'][-1]:.4f}", test_acc=f"{hist['test_acc'][-1]:.3f}")
    hist.update(seconds=seconds, params=params, dtype=np.dtype(module.DTYPE).name,
                optimizer=optimizer, schedule=schedule, lr=lr0, batch_size=batch_size)
    return hist


def plot(hist, path):
    """Loss and accuracy curves, train and test, side by side; written to ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ep = hist["epoch"]
    ax1.plot(ep, hist["train_loss"], label="train")
    ax1.plot(ep, hist["test_loss"], label="test")
    ax1.set_yscale("log")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("cross-entropy loss (log scale)")
    ax1.set_title("loss")
    ax1.legend()
    ax1.grid(True, which="both", alpha=0.3)
    ax2.plot(ep, 100 * np.asarray(hist["train_acc"]), label="train")
    ax2.plot(ep, 100 * np.asarray(hist["test_acc"]), label="test")
    ax2.set_ylim(80, 100.5)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy (%)")
    ax2.set_title(f"accuracy (final test {100 * hist['test_acc'][-1]:.1f}%)")
    ax2.legend(loc="lower right")
    ax2.grid(True, alpha=0.3)
    fig.suptitle(f"digits_mlp (64 -> 64 tanh -> 10 softmax), {hist['dtype']}, "
                 f"{hist['optimizer']} (lr {hist['lr']:g}, {hist['schedule']}, batch {hist['batch_size']})")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--lr", type=float, default=None,
                    help="learning rate (default: " +
                         ", ".join(f"{k} {v}" for k, v in DEFAULT_LR.items()) + ")")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--schedule", choices=SCHEDULES, default="cosine",
                    help="learning-rate schedule over the epochs (default cosine annealing)")
    ap.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd")
    ap.add_argument("--dtype", choices=tuple(SPECS), default="float64")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compile", action="store_true",
                    help="compile examples/digits_mlp*.yaml in-process instead of importing generated/")
    ap.add_argument("--plot", default=str(ROOT / "docs" / "digits_training.png"),
                    help="where to write the PNG of the curves ('' for none)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    module = load_module(args.dtype, args.compile)
    hist = train(module, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                 optimizer=args.optimizer, schedule=args.schedule, seed=args.seed,
                 progress=not args.no_progress)
    print(f"{module.NAME} ({hist['dtype']}, {args.optimizer}, {args.schedule} lr, {args.epochs} epochs, "
          f"{hist['seconds']:.2f} s training)")
    print(f"  train: loss {hist['train_loss'][-1]:.4f}  accuracy {100 * hist['train_acc'][-1]:.2f}%")
    print(f"  test:  loss {hist['test_loss'][-1]:.4f}  accuracy {100 * hist['test_acc'][-1]:.2f}%")
    if args.plot:
        plot(hist, args.plot)
        print(f"  curves -> {args.plot}")
    return hist


if __name__ == "__main__":
    main()
