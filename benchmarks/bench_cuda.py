"""Generated CUDA ``value_and_grad`` against PyTorch eager autograd (and JAX jit) on the GPU.

    python benchmarks/bench_cuda.py            # full run (nvcc builds each .cu first)
    python benchmarks/bench_cuda.py --quick    # smoke run: every spec compiled, short timings

Needs an NVIDIA GPU, nvcc (the loader builds each ``.cu`` on first use), CuPy (the
loader's zero-copy path: device arrays in, device arrays out) and PyTorch; JAX is
timed too when it is installed with a GPU backend.  Whatever is missing, every
benchmark spec is first compiled to CUDA and its loader imported (so the specs and
the generator are checked on any machine); then the script prints
``skipped: <reason>`` and exits 0.

Everything is float32, on the same parameters and batch, resident on the GPU before
timing.  The generated gradients (and JAX's) are first checked against torch: the
loss to ``--rtol`` relative, each gradient to ``--rtol`` of its largest entry.  Then
each side is timed in interleaved rounds: a round is ``number`` calls back to back
and one synchronize, timed with perf_counter; the table gives the median per-call
time over the rounds.  TF32 is off everywhere (torch's flag, JAX's "highest" matmul
precision; the generated code calls plain cublasSgemm).

What each side does per call:

* generated: the loader's public ``value_and_grad`` with CuPy arrays: argument
  checks (for labels a range check, which reads two values back), one C call,
  fresh gradient arrays from CuPy's pool.  It returns the loss as a Python float, so every call
  waits for the GPU.
* torch eager: forward with ``F.linear``, then ``torch.autograd.grad`` (fresh
  gradients, nothing accumulated).  The loss stays on the GPU: calls are not made to
  wait, which favours torch.
* JAX: ``jit(value_and_grad(loss))``, asynchronous like torch.
* GEMMs (the wide network only): the five GEMMs of its value_and_grad (forward
  W1 x and W2 h1; backward W2_bar, h1_bar and W1_bar; x_bar is not needed) with
  ``torch.mm`` into preallocated outputs, nothing else: a floor for the GPU time.

Goals: torch / generated >= 2 on the small networks (launches and Python overhead
dominate there), generated / GEMMs <= 1.1 on the wide one.  Nothing here asserts on
timings; a gradient mismatch exits 1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from functools import partial

import numpy as np
import yaml

from _common import SPECS, random_batch

import bpcompile  # noqa: E402  (path set up by _common)


@dataclass(frozen=True)
class Network:
    spec: str              # file under benchmarks/specs/ (a dense stack in the layers: shorthand)
    loss: str              # "softmax_ce" (against the input label) or "half_sse" (against y)
    batches: tuple
    small: bool            # goal: torch / generated >= 2
    gemms: bool = False    # also time its GEMMs alone (goal: generated / GEMMs <= 1.1)

    @property
    def target(self):
        return "label" if self.loss == "softmax_ce" else "y"


NETWORKS = {
    "digits": Network("digits_mlp_bench_f32.yaml", "softmax_ce", (32, 256), small=True),
    "mnist": Network("mnist_mlp_bench_f32.yaml", "softmax_ce", (128,), small=True),
    "deep": Network("deep_chain_bench_f32.yaml", "half_sse", (64,), small=True),
    "wide": Network("wide_mlp_bench_f32.yaml", "half_sse", (256,), small=False, gemms=True),
}
SMALL_GOAL = 2.0    # torch / generated, on the small networks
GEMM_GOAL = 1.1     # generated / GEMMs, on the wide network


def activations(spec_file):
    """Each dense layer's activation (None for linear), read from the spec's layers: list."""
    with open(SPECS / spec_file) as f:
        layers = yaml.safe_load(f)["layers"]
    return [None if layer.get("activation", "linear") == "linear" else layer["activation"]
            for layer in layers if "dense" in layer]


# ---------------------------------------------------------------------------
# What is needed, and the reason to skip when something is not there


def gpu_stack():
    """(torch, cupy) when both are installed and see a GPU; else the reason to skip (a str)."""
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed (the baseline is torch eager CUDA autograd)"
    except OSError as e:
        return f"PyTorch cannot be imported: {e}"
    if not torch.cuda.is_available():
        return f"no CUDA GPU visible to PyTorch {torch.__version__}"
    try:
        import cupy
    except ImportError:
        return ("CuPy is not installed (the CUDA loader takes NumPy arrays, copied each call, "
                "or CuPy arrays, used in place; pip install cupy-cuda12x)")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no CUDA GPU visible to CuPy"
    except cupy.cuda.runtime.CUDARuntimeError as e:
        return f"no CUDA GPU visible to CuPy ({e})"
    return torch, cupy


def jax_on_gpu():
    """JAX, configured for the GPU (no preallocation, no TF32), or None with a note why not."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave memory to torch and CuPy
    try:
        import jax
    except ImportError:
        return None, "not installed"
    try:
        jax.devices("gpu")
    except Exception as e:  # noqa: BLE001  (jax raises RuntimeError or ValueError by version)
        return None, f"no GPU backend ({str(e).splitlines()[0]})"
    jax.config.update("jax_default_matmul_precision", "highest")
    return jax, f"{jax.__version__}, {jax.devices('gpu')[0].device_kind}"


