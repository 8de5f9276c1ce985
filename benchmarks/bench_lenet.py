"""LeNet value_and_grad on the CPU: the generated NumPy module against hand-written
NumPy, PyTorch eager and JAX jit, single thread.

    python benchmarks/bench_lenet.py            # full run (a minute or two)
    python benchmarks/bench_lenet.py --quick    # smoke run (seconds)

The network (issue 12): conv 5x5x6 -> relu -> max pool 2 -> conv 5x5x16 -> relu ->
max pool 2 -> flatten -> dense 120 relu -> 84 relu -> 10, softmax cross-entropy,
mean over a batch of 1x28x28 images (64 by default), in float32 and float64.  Each
contender computes the loss and the gradients of all ten params:

* ``generated``: the NumPy module compiled from ``benchmarks/specs/lenet_bench.yaml``
  (its float32 twin: the same spec with ``dtype: float32``), called as users call
  it (``check=True``).  Until the compiler has the spec's ops, the spec does not
  compile: the script then prints ``generated: skipped: <reason>`` and goes on.
* ``hand``: hand-written NumPy backprop, the bar the generated code must meet.
  Activations are laid out [C, H, W, N] (channels first, the batch last), so that
  every im2col copy, pooling view and col2im add runs over contiguous blocks of
  W*N entries; each convolution is one GEMM over an im2col copy made from
  ``sliding_window_view``, and its input gradient a col2im (one add per kernel
  offset); max pooling (stride == kernel) reads the four window positions through
  a reshape, is taken before the bias and the relu (max(z + b) = max(z) + b and
  relu is monotone: the same values, on a 4x smaller array) and routes the
  adjoint to the first maximum of each window, as PyTorch does.
* ``torch``: PyTorch eager on the CPU (``F.conv2d``, ``F.max_pool2d``, ``F.linear``,
  ``F.cross_entropy``, then ``torch.autograd.grad``: fresh gradients each call).
  Its tensors share memory with the NumPy arrays (``torch.from_numpy``).
* ``jax``: ``jax.jit(jax.value_and_grad(loss))`` with ``lax.conv_general_dilated``
  and ``lax.reduce_window`` (what ``flax.linen.max_pool`` uses), arrays placed on
  the device once; each call waits for its result (``block_until_ready``).

One thread everywhere, set the same way for all: before NumPy, PyTorch or JAX load,
``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and ``MKL_NUM_THREADS`` are 1 and
``XLA_FLAGS`` asks for no multi-threaded Eigen and one intra-op thread; then
``torch.set_num_threads(1)`` (and one inter-op thread).  XLA's CPU client sizes its
thread pool from the CPUs the process may run on, whatever the flags say, so the
process is also pinned to one CPU (``os.sched_setaffinity``; ``--cpu`` picks it,
``--no-pin`` leaves the affinity alone).  The threads line of the output says what
each library then reports.

Before timing, every contender is checked against the hand-written backprop in
float64 on the same params and batch (both dtypes' data are float32 values, so
the float64 reference is exact for both): the loss and each gradient must agree
to ``1e-5`` (float32) or ``1e-10`` (float64) relative to the gradient's largest
entry; a mismatch exits 1.  Timing: each round times a block of back-to-back
calls of each contender (about ``--round-seconds`` long; one count per contender),
the order rotated every round (a fixed order makes whatever runs after JAX or
PyTorch look up to 2x slower); the table gives the median and the minimum over
rounds of the per-call time and the ratios to PyTorch and to the hand-written.
The issue's goal: generated / torch <= 1.5 in both dtypes.  Nothing here asserts
on timings.
"""

from __future__ import annotations

import os
import sys

_XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
if __name__ == "__main__":   # (imported by the tests for hand_lenet: no side effects then)
    # One thread: set before NumPy (OpenBLAS), PyTorch (OpenMP, MKL) or XLA read them.
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = "1"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_XLA_ONE_THREAD}".strip()

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from numpy.lib.stride_tricks import sliding_window_view  # noqa: E402

from _common import SPECS, blas_info, softmax_ce_backward_inplace, time_interleaved  # noqa: E402

import bpcompile  # noqa: E402  (path set up by _common)

