"""Forms of the embedding gradient's scatter-add in NumPy, timed against each other.

    python benchmarks/bench_scatter_add.py            # the full grid (a minute or two)
    python benchmarks/bench_scatter_add.py --quick    # a smoke run (a few seconds)

The gradient of ``e = E[tokens]`` (``E: [V, D]``, M = N*T token positions) is
``E_bar[v] = sum of e_bar[p] over the positions p with tokens[p] == v``: a
scatter-add of M rows of length D into V rows.  The forms timed:

* ``add.at``: ``np.add.at(out, tokens, g)`` (NumPy's unbuffered in-place add);
* ``bincount``: one ``np.bincount`` over the flat index ``tokens * D + column``,
  weights ``g`` flattened (no Python loop; bincount accumulates in float64);
* ``bincount/col``: one ``np.bincount`` per column, a Python loop over D;
* ``onehot@``: ``onehot(tokens).T @ g``, a (V x M) @ (M x D) GEMM: V*M*D work;
* ``sort+reduceat``: a stable argsort of the tokens, ``np.add.reduceat`` of the
  sorted rows over each run of one token, written to the rows present.

Every form is first checked against ``np.add.at`` (allclose), then each is timed
with interleaved rounds (the forms in a rotated order every round, so drift in
the machine's speed hits all alike); the table shows the best per-call time over
the rounds, in microseconds, which form is fastest, and the form the generated
NumPy code uses for those sizes (``targets/numpy/printer.py``, ``scatter_form``:
decided at compile time from V, D and the dtype; M = N*T is known only at run
time) with its time over the fastest's.
Nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _common import blas_info, set_blas_threads

from bpcompile.targets.numpy.printer import scatter_form  # noqa: E402  (path set up by _common)


def add_at(tok, g, V):
    out = np.zeros((V, g.shape[1]), g.dtype)
    np.add.at(out, tok, g)
    return out


def bincount(tok, g, V):
    D = g.shape[1]
    flat = (tok[:, None] * D + np.arange(D)).reshape(-1)
    return np.bincount(flat, weights=g.reshape(-1), minlength=V * D).reshape(V, D).astype(g.dtype, copy=False)


def bincount_columns(tok, g, V):
    return np.stack([np.bincount(tok, weights=g[:, j], minlength=V) for j in range(g.shape[1])],
                    axis=1).astype(g.dtype, copy=False)


def onehot_gemm(tok, g, V):
    return (tok == np.arange(V)[:, None]).astype(g.dtype) @ g


def sort_reduceat(tok, g, V):
    order = np.argsort(tok, kind="stable")
    s = tok[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    out = np.zeros((V, g.shape[1]), g.dtype)
    out[s[starts]] = np.add.reduceat(g[order], starts, axis=0)
    return out


FORMS = {"add.at": add_at, "bincount": bincount, "bincount/col": bincount_columns,
         "onehot@": onehot_gemm, "sort+reduceat": sort_reduceat}
# a form is left out of a size where one call would take far too long (V*M*D GEMM work)
TOO_SLOW = {"onehot@": lambda V, D, M: V * M * D > 4e9}


def time_forms(V, D, M, dtype, rounds, budget):
    rng = np.random.default_rng(0)
    tok = rng.integers(0, V, M)
    g = rng.standard_normal((M, D)).astype(dtype)
    want = add_at(tok, g, V)
    forms = {k: f for k, f in FORMS.items() if not TOO_SLOW.get(k, lambda *a: False)(V, D, M)}
    for name, f in forms.items():
        got = f(tok, g, V)
        tol = 1e-4 if dtype == np.float32 else 1e-10
        assert got.dtype == g.dtype and np.allclose(got, want, rtol=tol, atol=tol * M), (name, V, D, M)
    # calls per round: about ``budget`` seconds for the slowest form
    t0 = time.perf_counter()
    for f in forms.values():
        f(tok, g, V)
    number = max(1, int(budget / max(time.perf_counter() - t0, 1e-7)))
    best = {k: float("inf") for k in forms}
    names = list(forms)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            f = forms[name]
            t = time.perf_counter()
            for _ in range(number):
                f(tok, g, V)
            best[name] = min(best[name], (time.perf_counter() - t) / number)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few small sizes, few rounds")
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1)")
    args = ap.parse_args(argv)
    set_blas_threads(args.threads)
    print(f"# machine: {blas_info()}")
    if args.quick:
        grid = [(30, 16, 64), (1000, 64, 1000)]
        rounds, budget = 3, 0.005
    else:
        grid = [(V, D, M) for V in (30, 1000, 30000) for D in (16, 256) for M in (64, 1000, 50000)]
        grid += [(30, 64, 1000), (30, 64, 50000), (1000, 64, 50000)]
        rounds, budget = 5, 0.05
    names = list(FORMS)
    print("# best per-call time over interleaved rounds, microseconds; '-' = not run (too slow)")
    print("# generated: the form the generated NumPy code uses for these V, D and dtype (scatter_form)")
    print(f"{'dtype':8} {'V':>6} {'D':>4} {'M':>6}  " + "  ".join(f"{n:>13}" for n in names)
          + "  fastest        generated")
    for dtype in (np.float64, np.float32):
        for V, D, M in sorted(grid):
            best = time_forms(V, D, M, dtype, rounds, budget)
            cells = [f"{best[n] * 1e6:13.1f}" if n in best else f"{'-':>13}" for n in names]
            fastest = min(best, key=best.get)
            form = {"onehot": "onehot@"}.get(scatter_form(V, D, np.dtype(dtype).name), "bincount")
            print(f"{np.dtype(dtype).name:8} {V:6d} {D:4d} {M:6d}  " + "  ".join(cells)
                  + f"  {fastest:13}  {form} ({best[form] / best[fastest]:.2f}x the fastest)")


if __name__ == "__main__":
    main()
