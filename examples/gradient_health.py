"""What the gradients do in a deep thin chain: vanishing and exploding.

A chain of one-neuron layers (examples/deep_thin_chain.yaml, generalised):

    a_l = w_l * h_{l-1} + b_l,   h_l = act(a_l),   h_0 = x,   y_hat = h_L,
    L = (y - y_hat)**2 / 2

is written as spec text for each activation and depth, compiled in-process with
``bpcompile.compile(text).load()``, and differentiated by the generated module.
Reverse mode carries the adjoint back one link at a time,

    a_l_bar = h_l_bar * act'(a_l),   h_{l-1}_bar = w_l * a_l_bar,   w_l_bar = a_l_bar * h_{l-1},

so a_1_bar is a product of L factors w_l * act'(a_l).  With every weight set to
the same constant w (biases 0) the factor is at most w/4 for sigmoid (sigmoid'
<= 1/4), at most w for tanh, and exactly w for relu where the signal passes:
|dL/dw_1| / |dL/dw_L| shrinks geometrically with depth for sigmoid, saturated
tanh does the same, and relu with w > 1 blows up.

    python examples/gradient_health.py            # table + docs/gradient_health.png
    python examples/gradient_health.py --png ''   # table only

``gradient_norms`` and ``sweep`` return the numbers (tests/test_gradient_health.py).
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import numpy as np

import bpcompile

ROOT = Path(__file__).resolve().parent.parent
ACTIVATIONS = ("sigmoid", "tanh", "relu")
DEPTHS = (4, 8, 16, 32)
WEIGHTS = (1.0, 4.0)


def chain_spec(depth, activation="sigmoid"):
    """The spec text of a thin chain of ``depth`` one-neuron layers."""
    lines = [f"name: thin_chain_{activation}_{depth}",
             "inputs:", "  x: []", "  y: []", "params:"]
    lines += [f"  w{l}: {{shape: [], init: normal(1.0)}}" for l in range(1, depth + 1)]
    lines += [f"  b{l}: []" for l in range(1, depth + 1)]
    lines.append("graph:")
    for l in range(1, depth + 1):
        prev = "x" if l == 1 else f"h{l - 1}"
        out = "y_hat" if l == depth else f"h{l}"
        lines += [f"  a{l}: w{l} * {prev} + b{l}", f"  {out}: {activation}(a{l})"]
    lines += ["loss: (y - y_hat)**2 / 2", "output: y_hat"]
    return "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=None)
def chain_module(depth, activation="sigmoid"):
    """The generated gradient module of the chain, compiled in-process (cached)."""
    return bpcompile.compile(chain_spec(depth, activation)).load()


def gradient_norms(activation="sigmoid", depth=32, weight=1.0, init="constant",
                   seeds=5, batch=256):
    """Per-layer gradient magnitudes of the thin chain, averaged over seeds.

    init "constant": every w_l = weight, b_l = 0 (the seeds vary only the data);
    init "normal": w_l ~ weight * N(0, 1), b_l = 0, fresh per seed.
    Each seed draws a batch of x ~ N(0, 1), y ~ U(0, 1); the generated
    value_and_grad gives dL/dw_l and dL/db_l of the batch-mean loss, and the
    returned arrays (index l-1 for layer l) are the means over seeds of their
    absolute values: {"w": (depth,), "b": (depth,), "loss": mean loss}.
    """
    m = chain_module(depth, activation)
    gw, gb, losses = np.zeros(depth), np.zeros(depth), []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        if init == "constant":
            ws = np.full(depth, float(weight))
        elif init == "normal":
            ws = weight * rng.standard_normal(depth)
        else:
            raise ValueError("init must be 'constant' or 'normal'")
        params = {f"w{l}": np.asarray(ws[l - 1]) for l in range(1, depth + 1)}
        params.update({f"b{l}": np.asarray(0.0) for l in range(1, depth + 1)})
        x = rng.standard_normal(batch)
        y = rng.uniform(0, 1, batch)
        with np.errstate(over="ignore"):
            value, grads = m.value_and_grad(params, x=x, y=y)
        losses.append(value)
        gw += np.abs([grads[f"w{l}"] for l in range(1, depth + 1)])
        gb += np.abs([grads[f"b{l}"] for l in range(1, depth + 1)])
    return {"w": gw / seeds, "b": gb / seeds, "loss": float(np.mean(losses))}


def sweep(activations=ACTIVATIONS, depths=DEPTHS, weights=WEIGHTS, **kw):
    """gradient_norms for every (activation, weight, depth): a dict keyed by that triple."""
    return {(a, w, d): gradient_norms(a, d, w, **kw)
            for a in activations for w in weights for d in depths}


def ratio(first, last):
    return first / last if last > 0 else float("inf") if first > 0 else float("nan")


def table(results):
    """The summary as text: first vs last layer, for the weights and the biases."""
    head = (f"{'activation':<10} {'w':>4} {'depth':>5}   {'|dL/dw_1|':>10} {'|dL/dw_L|':>10} "
            f"{'w_1/w_L':>9}   {'|dL/db_1|/|dL/db_L|':>19}")
    rows = [head, "-" * len(head)]
    for (a, w, d), r in results.items():
        rows.append(f"{a:<10} {w:>4g} {d:>5}   {r['w'][0]:>10.2e} {r['w'][-1]:>10.2e} "
                    f"{ratio(r['w'][0], r['w'][-1]):>9.1e}   {ratio(r['b'][0], r['b'][-1]):>19.1e}")
    return "\n".join(rows)


def plot(results, path):
    """Log-scale gradient magnitudes against layer index l, one column per activation:
    the top row |dL/dw_l|, the bottom row |dL/db_l| (= |a_l_bar| summed over the batch,
    the signal reverse mode carries back).  One colour per depth, solid for w = 1,
    dashed for the large weight."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acts = list(dict.fromkeys(k[0] for k in results))
    weights = list(dict.fromkeys(k[1] for k in results))
    depths = list(dict.fromkeys(k[2] for k in results))
    colours = plt.cm.viridis(np.linspace(0, 0.85, len(depths)))
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(2, len(acts), figsize=(5 * len(acts), 8.2), sharex=True, squeeze=False)
    for col, a in enumerate(acts):
        for row, (key, what) in enumerate((("w", "|dL/dw_l|"), ("b", "|dL/db_l| = |a_l_bar|"))):
            ax = axes[row, col]
            for wi, w in enumerate(weights):
                for c, d in zip(colours, depths):
                    g = results[(a, w, d)][key]
                    layers = np.arange(1, d + 1)
                    ok = g > 0
                    ax.plot(layers[ok], g[ok], styles[wi % 4], color=c, marker="o", ms=2.5,
                            lw=1.5, label=f"w = {w:g}, depth {d}")
            ax.set_yscale("log")
            ax.set_xticks([1, 4, 8, 16, 24, 32])
            ax.grid(True, which="major", alpha=0.3)
            ax.set_title(f"{a}: {what}", fontsize=11)
            if row == 1:
                ax.set_xlabel("layer l  (1 = next to the input, L = depth = the output)")
            if col == 0:
                ax.set_ylabel(f"{what}  (log scale)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(depths), fontsize=9.5, frameon=False)
    fig.suptitle("Gradients in a thin chain, a_l = w_l h_(l-1) + b_l, h_l = act(a_l): every "
                 "w_l = w, b_l = 0, mean over 5 batches of 256")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--png", default=str(ROOT / "docs" / "gradient_health.png"),
                    help="where to write the plot ('' for none)")
    ap.add_argument("--large-weight", type=float, default=WEIGHTS[1])
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args(argv)
    results = sweep(weights=(1.0, args.large_weight), seeds=args.seeds)
    print(table(results))
    if args.png:
        plot(results, args.png)
        print(f"plot -> {args.png}")
    return results


if __name__ == "__main__":
    main()
