"""Train the generated brackets_rnn module: does a sequence of brackets balance?

The data are made here, from a fixed seed: sequences of 16 tokens of four kinds,
'(' (0), ')' (1) and two letters (2, 3) that do not count.  Half of them balance
(every ')' closes an earlier '(' and none is left open); of the others, four in
five have as many '(' as ')' but close one too early, so counting is not enough:
the model must follow the depth along the sequence.  The answer is known for
every sequence (``balanced``), so the accuracy measures the model alone.

The training loop uses only the generated gradient module and NumPy:
``adam_step`` does the forward pass, the backward pass through the 16 tied steps
(the embedding's gradient a scatter-add of the rows read) and the update;
``predict`` measures the accuracy.

    python examples/train_brackets.py              # the RNN of examples/brackets_rnn.yaml
    python examples/train_brackets.py --baseline   # a dense net on the one-hot tokens, for comparison
    python examples/train_brackets.py --compile    # compile the spec in-process

By default the module is imported from generated/brackets_rnn.py, written by
``bpcompile compile examples/*.yaml -o generated``.  The baseline (BASELINE, an
MLP on the 16 x 4 one-hot tokens, flattened) is compiled in-process.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
T = 16                 # tokens per sequence
KINDS = 4              # '(', ')', and two letters
OPEN, CLOSE = 0, 1

# The baseline: a dense net on the one-hot encoding of the tokens (16 x 4 = 64
# inputs), two tanh layers of 64: each position has weights of its own.
BASELINE = {
    "name": "brackets_onehot_mlp",
    "inputs": {"x": [T * KINDS], "label": {"classes": 2}},
    "layers": [{"dense": 64, "activation": "tanh"}, {"dense": 64, "activation": "tanh"}, {"dense": 2}],
    "graph": {"y_hat": "softmax(z3)"},
    "loss": "cross_entropy(y_hat, label)",
    "output": "y_hat",
}
DEFAULTS = {"rnn": dict(epochs=20, lr=5e-3), "baseline": dict(epochs=60, lr=3e-3)}


def balanced(seq) -> bool:
    """Every ')' closes an earlier '(' and none is left open (letters do not count)."""
    depth = 0
    for s in seq:
        depth += int(s == OPEN) - int(s == CLOSE)
        if depth < 0:
            return False
    return depth == 0


def make_data(n, rng):
    """(tokens [n, T], labels [n]): example i balances when i is even.  Each has k
    pairs' worth of brackets (k uniform in 1..T/2) at random positions, letters
    elsewhere; an unbalanced one has as many '(' as ')' four times in five."""
    tokens = rng.integers(2, KINDS, (n, T))
    labels = np.zeros(n, np.int64)
    for i in range(n):
        k = int(rng.integers(1, T // 2 + 1))
        want = i % 2 == 0
        same = want or rng.random() < 0.8
        while True:
            opens = k if same else int(rng.integers(0, 2 * k + 1))
            brackets = rng.permutation([OPEN] * opens + [CLOSE] * (2 * k - opens))
            if balanced(brackets) == want:
                break
        tokens[i, np.sort(rng.choice(T, 2 * k, replace=False))] = brackets
        labels[i] = want
    return tokens, labels


def load_data(n_train=2000, n_test=2000, seed=0):
    """(tokens_train, y_train, tokens_test, y_test), made from ``seed``."""
    rng = np.random.default_rng(seed)
    train = make_data(n_train, rng)
    test = make_data(n_test, rng)
    return (*train, *test)


def onehot(tokens):
    """[n, T] tokens as the baseline reads them: [n, T * KINDS], one-hot per position."""
    return np.eye(KINDS)[tokens].reshape(len(tokens), -1)


def load_module(compile=False):
    """The generated brackets_rnn module: imported from generated/, or compiled now."""
    if compile:
        import bpcompile
        return bpcompile.compile(bpcompile.load_spec(ROOT / "examples" / "brackets_rnn.yaml")).load()
    path = ROOT / "generated" / "brackets_rnn.py"
    if not path.exists():
        raise SystemExit(f"{path} not found: run `bpcompile compile examples/*.yaml -o generated`, "
                         "or pass --compile")
    spec = importlib.util.spec_from_file_location("brackets_rnn", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def baseline_module():
    """The dense one-hot baseline, compiled in-process."""
    import bpcompile
    return bpcompile.compile(bpcompile.parse_spec(BASELINE)).load()


def features(module, tokens):
    """A module's inputs for ``tokens``: the tokens themselves, or the baseline's one-hot."""
    return {"tokens": tokens} if "tokens" in module.INPUT_SHAPES else {"x": onehot(tokens).astype(module.DTYPE)}


def accuracy(module, params, tokens, y):
    return float(np.mean(module.predict(params, **features(module, tokens)).argmax(axis=1) == y))


def train(module, data=None, epochs=None, lr=None, batch_size=32, seed=0, progress=False):
    """Train ``module`` (the RNN or the baseline) with ``adam_step`` on minibatches,
    the step size cosine-annealed from ``lr``; returns the history dict: epoch,
    train_acc, test_acc (entry 0 before training), seconds (training time,
    evaluation excluded), params."""
    kind = "rnn" if "tokens" in module.INPUT_SHAPES else "baseline"
    epochs = DEFAULTS[kind]["epochs"] if epochs is None else epochs
    lr0 = DEFAULTS[kind]["lr"] if lr is None else lr
    t_tr, y_tr, t_te, y_te = load_data(seed=seed) if data is None else data
    x_tr = features(module, t_tr)
    params = module.init_params(seed=seed)
    state = {}
    rng = np.random.default_rng(seed)
    hist = {"epoch": [], "train_acc": [], "test_acc": []}

    def record(epoch):
        hist["epoch"].append(epoch)
        hist["train_acc"].append(accuracy(module, params, t_tr, y_tr))
        hist["test_acc"].append(accuracy(module, params, t_te, y_te))

    record(0)
    bar = range(1, epochs + 1)
    if progress:
        from tqdm import tqdm
        bar = tqdm(bar, desc=module.NAME, unit="epoch")
    seconds = 0.0
    for epoch in bar:
        t0 = time.perf_counter()
        lr = lr0 * 0.5 * (1 + np.cos(np.pi * (epoch - 1) / epochs))
        order = rng.permutation(len(y_tr))
        for i in range(0, len(order), batch_size):
            b = order[i:i + batch_size]
            module.adam_step(params, state, lr, **{k: v[b] for k, v in x_tr.items()}, label=y_tr[b])
        seconds += time.perf_counter() - t0
        if progress or epoch == epochs:
            record(epoch)
        if progress:
            bar.set_postfix(test_acc=f"{hist['test_acc'][-1]:.3f}")
    hist.update(seconds=seconds, params=params, epochs=epochs, lr=lr0, batch_size=batch_size, kind=kind)
    return hist


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=None, help="default: 20 (RNN), 60 (baseline)")
    ap.add_argument("--lr", type=float, default=None, help="Adam's step size; default: 5e-3 (RNN), 3e-3 (baseline)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0, help="of the data, the init and the minibatches")
    ap.add_argument("--baseline", action="store_true",
                    help="train the dense net on one-hot tokens (BASELINE) instead of the RNN")
    ap.add_argument("--compile", action="store_true",
                    help="compile examples/brackets_rnn.yaml in-process instead of importing generated/")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    module = baseline_module() if args.baseline else load_module(args.compile)
    data = load_data(seed=args.seed)
    hist = train(module, data, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                 progress=not args.no_progress)
    print(f"{module.NAME} (adam, cosine lr {hist['lr']:g}, {hist['epochs']} epochs, batch {hist['batch_size']}, "
          f"{hist['seconds']:.2f} s training; {len(data[1])} training, {len(data[3])} test sequences)")
    print(f"  train: accuracy {100 * hist['train_acc'][-1]:.2f}%")
    print(f"  test:  accuracy {100 * hist['test_acc'][-1]:.2f}%")
    return hist


if __name__ == "__main__":
    main()
