"""The C target's ``value_and_grad`` against the generated NumPy module, hand-written
NumPy, PyTorch eager, JAX jit and hand-written C (issue 13's "Fast" section).

    python benchmarks/bench_c.py                 # one and two threads (a child process each)
    python benchmarks/bench_c.py --threads 1     # one thread only
    python benchmarks/bench_c.py --quick         # smoke run (seconds)

Networks (float64 and float32): seed001 (3-3-1 tanh, batch 1 and 256), digits
(64-128-10 tanh, softmax cross-entropy, batch 32 and 256), MNIST (784-256-128-10
relu, batch 128), deep thin (32 tanh layers of width 64, squared error, batch 64).

All contenders run in one process, on the same parameters and batch, and are first
checked to agree with the generated NumPy module (loss and every gradient).  Each
round times a block of back-to-back calls of every contender (a block lasts about
``--round-seconds``, a few ms), the order rotated every round; the table gives the
minimum over rounds of the per-call time (µs; ``--stat median`` for the median:
on a shared machine the minimum is the block least disturbed by others) and the
ratios C / other (below 1: the C target is faster).  The thread count (BLAS, PyTorch, XLA) is fixed before
NumPy, PyTorch and JAX load, so each count runs in a process of its own; the
generated C is single-threaded either way.

Contenders:

* ``C``: the C target's loader (``bpcompile.compile(spec, target="c").load()``),
  built with the loader's default flags, called with ``check=False`` (the
  ``C chk`` column: with the argument checks, as called by default);
* ``np gen``: the generated NumPy module, ``check=False``;
* ``np hand``: hand-written NumPy backprop (bench_numpy.py's for digits and MNIST);
* ``torch``: PyTorch eager, forward then ``torch.autograd.grad`` (CPU tensors made once);
* ``jax``: ``jax.jit(jax.value_and_grad(loss))``, the result waited for;
* ``hand C``: bench_c_hand.c (digits and deep thin), built with the same flags,
  its GEMMs OpenBLAS's (the library NumPy loaded) or the generated code's
  own; the faster of the two is the yardstick.

Goals (issue 13): C / jax <= 0.5 on seed001 and digits batch 32, <= 0.8 on the
other rows; C / hand C <= 1.3 on digits and deep thin.  Nothing here asserts on
timings.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys


def _early_threads(argv):
    """Set the thread counts of BLAS, OpenMP and XLA before anything loads them."""
    threads = None
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            threads = argv[i + 1]
        elif a.startswith("--threads="):
            threads = a.split("=", 1)[1]
    if threads in (None, "both"):
        return
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = threads
    if threads == "1":
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                                   " intra_op_parallelism_threads=1").strip()


_early_threads(sys.argv[1:])

import ctypes  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from _common import HERE, ROOT, SPECS, _blas_libs, blas_info, random_batch, time_interleaved  # noqa: E402
from bench_numpy import hand_deep, hand_digits, hand_mnist, hand_seed001  # noqa: E402

import bpcompile  # noqa: E402
from bpcompile.targets.clike.gemm import gemm_source  # noqa: E402

# name -> (spec file, batch sizes)
NETWORKS = {
    "seed001": (ROOT / "examples" / "tanh_regression.yaml", (1, 256)),
    "digits": (SPECS / "digits_mlp_bench.yaml", (32, 256)),
    "mnist": (SPECS / "mnist_mlp_bench.yaml", (128,)),
    "deep": (SPECS / "deep_chain_bench_f32.yaml", (64,)),
}
DEEP_LAYERS = 32


def jax_goal(net, N):
    return 0.5 if (net, N) in (("seed001", 1), ("seed001", 256), ("digits", 32)) else 0.8


HAND_C_GOAL = 1.3


def spec_dict(net, dtype):
    path, _ = NETWORKS[net]
    d = yaml.safe_load(path.read_text())
    base = d["name"].removesuffix("_f32")
    d["dtype"] = dtype
    d["name"] = base + ("_f32" if dtype == "float32" else "")
    return d


# ---------------------------------------------------------------------------
# The networks written by hand: NumPy (bench_numpy's), and the same math for torch and JAX


HAND_NUMPY = {"seed001": hand_seed001, "digits": hand_digits, "mnist": hand_mnist, "deep": hand_deep}


def layers_of(net, params):
    """[(W name, b name, activation)] of the dense networks."""
    if net == "digits":
        return [("W1", "b1", "tanh"), ("W2", "b2", None)]
    if net == "mnist":
        return [("W1", "b1", "relu"), ("W2", "b2", "relu"), ("W3", "b3", None)]
    return [(f"W{i}", f"b{i}", "tanh") for i in range(1, DEEP_LAYERS + 1)]


def torch_contender(torch, net, params, inputs, dtype):
    tdt = torch.float64 if dtype == "float64" else torch.float32
    P = {k: torch.tensor(v, dtype=tdt, requires_grad=True) for k, v in params.items()}
    T = {k: torch.tensor(v) for k, v in inputs.items()}
    names = list(P)
    if "label" in T:
        T["label"] = T["label"].long()

    def loss_fn():
        if net == "seed001":
            e = torch.tanh(T["x"] @ P["W"].T + P["b"])
            return ((T["y"] - e @ P["v"]) ** 2).mean()
        h = T["x"]
        for W, b, act in layers_of(net, params):
            h = torch.nn.functional.linear(h, P[W], P[b])
            if act == "tanh":
                h = torch.tanh(h)
            elif act == "relu":
                h = torch.relu(h)
        if net == "deep":
            return ((h - T["y"]) ** 2).sum() / (2 * h.shape[0])
        return torch.nn.functional.cross_entropy(h, T["label"])

    def call():
        L = loss_fn()
        grads = torch.autograd.grad(L, [P[k] for k in names])
        return float(L.detach()), dict(zip(names, grads))
    return call


def jax_contender(jax, net, params, inputs, dtype):
    jnp = jax.numpy

    def loss_fn(P, T):
        if net == "seed001":
            e = jnp.tanh(T["x"] @ P["W"].T + P["b"])
            return jnp.mean((T["y"] - e @ P["v"]) ** 2)
        h = T["x"]
        for W, b, act in layers_of(net, params):
            h = h @ P[W].T + P[b]
            if act == "tanh":
                h = jnp.tanh(h)
            elif act == "relu":
                h = jax.nn.relu(h)
        if net == "deep":
            return jnp.sum((h - T["y"]) ** 2) / (2 * h.shape[0])
        logp = jax.nn.log_softmax(h, axis=1)
        return -jnp.mean(jnp.take_along_axis(logp, T["label"][:, None], axis=1))

    f = jax.jit(jax.value_and_grad(loss_fn))
    P = {k: jnp.asarray(v) for k, v in params.items()}
    T = {k: jnp.asarray(v) for k, v in inputs.items()}

    def call():
        L, g = f(P, T)
        jax.block_until_ready(g)
        return L, g
    return call


# ---------------------------------------------------------------------------
# Hand-written C (bench_c_hand.c)


class HandC:
    """bench_c_hand.c built for one dtype: value_and_grad of digits and deep thin,
    GEMMs through OpenBLAS (``blas=True``) or the generated code's own kernel."""

    def __init__(self, dtype, cflags, tmp: Path):
        self.dtype = dtype
        self.np_dtype = np.float64 if dtype == "float64" else np.float32
        src = tmp / f"hand_{dtype}.c"
        src.write_text("#include <stddef.h>\n" + gemm_source((dtype,)) + "\n"
                       + (HERE / "bench_c_hand.c").read_text())
        lib = tmp / f"hand_{dtype}.so"
        cc = shlex.split(os.environ.get("CC", "") or "cc")
        cmd = cc + shlex.split(cflags) + ["-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-fPIC",
                                          "-shared", *(["-DHAND_F32"] if dtype == "float32" else []),
                                          "-o", str(lib), str(src), "-lm"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"bench_c: {shlex.join(cmd)} failed:\n" + "\n".join(r.stderr.splitlines()[:20]))
        self.lib = ctypes.CDLL(str(lib))
        p = "s" if dtype == "float32" else "d"
        self.blas = None
        for path in _blas_libs():
            blas = ctypes.CDLL(path)
            for sym in (f"scipy_cblas_{p}gemm64_", f"cblas_{p}gemm64_"):
                fn = getattr(blas, sym, None)
                if fn is not None and self.blas is None:
                    self.blas = ctypes.cast(fn, ctypes.c_void_p).value
        P = ctypes.c_void_p
        self.lib.hand_mlp_tanh_ce.argtypes = [ctypes.c_int] * 4 + [P] * 11 + [P]
        self.lib.hand_mlp_tanh_ce_workspace.restype = ctypes.c_size_t
        self.lib.hand_deep_tanh.argtypes = [ctypes.c_int] * 3 + [P] * 8
        self.lib.hand_deep_tanh_workspace.restype = ctypes.c_size_t

    def contender(self, net, params, inputs, blas):
        """A call computing (loss, grads) into fresh gradient arrays, as the C target's loader does."""
        if blas and self.blas is None:
            return None
        lib, dt = self.lib, self.np_dtype
        set_blas = lib.hand_set_blas
        set_blas.argtypes = [ctypes.c_void_p]
        which = self.blas if blas else None
        loss = ctypes.c_double()
        loss_p = ctypes.addressof(loss)
        x = np.ascontiguousarray(inputs["x"], dt)
        N = x.shape[0]
        shapes = {k: v.shape for k, v in params.items()}
        if net == "digits":
            W1, b1, W2, b2 = (np.ascontiguousarray(params[k], dt) for k in ("W1", "b1", "W2", "b2"))
            H, D = W1.shape
            K = W2.shape[0]
            label = np.ascontiguousarray(inputs["label"], np.int32)
            ws = np.empty(lib.hand_mlp_tanh_ce_workspace(N, H, K) // dt().itemsize + 16, dt)
            fn = lib.hand_mlp_tanh_ce
            keep = (W1, b1, W2, b2, x, label)     # passed by address: alive as long as the call
            fixed = [N, D, H, K] + [a.ctypes.data for a in keep] + [loss_p]

            def call():
                assert keep
                set_blas(which)
                g = {k: np.empty(shapes[k], dt) for k in ("W1", "b1", "W2", "b2")}
                fn(*fixed, g["W1"].ctypes.data, g["b1"].ctypes.data, g["W2"].ctypes.data, g["b2"].ctypes.data,
                   ws.ctypes.data)
                return loss.value, g
            return call
        L = DEEP_LAYERS
        Ws = [np.ascontiguousarray(params[f"W{i}"], dt) for i in range(1, L + 1)]
        bs = [np.ascontiguousarray(params[f"b{i}"], dt) for i in range(1, L + 1)]
        Wd = Ws[0].shape[0]
        y = np.ascontiguousarray(inputs["y"], dt)
        ptrs = ctypes.c_void_p * L
        Wp, bp = ptrs(*[a.ctypes.data for a in Ws]), ptrs(*[a.ctypes.data for a in bs])
        ws = np.empty(lib.hand_deep_tanh_workspace(N, L, Wd) // dt().itemsize + 16, dt)
        fn = lib.hand_deep_tanh

        keep = (Ws, bs, x, y)                    # passed by address: alive as long as the call

        def call():
            assert keep
            set_blas(which)
            gW = [np.empty((Wd, Wd), dt) for _ in range(L)]
            gb = [np.empty(Wd, dt) for _ in range(L)]
            fn(N, L, Wd, Wp, bp, x.ctypes.data, y.ctypes.data, loss_p, ptrs(*[a.ctypes.data for a in gW]),
               ptrs(*[a.ctypes.data for a in gb]), ws.ctypes.data)
            g = {f"W{i}": gW[i - 1] for i in range(1, L + 1)}
            g.update({f"b{i}": gb[i - 1] for i in range(1, L + 1)})
            return loss.value, g
        return call


# ---------------------------------------------------------------------------


def max_error(got, ref):
    """(relative error of the loss, max over gradients of max |got - ref| / max |ref|)."""
    lg, gg = got
    lr, gr = ref
    el = abs(float(lg) - float(lr)) / max(abs(float(lr)), 1e-30)
    eg = max(float(np.max(np.abs(np.asarray(gg[k], np.float64) - gr[k]))) / max(float(np.max(np.abs(gr[k]))), 1e-30)
             for k in gr)
    return max(el, eg)


def optional(name):
    try:
        module = __import__(name)
    except Exception as e:  # noqa: BLE001  (a broken install is as good as none here)
        print(f"# {name}: skipped ({type(e).__name__}: {e})")
        return None
    return module


def run(args):
    torch = None if args.no_torch else optional("torch")
    jax = None if args.no_jax else optional("jax")
    if torch is not None:
        torch.set_num_threads(args.threads)
    if jax is not None:
        jax.config.update("jax_enable_x64", True)
        jax.config.update("jax_platforms", "cpu")
    rounds = args.rounds or (3 if args.quick else 15)
    target_s = args.round_seconds or (0.002 if args.quick else 0.005)
    print(f"# threads={args.threads}; {blas_info()}")
    if torch is not None:
        print(f"# torch {torch.__version__} (threads {torch.get_num_threads()})")
    if jax is not None:
        print(f"# jax {jax.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print(f"# load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1, 5, 15 min)")
    print(f"# rounds={rounds}, a block of each contender about {target_s * 1e3:.0f} ms per round;"
          f" times: {args.stat} over rounds, µs per call; ratios: C / other")
    names = ["C", "C chk", "np gen", "np hand", "torch", "jax", "hand C"]
    header = (f"{'network':<8} {'dtype':<7} {'batch':>5} " + " ".join(f"{n:>8}" for n in names)
              + " | " + " ".join(f"{'/' + n:>8}" for n in names[2:]) + "  goals")
    print(header)
    print("-" * len(header))
    misses = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_c_"))
    hands = {}
    for dtype in args.dtype:
        for net in args.network or NETWORKS:
            spec = spec_dict(net, dtype)
            c_mod = bpcompile.compile(spec, target="c").load()
            np_mod = bpcompile.compile(spec).load()
            if "cflags" not in hands:
                hands["cflags"] = c_mod._build_command(Path("OUT"), Path("SRC"))
            params = np_mod.init_params(0)
            for N in NETWORKS[net][1]:
                if args.quick and N != NETWORKS[net][1][0]:
                    continue
                inputs = random_batch(np_mod, N, seed=N)
                ref = np_mod.value_and_grad(params, **inputs)
                contenders = {
                    "C": lambda: c_mod.value_and_grad(params, **inputs, check=False),
                    "C chk": lambda: c_mod.value_and_grad(params, **inputs),
                    "np gen": lambda: np_mod.value_and_grad(params, **inputs, check=False),
                    "np hand": lambda: HAND_NUMPY[net](params, **inputs),
                }
                if torch is not None:
                    contenders["torch"] = torch_contender(torch, net, params, inputs, dtype)
                if jax is not None:
                    contenders["jax"] = jax_contender(jax, net, params, inputs, dtype)
                if net in ("digits", "deep"):
                    if dtype not in hands:
                        hands[dtype] = HandC(dtype, c_mod.cflags(), tmp)
                    for blas in (True, False):
                        fn = hands[dtype].contender(net, params, inputs, blas)
                        if fn is not None:
                            contenders["hand C blas" if blas else "hand C ours"] = fn
                tol = 1e-9 if dtype == "float64" else 2e-4
                for k, fn in contenders.items():
                    err = max_error(fn(), ref)
                    if not err <= tol:
                        raise SystemExit(f"bench_c: {net} {dtype} N={N}: {k} disagrees with the NumPy module "
                                         f"(relative error {err:.2e} > {tol})")
                keys = list(contenders)
                timed = time_interleaved([contenders[k] for k in keys], rounds, target_s, equal_blocks=True)
                stat = min if args.stat == "min" else statistics.median
                med = {k: stat(t) for k, (t, _) in zip(keys, timed)}
                hand_keys = [k for k in med if k.startswith("hand C")]
                if hand_keys:
                    best = min(hand_keys, key=med.get)
                    med["hand C"] = med[best]
                cells = " ".join(f"{med[n] * 1e6:>8.1f}" if n in med else f"{'-':>8}" for n in names)
                ratios = " ".join(f"{med['C'] / med[n]:>8.2f}" if n in med else f"{'-':>8}" for n in names[2:])
                goals = []
                if "jax" in med:
                    r, g = med["C"] / med["jax"], jax_goal(net, N)
                    goals.append(f"jax<={g}:{'met' if r <= g else 'MISS'}")
                    if r > g:
                        misses.append(f"{net} {dtype} N={N}: C/jax {r:.2f} > {g}")
                if "hand C" in med:
                    r = med["C"] / med["hand C"]
                    goals.append(f"hand<={HAND_C_GOAL}:{'met' if r <= HAND_C_GOAL else 'MISS'}"
                                 f"({best.removeprefix('hand C ')})")
                    if r > HAND_C_GOAL:
                        misses.append(f"{net} {dtype} N={N}: C/hand C {r:.2f} > {HAND_C_GOAL}")
                print(f"{net:<8} {dtype:<7} {N:>5} {cells} | {ratios}  {' '.join(goals)}", flush=True)
                if hand_keys and len(hand_keys) > 1:
                    print(f"#   hand C: blas {med['hand C blas'] * 1e6:.1f} µs, ours {med['hand C ours'] * 1e6:.1f} µs")
    print(f"# C built with: {shlex.join(hands.get('cflags', []))}")
    print(f"# load after: {os.getloadavg()[0]:.2f}")
    print("# goals: " + ("all met" if not misses else f"{len(misses)} missed: " + "; ".join(misses)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="both", choices=["1", "2", "both"],
                    help="BLAS / torch / XLA threads (default both: a child process each)")
    ap.add_argument("--quick", action="store_true", help="smoke run: first batch size only, short rounds")
    ap.add_argument("--rounds", type=int, default=None, help="timing rounds (default 15, quick 3)")
    ap.add_argument("--round-seconds", type=float, default=None, help="one block's length (default 0.005 s)")
    ap.add_argument("--network", choices=sorted(NETWORKS), action="append", help="only these (repeatable)")
    ap.add_argument("--dtype", nargs="+", default=["float64", "float32"], choices=["float64", "float32"])
    ap.add_argument("--stat", choices=["min", "median"], default="min", help="per-call time over rounds")
    ap.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    ap.add_argument("--no-jax", action="store_true", help="leave JAX out")
    args = ap.parse_args(argv)
    if args.threads == "both":
        rest = [a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("--threads")]
        status = 0
        for n in ("1", "2"):
            status |= subprocess.call([sys.executable, str(Path(__file__).resolve()), "--threads", n, *rest])
            print(flush=True)
        return status
    args.threads = int(args.threads)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