SPEC = SPECS / "lenet_bench.yaml"
IMAGE = (1, 28, 28)
CLASSES = 10
# the spec's params, in its order: conv kernels [O, C, K, K], per-channel biases
# [O, 1, 1], dense weights [out, in] and biases [out]
PARAM_SHAPES = {"W1": (6, 1, 5, 5), "b1": (6, 1, 1), "W2": (16, 6, 5, 5), "b2": (16, 1, 1),
                "W3": (120, 256), "b3": (120,), "W4": (84, 120), "b4": (84,), "W5": (10, 84), "b5": (10,)}
TOLERANCE = {"float32": 1e-5, "float64": 1e-10}
CONTENDERS = ("generated", "hand", "torch", "jax")


def make_batch(n, seed=0):
    """Params (PyTorch's default init: uniform in +-1/sqrt(fan_in), biases too), a
    batch of standard normal images and uniform labels; float32 values, in float64."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in PARAM_SHAPES.items():
        fan_in = int(np.prod(PARAM_SHAPES["W" + name[1:]][1:]))
        bound = 1.0 / np.sqrt(fan_in)
        params[name] = rng.uniform(-bound, bound, shape).astype(np.float32).astype(np.float64)
    x = rng.standard_normal((n, *IMAGE)).astype(np.float32).astype(np.float64)
    label = rng.integers(0, CLASSES, n)
    return params, x, label


# ---------------------------------------------------------------------------
# Hand-written backprop.  Activations are [C, H, W, N]: channels first, the batch
# last, so that slices over rows and columns are blocks of contiguous W*N entries.


def _im2col(h, K):
    """[C, H, W, N] -> the columns of a KxK convolution, [C*K*K, Ho*Wo*N] (a copy):
    row (c, i, j) holds h[c, i:i+Ho, j:j+Wo, :]."""
    C, H, W, N = h.shape
    win = sliding_window_view(h, (K, K), axis=(1, 2))          # [C, Ho, Wo, N, K, K], a view
    return win.transpose(0, 4, 5, 1, 2, 3).reshape(C * K * K, (H - K + 1) * (W - K + 1) * N)


def _windows(a):
    """The four positions of the 2x2 pooling windows of a [C, H, W, N] array (views)."""
    C, H, W, N = a.shape
    r = a.reshape(C, H // 2, 2, W // 2, 2, N)
    return r[:, :, 0, :, 0], r[:, :, 0, :, 1], r[:, :, 1, :, 0], r[:, :, 1, :, 1]


def _conv_pool_relu(h, W, b):
    """relu(max_pool2d(conv2d(h, W) + b, 2)), computed as relu(max_pool2d(conv) + b).
    Returns the im2col columns, the convolution z [O, Ho, Wo, N], its pooled max m and
    the layer's output."""
    O, C, K, _ = W.shape
    cols = _im2col(h, K)
    Ho = h.shape[1] - K + 1
    z = (W.reshape(O, C * K * K) @ cols).reshape(O, Ho, Ho, h.shape[3])
    q = _windows(z)
    m = np.maximum(q[0], q[1])
    np.maximum(m, np.maximum(q[2], q[3]), out=m)
    out = m + b.reshape(O, 1, 1, 1)
    np.maximum(out, 0, out=out)
    return cols, z, m, out


def _unpool(g, z, m):
    """The adjoint of z from the adjoint g of its 2x2 max m: each window's first
    maximum (in row-major order, as PyTorch) gets g, the other three entries 0."""
    out = np.empty_like(z)
    taken = None
    for o, q in zip(_windows(out), _windows(z)):
        hit = q == m
        if taken is None:
            taken = hit
        else:
            hit &= ~taken
            taken |= hit
        np.multiply(g, hit, out=o)
    return out