# ---------------------------------------------------------------------------
# The same network in torch and JAX, from the spec's layer list


def torch_value_and_grad(torch, acts, loss):
    import torch.nn.functional as F
    act = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid}

    def value_and_grad(params, x, target):
        h = x
        for i, a in enumerate(acts, start=1):
            h = F.linear(h, params[f"W{i}"], params[f"b{i}"])
            if a:
                h = act[a](h)
        if loss == "softmax_ce":
            L = F.cross_entropy(h, target)
        else:
            L = F.mse_loss(h, target, reduction="sum") / (2 * x.shape[0])
        grads = torch.autograd.grad(L, list(params.values()))
        return L.detach(), dict(zip(params, grads))
    return value_and_grad


def jax_value_and_grad(jax, acts, loss):
    jnp = jax.numpy
    act = {"tanh": jnp.tanh, "relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid}

    def loss_fn(params, x, target):
        h = x
        for i, a in enumerate(acts, start=1):
            h = h @ params[f"W{i}"].T + params[f"b{i}"]
            if a:
                h = act[a](h)
        if loss == "softmax_ce":
            logp = jax.nn.log_softmax(h, axis=1)
            return -jnp.mean(jnp.take_along_axis(logp, target[:, None], axis=1))
        return jnp.sum((h - target) ** 2) / (2 * x.shape[0])
    return jax.jit(jax.value_and_grad(loss_fn))


def gemms_only(torch, weights, x):
    """The GEMMs of a dense stack's value_and_grad, into preallocated outputs.

    Forward z_i = h_{i-1} W_i^T; backward W_i_bar = z_i_bar^T h_{i-1} and, but for
    the first layer, h_{i-1}_bar = z_i_bar W_i.  The values are stand-ins (each
    layer's output buffer serves as z_i, h_i and z_i_bar): only the shapes matter.
    For the wide network (2 layers) that is 5 GEMMs, as its generated value_and_grad.
    """
    N = x.shape[0]
    h = [x] + [torch.rand(N, W.shape[0], device=x.device, dtype=x.dtype) for W in weights]
    h_bar = [torch.rand_like(t) for t in h]
    W_bar = [torch.empty_like(W) for W in weights]

    def call():
        for i, W in enumerate(weights, start=1):
            torch.mm(h[i - 1], W.t(), out=h[i])
        for i in range(len(weights), 0, -1):
            torch.mm(h_bar[i].t(), h[i - 1], out=W_bar[i - 1])
            if i > 1:
                torch.mm(h_bar[i], weights[i - 1], out=h_bar[i - 1])
    return call


# ---------------------------------------------------------------------------
# Checking and timing


def max_error(a, ref):
    """max |a - ref| relative to max |ref|."""
    return float(np.max(np.abs(a - ref)) / max(float(np.max(np.abs(ref))), 1e-30))


def check_against_torch(who, loss, grads, ref_loss, ref_grads, rtol):
    """Raise AssertionError unless loss and gradients agree with torch's; returns the worst error."""
    if set(grads) != set(ref_grads):
        raise AssertionError(f"{who}: gradients of {sorted(grads)}, torch's of {sorted(ref_grads)}")
    worst = abs(loss - ref_loss) / max(abs(ref_loss), 1e-30)
    if worst > rtol:
        raise AssertionError(f"{who}: loss {loss!r} differs from torch's {ref_loss!r} (rtol {rtol})")
    for k, ref in ref_grads.items():
        g = np.asarray(grads[k])
        if g.shape != ref.shape:
            raise AssertionError(f"{who}: {k}_bar has shape {g.shape}, torch's {ref.shape}")
        err = max_error(g, ref)
        if not err <= rtol:
            raise AssertionError(f"{who}: {k}_bar differs from torch's by {err:.2e} of its largest "
                                 f"entry (rtol {rtol})")
        worst = max(worst, err)
    return worst


def asynchronous(jax, fn, *args):
    """(call, sync) for a JAX function: the call keeps its result, sync waits for the last one."""
    last = [None]

    def call():
        last[0] = fn(*args)
    return call, lambda: jax.block_until_ready(last[0])


def run_timed(call, sync, n):
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        call()
    sync()
    return time.perf_counter() - t0


def time_interleaved(sides, rounds, target_s, warmup=5):
    """sides: {name: (call, sync)} -> {name: [per-call seconds, one per round]}.

    After a warm-up (builds, JIT, allocator pools, cuBLAS heuristics), each side's
    calls per round are set so a round lasts about ``target_s``; the rounds are
    interleaved, the order rotated each round, so drift hits every side alike.
    """
    number = {}
    for name, (call, sync) in sides.items():
        run_timed(call, sync, warmup)
        n = 1
        while (t := run_timed(call, sync, n)) < target_s / 4 and n < 1 << 16:
            n *= 2
        number[name] = max(1, int(n * target_s / max(t, 1e-9)))
    names = list(sides)
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            call, sync = sides[name]
            times[name].append(run_timed(call, sync, number[name]) / number[name])
    return times


# ---------------------------------------------------------------------------


def compile_all(networks):
    """Compile every spec to CUDA and import its loader (no nvcc or GPU needed for this)."""
    modules = {}
    for net in networks:
        t0 = time.perf_counter()
        compiled = bpcompile.compile(SPECS / NETWORKS[net].spec, target="cuda")
        module = compiled.load()
        assert module.DTYPE == np.float32 and set(module.WRT) == set(module.PARAM_SHAPES), net
        print(f"# compiled {NETWORKS[net].spec} -> {compiled.filename}: {compiled.stats()['kernels']} kernels"
              f" in value_and_grad, {time.perf_counter() - t0:.2f} s")
        modules[net] = module
    return modules


def build_all(modules, cupy):
    """Build each loader's library (nvcc) and run it once; the reason to skip, or None."""
    for module in modules.values():
        t0 = time.perf_counter()
        params = {k: cupy.asarray(v) for k, v in module.init_params(0).items()}
        inputs = {k: cupy.asarray(v.astype(np.int32) if k in module.LABEL_CLASSES else v)
                  for k, v in random_batch(module, 2).items()}
        try:
            module.value_and_grad(params, **inputs)
        except module.CudaModuleError as e:
            print(str(e), file=sys.stderr)
            return f"the generated CUDA code cannot be built or run here: {str(e).splitlines()[0]}"
        print(f"# built {module.NAME}.cu and ran it once in {time.perf_counter() - t0:.1f} s")
    return None


def bench_case(spec, module, N, torch, cupy, jax, rtol, rounds, target_s):
    """Check one network at batch N against torch, then time it: ({side: median ms}, error)."""
    acts = activations(spec.spec)
    params = module.init_params(0)
    inputs = random_batch(module, N, seed=N)
    x, t = inputs["x"], inputs[spec.target]
    labels = spec.target in module.LABEL_CLASSES

    # The same values on the device for each side (labels as int32; torch's as int64).
    gen_params = {k: cupy.asarray(v) for k, v in params.items()}
    gen_inputs = {"x": cupy.asarray(x), spec.target: cupy.asarray(t.astype(np.int32) if labels else t)}
    t_params = {k: torch.as_tensor(v, device="cuda").requires_grad_() for k, v in params.items()}
    t_x = torch.as_tensor(x, device="cuda")
    t_t = torch.as_tensor(t.astype(np.int64) if labels else t, device="cuda")

    torch_vag = torch_value_and_grad(torch, acts, spec.loss)
    ref_loss, ref_grads = torch_vag(t_params, t_x, t_t)
    ref_loss, ref_grads = float(ref_loss), {k: v.cpu().numpy() for k, v in ref_grads.items()}
    loss, grads = module.value_and_grad(gen_params, **gen_inputs)
    err = check_against_torch(f"generated {spec.spec} N={N}", loss,
                              {k: cupy.asnumpy(v) for k, v in grads.items()}, ref_loss, ref_grads, rtol)

    sides = {
        "gen": (partial(module.value_and_grad, gen_params, **gen_inputs), cupy.cuda.runtime.deviceSynchronize),
        "torch": (partial(torch_vag, t_params, t_x, t_t), torch.cuda.synchronize),
    }
    if jax is not None:
        jax_vag = jax_value_and_grad(jax, acts, spec.loss)
        j_args = ({k: jax.device_put(v) for k, v in params.items()}, jax.device_put(x),
                  jax.device_put(t.astype(np.int32) if labels else t))
        j_loss, j_grads = jax_vag(*j_args)
        check_against_torch(f"jax {spec.spec} N={N}", float(j_loss),
                            {k: np.asarray(v) for k, v in j_grads.items()}, ref_loss, ref_grads, rtol)
        sides["jax"] = asynchronous(jax, jax_vag, *j_args)
    if spec.gemms:
        weights = [t_params[f"W{i}"].detach() for i in range(1, len(acts) + 1)]
        sides["gemms"] = (gemms_only(torch, weights, t_x), torch.cuda.synchronize)

    times = time_interleaved(sides, rounds, target_s)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}, err


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: few short rounds")
    ap.add_argument("--rounds", type=int, default=None, help="timing rounds per side (default 15, quick 3)")
    ap.add_argument("--round-seconds", type=float, default=None,
                    help="target length of one round (default 0.2 s, quick 0.02 s)")
    ap.add_argument("--network", choices=sorted(NETWORKS), action="append",
                    help="only these networks (repeatable)")
    ap.add_argument("--rtol", type=float, default=1e-4, help="agreement with torch required (default 1e-4)")
    ap.add_argument("--no-jax", action="store_true", help="do not time JAX even when it is installed")
    args = ap.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 15)
    target_s = args.round_seconds or (0.02 if args.quick else 0.2)
    networks = args.network or list(NETWORKS)

    modules = compile_all(networks)
    stack = gpu_stack()
    if isinstance(stack, str):
        print(f"skipped: {stack}")
        return 0
    torch, cupy = stack
    reason = build_all(modules, cupy)
    if reason:
        print(f"skipped: {reason}")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False
    jax, jax_note = (None, "not timed (--no-jax)") if args.no_jax else jax_on_gpu()

    print(f"# GPU: {torch.cuda.get_device_name()}; torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"CuPy {cupy.__version__} (CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}), jax {jax_note}")
    print(f"# float32, no TF32; rounds={rounds} round_seconds={target_s}; median per-call ms;"
          " GEMMs = value_and_grad's GEMMs alone (torch.mm);"
          " err = generated vs torch, max |difference| / max |torch| over loss and gradients")
    header = (f"{'network':<8} {'batch':>5} {'gen ms':>8} {'torch ms':>9} {'torch/gen':>9} {'jax ms':>8}"
              f" {'GEMMs ms':>9} {'gen/GEMMs':>9} {'err':>8}")
    print(header)
    print("-" * len(header))
    small_ratios, gemm_ratios = [], []
    for net in networks:
        spec = NETWORKS[net]
        for N in spec.batches:
            times, err = bench_case(spec, modules[net], N, torch, cupy, jax, args.rtol, rounds, target_s)
            gen, tor = times["gen"], times["torch"]
            jax_ms = f"{times['jax']:>8.3f}" if "jax" in times else f"{'-':>8}"
            if spec.small:
                small_ratios.append(tor / gen)
            if spec.gemms:
                gemm_ratios.append(gen / times["gemms"])
                gemm_cols = f"{times['gemms']:>9.3f} {gen / times['gemms']:>9.2f}"
            else:
                gemm_cols = f"{'-':>9} {'-':>9}"
            print(f"{net:<8} {N:>5} {gen:>8.3f} {tor:>9.3f} {tor / gen:>9.2f} {jax_ms}"
                  f" {gemm_cols} {err:>8.1e}", flush=True)
    print(f"# loss and gradients match torch (rtol {args.rtol})" + (", and JAX's too" if jax else ""))
    if small_ratios:
        worst = min(small_ratios)
        print(f"small networks: worst torch/generated {worst:.2f} (goal >= {SMALL_GOAL}:"
              f" {'met' if worst >= SMALL_GOAL else 'not met'})")
    if gemm_ratios:
        worst = max(gemm_ratios)
        print(f"wide network: generated/GEMMs {worst:.2f} (goal <= {GEMM_GOAL}:"
              f" {'met' if worst <= GEMM_GOAL else 'not met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