def hand_lenet(params, x, label):
    """The loss and the gradients of every param, as the generated value_and_grad."""
    N = x.shape[0]
    W1, W2, W3, W4, W5 = (params[f"W{i}"] for i in range(1, 6))
    b1, b2 = params["b1"], params["b2"]
    O1, (O2, C2, K2, _) = W1.shape[0], W2.shape
    # forward
    xt = np.ascontiguousarray(x.transpose(1, 2, 3, 0))          # [C, H, W, N]
    cols1, z1, m1, h1 = _conv_pool_relu(xt, W1, b1)
    cols2, z2, m2, h2 = _conv_pool_relu(h1, W2, b2)
    f = h2.reshape(-1, N).T                                      # flatten: [N, C*H*W], a view
    h3 = f @ W3.T
    h3 += params["b3"]
    np.maximum(h3, 0, out=h3)
    h4 = h3 @ W4.T
    h4 += params["b4"]
    np.maximum(h4, 0, out=h4)
    g = h4 @ W5.T
    g += params["b5"]
    loss = softmax_ce_backward_inplace(g, label, np.arange(N), N)   # g <- dL/dz5
    # backward: dense layers
    gW5 = g.T @ h4
    gb5 = g.sum(axis=0)
    d4 = g @ W5
    d4 *= h4 > 0
    gW4 = d4.T @ h3
    gb4 = d4.sum(axis=0)
    d3 = d4 @ W4
    d3 *= h3 > 0
    gW3 = d3.T @ f
    gb3 = d3.sum(axis=0)
    # conv 2: relu, bias, pool, then the GEMMs; its input's adjoint by col2im
    gh2 = (W3.T @ d3.T).reshape(h2.shape)                        # [C, H, W, N]
    gh2 *= h2 > 0
    gb2 = gh2.reshape(O2, -1).sum(axis=1)
    gz2 = _unpool(gh2, z2, m2).reshape(O2, -1)
    gW2 = (gz2 @ cols2.T).reshape(W2.shape)
    Ho = z2.shape[1]
    dcols = (W2.reshape(O2, -1).T @ gz2).reshape(C2, K2, K2, Ho, Ho, N)
    gh1 = np.zeros_like(h1)
    for i in range(K2):
        for j in range(K2):
            gh1[:, i:i + Ho, j:j + Ho] += dcols[:, i, j]
    # conv 1 (its input's adjoint is not needed)
    gh1 *= h1 > 0
    gb1 = gh1.reshape(O1, -1).sum(axis=1)
    gz1 = _unpool(gh1, z1, m1).reshape(O1, -1)
    gW1 = (gz1 @ cols1.T).reshape(W1.shape)
    return float(loss), {"W1": gW1, "b1": gb1.reshape(b1.shape), "W2": gW2, "b2": gb2.reshape(b2.shape),
                         "W3": gW3, "b3": gb3, "W4": gW4, "b4": gb4, "W5": gW5, "b5": gb5}


# ---------------------------------------------------------------------------
# The contenders: each a function (params, x, label) -> a call of no arguments
# returning (loss, {name: gradient}); the arrays are converted once, here.


def generated_contender(dtype):
    """The compiled spec's value_and_grad, or the one-line reason it cannot be had."""
    text = SPEC.read_text()
    if dtype == "float32":
        text = text.replace("name: lenet_bench\n", "name: lenet_bench_f32\n") + "dtype: float32\n"
    try:
        module = bpcompile.compile(bpcompile.parse_spec(text, file=str(SPEC.relative_to(SPECS.parent.parent))))
    except bpcompile.SpecError as e:
        return None, f"the spec does not compile yet: {e}"
    module = module.load()
    shapes = {k: tuple(v) for k, v in module.PARAM_SHAPES.items()}
    assert shapes == PARAM_SHAPES, shapes

    def contender(params, x, label):
        vag = module.value_and_grad
        return lambda: vag(params, x=x, label=label)
    return contender, None


def hand_contender(dtype):
    return (lambda params, x, label: lambda: hand_lenet(params, x, label)), None


def torch_contender(dtype):
    if importlib.util.find_spec("torch") is None:
        return None, "PyTorch is not installed"
    import torch
    import torch.nn.functional as F

    def contender(params, x, label):
        p = {k: torch.from_numpy(v).requires_grad_() for k, v in params.items()}
        leaves = list(p.values())
        tx, tl = torch.from_numpy(x), torch.from_numpy(label)

        def vag():
            h = F.max_pool2d(F.relu(F.conv2d(tx, p["W1"], p["b1"].view(-1))), 2)
            h = F.max_pool2d(F.relu(F.conv2d(h, p["W2"], p["b2"].view(-1))), 2)
            h = F.relu(F.linear(h.flatten(1), p["W3"], p["b3"]))
            h = F.relu(F.linear(h, p["W4"], p["b4"]))
            loss = F.cross_entropy(F.linear(h, p["W5"], p["b5"]), tl)
            grads = torch.autograd.grad(loss, leaves)
            return loss.item(), dict(zip(p, grads))
        return vag
    return contender, None


def jax_contender(dtype):
    if importlib.util.find_spec("jax") is None:
        return None, "JAX is not installed"
    import jax
    import jax.numpy as jnp
    from jax import lax

    dims = ("NCHW", "OIHW", "NCHW")

    def conv_relu_pool(h, W, b):
        h = jax.nn.relu(lax.conv_general_dilated(h, W, (1, 1), "VALID", dimension_numbers=dims) + b)
        return lax.reduce_window(h, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")

    def loss(p, x, label):
        h = conv_relu_pool(x, p["W1"], p["b1"])
        h = conv_relu_pool(h, p["W2"], p["b2"])
        h = jax.nn.relu(h.reshape(h.shape[0], -1) @ p["W3"].T + p["b3"])
        h = jax.nn.relu(h @ p["W4"].T + p["b4"])
        logp = jax.nn.log_softmax(h @ p["W5"].T + p["b5"])
        return -jnp.mean(jnp.take_along_axis(logp, label[:, None], axis=1))

    vag = jax.jit(jax.value_and_grad(loss))

    def contender(params, x, label):
        args = jax.device_put(({k: v for k, v in params.items()}, x, label))

        def call():
            value, grads = jax.block_until_ready(vag(*args))
            return float(value), grads
        return call
    return contender, None


BUILDERS = {"generated": generated_contender, "hand": hand_contender, "torch": torch_contender,
            "jax": jax_contender}


# ---------------------------------------------------------------------------


def set_threads(cpu, pin):
    """One thread for PyTorch and XLA (the environment variables are set above), the
    process pinned to one CPU; a line saying what each library reports."""
    notes = []
    if pin:
        allowed = sorted(os.sched_getaffinity(0))
        cpu = allowed[-1] if cpu is None else cpu
        os.sched_setaffinity(0, {cpu})
        notes.append(f"pinned to CPU {cpu} of {allowed}")
    if importlib.util.find_spec("torch") is not None:
        import torch
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
        notes.append(f"torch {torch.__version__} threads={torch.get_num_threads()} "
                     f"interop={torch.get_num_interop_threads()}")
    if importlib.util.find_spec("jax") is not None:
        import jax
        jax.config.update("jax_enable_x64", True)     # float64 arrays stay float64
        notes.append(f"jax {jax.__version__} XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    if importlib.util.find_spec("threadpoolctl") is not None:
        from threadpoolctl import threadpool_info
        pools = sorted({f"{p['internal_api']}={p['num_threads']}" for p in threadpool_info()})
        notes.append("threadpoolctl: " + " ".join(pools))
    return "; ".join(notes)


def relative_error(a, ref):
    """max |a - ref| relative to the largest |ref| (1 if ref is all zeros)."""
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(a - ref)) / (np.max(np.abs(ref)) or 1.0))


def check(name, dtype, result, reference):
    """The loss and every gradient of ``result`` against the float64 reference; the
    worst relative error, or exit 1 naming the first gradient that disagrees."""
    loss, grads = result
    ref_loss, ref_grads = reference
    worst = relative_error(loss, ref_loss)
    if worst > TOLERANCE[dtype]:
        sys.exit(f"{name} {dtype}: loss {loss!r} differs from the reference {ref_loss!r}")
    if set(grads) != set(ref_grads):
        sys.exit(f"{name} {dtype}: gradients of {sorted(grads)}, expected {sorted(ref_grads)}")
    for k, ref in ref_grads.items():
        g = np.asarray(grads[k])
        if g.shape != ref.shape or g.dtype != np.dtype(dtype):
            sys.exit(f"{name} {dtype}: gradient {k} has shape {g.shape} and dtype {g.dtype}, "
                     f"expected {ref.shape} and {dtype}")
        err = relative_error(g, ref)
        if err > TOLERANCE[dtype]:
            sys.exit(f"{name} {dtype}: gradient {k} differs from the reference by {err:.2e} "
                     f"(tolerance {TOLERANCE[dtype]:.0e})")
        worst = max(worst, err)
    return worst


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: few short rounds")
    ap.add_argument("--batch", type=int, default=64, help="images per batch (default 64)")
    ap.add_argument("--rounds", type=int, default=None, help="timing rounds (default 21, quick 3)")
    ap.add_argument("--round-seconds", type=float, default=None,
                    help="length of one contender's block of calls (default 0.05 s, quick 0.005 s)")
    ap.add_argument("--dtype", choices=sorted(TOLERANCE), action="append", help="only these dtypes (repeatable)")
    ap.add_argument("--contender", choices=CONTENDERS, action="append", help="only these contenders (repeatable)")
    ap.add_argument("--cpu", type=int, default=None, help="the CPU to pin to (default: the last allowed one)")
    ap.add_argument("--no-pin", action="store_true", help="leave the CPU affinity alone")
    args = ap.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 21)
    target_s = args.round_seconds or (0.005 if args.quick else 0.05)
    dtypes = args.dtype or ["float32", "float64"]
    names = [c for c in CONTENDERS if c in (args.contender or CONTENDERS)]

    threads = set_threads(args.cpu, not args.no_pin)
    print(f"# machine: {blas_info()}")
    print(f"# threads: {threads}")
    params64, x64, label = make_batch(args.batch)
    reference = hand_lenet(params64, x64, label)
    summary = {}
    for dtype in dtypes:
        params = {k: v.astype(dtype) for k, v in params64.items()}
        x = x64.astype(dtype)
        calls, skipped = {}, {}
        for name in names:
            t0 = time.perf_counter()
            build, reason = BUILDERS[name](dtype)
            if build is None:
                skipped[name] = reason
                print(f"{name}: skipped: {reason}")
                continue
            calls[name] = build(params, x, label)
            err = check(name, dtype, calls[name](), reference)    # the first call: JAX compiles here
            print(f"# {name} {dtype}: ready in {time.perf_counter() - t0:.2f} s; loss and gradients match "
                  f"the float64 reference (worst relative error {err:.1e})")
        timed = list(calls)
        if not timed:
            summary[dtype] = ({}, skipped)
            continue
        results = time_interleaved([calls[n] for n in timed], rounds, target_s, equal_blocks=True)
        med = {n: statistics.median(t) for n, (t, _) in zip(timed, results)}
        low = {n: min(t) for n, (t, _) in zip(timed, results)}
        print(f"# LeNet, batch {args.batch}, {dtype}: {rounds} rounds of ~{target_s * 1e3:.0f} ms blocks, "
              "order rotated; per-call times")
        header = f"{'contender':<10} {'dtype':<8} {'median ms':>10} {'min ms':>8} {'/torch':>7} {'/hand':>7}"
        print(header)
        print("-" * len(header))
        for n in names:
            if n not in med:
                print(f"{n:<10} {dtype:<8} {'skipped':>10}")
                continue
            rel = [f"{med[n] / med[r]:>7.2f}" if r in med else f"{'-':>7}" for r in ("torch", "hand")]
            print(f"{n:<10} {dtype:<8} {med[n] * 1e3:>10.2f} {low[n] * 1e3:>8.2f} {rel[0]} {rel[1]}")
        summary[dtype] = (med, skipped)
    print("ratios of medians:")
    for dtype, (med, _) in summary.items():
        pairs = [(a, b) for a, b in (("hand", "torch"), ("jax", "torch"), ("generated", "torch"),
                                     ("generated", "hand")) if a in med and b in med]
        print(f"  {dtype}: " + (", ".join(f"{a}/{b} {med[a] / med[b]:.2f}" for a, b in pairs) or "none"))
    goal = []
    for dtype, (med, skipped) in summary.items():
        if "generated" in med and "torch" in med:
            r = med["generated"] / med["torch"]
            goal.append(f"{dtype} {r:.2f} ({'met' if r <= 1.5 else 'not met'})")
        else:
            missing = next(n for n in ("generated", "torch") if n not in med)
            goal.append(f"{dtype} not measured ({missing} {'skipped' if missing in skipped else 'not chosen'})")
    print("goal generated/torch <= 1.5: " + "; ".join(goal))
    return 0


if __name__ == "__main__":
    sys.exit(main())
