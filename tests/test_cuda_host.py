"""The CUDA target (issue 4), checked without a GPU.

* Every example, and three specs written to reach every kernel kind the CUDA
  printer emits, is compiled with --target cuda; the .cu is built for the host
  with g++ -std=c++20 and bpcompile/targets/cuda/cuda_emulation.h force-included
  (kernels run block by block, each thread a fiber, __syncthreads a real barrier;
  cuBLAS gemm a reference loop with cuBLAS's column-major semantics), through the
  generated loader (BPCOMPILE_CUDA_EMULATE=1), and predict / loss / value_and_grad
  are compared with the NumPy module at random points.
* The emulation itself is checked: a block reduction needs its barriers, a
  divergent barrier is caught, gemm checks its arguments.
* nvcc compiles every .cu with -Werror all-warnings (sm_90 and the default arch)
  when nvcc is present; cuBLAS's headers come from the toolkit or, where it has
  none, from PyPI's nvidia-cublas wheel (conftest.cublas_include, cached).
* Tests marked gpu run the loader on a real GPU; skipped where there is none.
"""

from __future__ import annotations

import collections
import concurrent.futures
import ctypes
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLES, NVCC, ROOT, assert_agrees, nvcc_compile_all, random_point, rel_error

from bpcompile.targets.cuda import EMULATION_HEADER
import bpcompile
from bpcompile.ops import gemm_form

EMULATION_H = EMULATION_HEADER
CXX = os.environ.get("CXX") or shutil.which("g++")
HAS_GPU = shutil.which("nvidia-smi") is not None

# Specs that reach the kernels the examples do not: a batched GEMM, einsum
# contractions (dot and matrix @ vector per example), transpose, slices and their
# adjoint unslice, concat (of batched and unbatched arrays), max over a non-last axis (and its gradient), onehot, zeros (a
# WRT param the loss ignores), log_softmax / logsumexp / cross_entropy on a
# non-softmax, a scatter_add that cannot update in place, a gradient that is a
# copy of a broadcast, float32 with sum
# reduction, an unbatched output, and most elementwise functions; and names that
# the host code's locals use, or that start with the module's name (printed as
# v_<name>); the names C, CUDA and the generated code reserve are refused by the
# spec reader (names.py).
EXTRA_SPECS = {
    "cov_matrix": """
name: cov_matrix
inputs:
  A: [3, 4]
  B: [4, 2]
  u: [4]
  label: {classes: 3}
params:
  W: {shape: [4, 3], init: normal(0.5)}
  c: {shape: [2], init: normal(0.5)}
  s: {shape: [], init: constant(0.7)}
  unused: [2]
graph:
  C: A @ B
  D: A.T
  E: D * W
  r: A @ u
  q: dot(r, r)
  m: max(C, axis=0)
  k: sum(E, axis=1)
  z: C + c
  p: softmax(r)
  f: sigmoid(z) * relu(C) + softplus(z) - abs(C)
  g: mean(f, axis=1)
  h: g[0] + m[1] * s + sin(q) + cos(k[2])
  oh: onehot(label)
  ls: log_softmax(r)
  lse: logsumexp(E)
  y: exp(ls)
loss: h**2 + cross_entropy(p, label) + cross_entropy(y, label) - sum(oh * ls) + sum(lse) / 4 + max(lse)
wrt: [W, c, s, unused, A, u]
output: k
""",
    "cov_f32": """
name: cov_f32
dtype: float32
reduction: sum
inputs:
  x: [5]
  y: []
params:
  V: {shape: [5, 5], init: normal(0.3)}
  a: {shape: [5], init: uniform(0.5)}
graph:
  n2: sum(V * V)
  G: V.T @ V
  h: G @ x
  e: exp(-square(h) / 10) + sqrt(x*x + 1) + log(1 + x*x) + (x*x + 1)**1.5
  o: dot(a, e) / (1 + n2)
loss: (o - y)**2
output: n2
wrt: [V, a, x]
""",
    "cov_names": """
name: m
inputs:
  offset: [3]
  top: []
params:
  base: [3, 3]
  status: [3]
  e: []
graph:
  s: base @ offset + status
  out: tanh(s) * e
  blocks: sum(out)
  m_workspace: blocks * top
  m_loss: exp(m_workspace)
loss: (m_loss - top)**2
""",
    "cov_shape": """
name: cov_shape
inputs:
  X: [3, 4]
  x: [5]
params:
  W: {shape: [4, 5], init: normal(0.5)}
  M: {shape: [2, 4], init: normal(0.5)}
  v: {shape: [3], init: normal(0.5)}
graph:
  a: W @ x
  C: concat(X[1:, ::2], M[:, 1:3], axis=0)
  d: concat(a[:2], v, x[-3:])
  F: stack(a, tanh(a), axis=-1)
  f: flatten(C * C) + reshape(F, [8])
  e: X[0, 1:] * v + d[2:5]
loss: sum(f * f) + sum(tanh(e)) + sum(d * d) + F[3, 0]
wrt: [W, M, v, X, x]
output: d
""",
    "cov_scatter": """
name: cov_scatter
inputs:
  x: [4]
  label: {classes: 4}
params:
  w: {shape: [4], init: normal(1.0)}
  b: {shape: [2], init: normal(1.0)}
graph:
  sq: w * w * x * x + 1
loss: sum(sq) / 3 + cross_entropy(sq, label) + sum(b)
wrt: [w, x, b]
""",
}

SPECS = {p.stem: p for p in EXAMPLES}
SPECS.update(EXTRA_SPECS)


def load_spec(key):
    src = SPECS[key]
    return bpcompile.load_spec(src) if isinstance(src, Path) else bpcompile.parse_spec(src, file=f"{key}.yaml")


def import_file(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def kernel_kinds(compiled) -> collections.Counter:
    """What the CUDA printer makes of each kernel of the three programs."""
    from bpcompile.targets.clike import host_scalars
    kinds = collections.Counter()
    for prog in compiled.programs.values():
        host = host_scalars(prog, {})
        for k in prog.kernels:
            kind = k.op
            if k.op == "contract":
                form, out_batched = k.attrs
                sa = ("n" if k.args[0].batched else "") + form.a
                sb = ("n" if k.args[1].batched else "") + form.b
                so = ("n" if out_batched else "") + form.out
                g = gemm_form(sa, sb, so)
                kind = "einsum" if g is None else "gemm_batched" if g.batched else \
                    "gemm_outer" if g.outer else "gemm"
            elif k.op == "reduce":
                kind = "reduce_" + k.attrs[0]
            elif k.op == "scatter_add":
                kind = "scatter_add_inplace" if k.inplace else "scatter_add_copy"
            elif k.op == "broadcast":
                kind = "broadcast_scalar" if (k.args[0].kind == "const" or k.args[0].name in host) \
                    else "broadcast"
            elif k.op == "map" and k.out.name in host:
                kind = "host_scalar"
            kinds[kind] += 1
    return kinds


# ---------------------------------------------------------------------------
# Compiling and building, once per session, in parallel


@pytest.fixture(scope="session")
def cuda_dir(tmp_path_factory):
    """Every spec compiled for CUDA, written with the emulation header beside it."""
    out = tmp_path_factory.mktemp("cuda")
    for key in SPECS:
        c = bpcompile.compile(load_spec(key), target="cuda")
        c.write(out)
    shutil.copy(EMULATION_H, out / "cuda_emulation.h")
    return out


@pytest.fixture(scope="session")
def emulated(cuda_dir):
    """{spec: (generated NumPy module, CUDA loader running on the host)}."""
    if CXX is None:
        pytest.skip("no host C++ compiler (g++)")
    mp = pytest.MonkeyPatch()
    mp.setenv("BPCOMPILE_CUDA_EMULATE", "1")
    # grids of 2 blocks at most: every grid-stride loop (elements, reduction outputs) wraps
    mp.setenv("BPCOMPILE_CXXFLAGS", "-DBP_MAX_GRID=2 -Wall -Wextra -Werror")
    mods = {}
    for key in SPECS:
        spec = load_spec(key)
        mods[key] = (bpcompile.compile(spec).load(),
                     import_file(cuda_dir / f"{spec.name}_cuda.py", f"bp_test_cuda_{spec.name}"))
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for f in [pool.submit(m._load) for _, m in mods.values()]:
            f.result()   # builds with g++; raises on a compile error
    yield mods
    mp.undo()


# ---------------------------------------------------------------------------


def test_every_kernel_kind_is_exercised():
    kinds = collections.Counter()
    for key in SPECS:
        kinds += kernel_kinds(bpcompile.compile(load_spec(key)))
    wanted = {"map", "host_scalar", "gemm", "gemm_outer", "gemm_batched", "einsum", "reduce_sum",
              "reduce_max", "sum_to", "broadcast", "broadcast_scalar", "reshape", "take",
              "scatter_add_inplace", "scatter_add_copy", "zeros", "onehot", "transpose", "slice",
              "unslice", "concat", "copy", "gather", "scatter_rows", "windows", "unwindow"}
    assert wanted <= set(kinds), f"not exercised: {sorted(wanted - set(kinds))}"
    assert set(kinds) <= wanted, f"new kernel kinds to cover: {sorted(set(kinds) - wanted)}"


@pytest.mark.parametrize("key", list(SPECS))
def test_host_emulation_matches_numpy(key, emulated):
    ref, cuda = emulated[key]
    tol = 1e-12 if ref.DTYPE == np.float64 else 1e-5
    assert cuda.DTYPE == ref.DTYPE and cuda.WRT == ref.WRT
    assert_agrees(ref, cuda, tol)


# The update steps, as a caller takes them: (module, params, state, inputs) -> loss.
STEPS = {
    "sgd": lambda m, params, state, inputs: m.sgd_step(params, 0.1, **inputs),
    "momentum": lambda m, params, state, inputs: m.momentum_step(params, state, 0.05, momentum=0.8, **inputs),
    "adam": lambda m, params, state, inputs: m.adam_step(params, state, 0.01, beta1=0.8, **inputs),
}


def state_arrays(state) -> dict:
    """An optimizer state dict flattened: {path: array or number}."""
    return {(top, k): v for top, inner in state.items() if isinstance(inner, dict) for k, v in inner.items()} | \
        {(top,): v for top, v in state.items() if not isinstance(v, dict)}


def take_steps(step, modules, params, inputs, n=4):
    """``n`` steps of ``step`` with each module, from the same params; returns
    [(losses, params, state)] per module."""
    runs = []
    for m in modules:
        p, state = {k: v.copy() for k, v in params.items()}, {}
        losses = [STEPS[step](m, p, state, inputs) for _ in range(n)]
        runs.append((losses, p, state_arrays(state)))
    return runs


@pytest.mark.parametrize("step", list(STEPS))
def test_update_steps_match_numpy(step, emulated):
    """The loader's steps on the emulated GPU's gradients: the NumPy module's
    losses, params and state, to rounding (the kernels sum in another order)."""
    ref, cuda = emulated["mlp_classifier"]
    params, inputs = random_point(ref, n=5, seed=3)
    (l_ref, p_ref, s_ref), (l_cuda, p_cuda, s_cuda) = take_steps(step, (ref, cuda), params, inputs)
    assert np.allclose(l_ref, l_cuda, rtol=1e-12, atol=0)
    assert list(p_cuda) == list(p_ref) and list(s_cuda) == list(s_ref)
    for k in p_ref:
        assert p_cuda[k].dtype == ref.DTYPE and rel_error(p_ref[k], p_cuda[k]) < 1e-12, k
    for k in s_ref:
        assert rel_error(np.asarray(s_ref[k]), np.asarray(s_cuda[k])) < 1e-12, k
    assert not np.array_equal(p_ref["W1"], params["W1"])   # the steps moved the params


@pytest.mark.parametrize("key", ["mlp_classifier", "digits_mlp_f32"])
@pytest.mark.parametrize("step", list(STEPS))
def test_update_steps_are_the_numpy_modules(key, step, emulated, monkeypatch):
    """Given the same gradients, the loader's steps and the NumPy module's give
    identical params and state, bit for bit: one text (templates/optimizers.py.j2)."""
    ref, cuda = emulated[key]
    monkeypatch.setattr(cuda, "value_and_grad", ref.value_and_grad)
    params, inputs = random_point(ref, n=5, seed=4)
    (l_ref, p_ref, s_ref), (l_cuda, p_cuda, s_cuda) = take_steps(step, (ref, cuda), params, inputs)
    assert l_ref == l_cuda
    assert list(p_cuda) == list(p_ref) and list(s_cuda) == list(s_ref)
    for k in p_ref:
        assert p_cuda[k].dtype == ref.DTYPE and np.array_equal(p_ref[k], p_cuda[k]), k
    for k in s_ref:
        assert np.array_equal(s_ref[k], s_cuda[k]), k


def test_loader_and_module_print_one_optimizer_text():
    """gradient() and the update steps close both Python files, the same text in
    each (targets/templates/optimizers.py.j2 included by both templates)."""
    for key in ("mlp_classifier", "cov_names", "cov_f32"):
        spec = load_spec(key)
        module = bpcompile.compile(spec).source
        loader = bpcompile.compile(spec, target="cuda").files[f"{spec.name}_cuda.py"]
        tail = module[module.index("\n\n\ndef gradient("):]
        assert tail.count("\ndef ") == 4 and tail.endswith("    return value\n")
        assert loader.endswith(tail), key


def test_init_params_match_numpy(emulated):
    ref, cuda = emulated["mlp_classifier"]
    assert cuda.init_params(7).keys() == ref.init_params(7).keys()
    for k, v in cuda.init_params(7).items():
        assert np.array_equal(v, ref.init_params(7)[k])


def test_loader_checks_its_arguments(emulated):
    ref, cuda = emulated["mlp_classifier"]
    params, inputs = random_point(ref, n=4, seed=0)
    with pytest.raises(ValueError, match="labels in"):
        cuda.loss(params, x=inputs["x"], label=np.array([0, 1, 2, 9]))
    with pytest.raises(ValueError, match="shape"):
        cuda.loss(params, x=inputs["x"][:, :3], label=inputs["label"])
    with pytest.raises(ValueError, match="params has no"):
        cuda.loss({}, **inputs)
    # many batch sizes: workspaces are kept for the last few only, results stay right
    for n in range(1, 8):
        p, i = random_point(ref, n=n, seed=n)
        assert abs(cuda.loss(p, **i) - ref.loss(p, **i)) < 1e-12 * abs(ref.loss(p, **i))
    assert len(cuda._workspaces) <= cuda.KEEP_WORKSPACES


BAD_ARGUMENTS = {
    "label -1": lambda p, i: (p, dict(i, label=np.array([0, 1, 2, -1]))),
    "label too large": lambda p, i: (p, dict(i, label=np.array([0, 1, 2, 10]))),
    "float labels": lambda p, i: (p, dict(i, label=i["label"].astype(float))),
    "param (1,) for (H,)": lambda p, i: ({**p, "b1": p["b1"][:1]}, i),
    "param missing": lambda p, i: ({k: v for k, v in p.items() if k != "W1"}, i),
    "param of ints": lambda p, i: ({**p, "b1": np.zeros(p["b1"].shape, int)}, i),
    "input shape": lambda p, i: (p, dict(i, x=i["x"][:, :-1])),
    "batch sizes differ": lambda p, i: (p, dict(i, label=i["label"][:-1])),
    "input of strings": lambda p, i: (p, dict(i, x=np.full(i["x"].shape, "a"))),
}


@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
def test_loader_checks_as_the_numpy_module(case, emulated):
    """The same ValueError as the NumPy module's, from every entry point."""
    ref, cuda = emulated["mlp_classifier"]
    params, inputs = BAD_ARGUMENTS[case](*random_point(ref, n=4, seed=0))
    calls = {
        "predict": lambda m: m.predict(params, **inputs),
        "loss": lambda m: m.loss(params, **inputs),
        "value_and_grad": lambda m: m.value_and_grad(params, **inputs),
        "gradient": lambda m: m.gradient(params, **inputs),
        "sgd_step": lambda m: m.sgd_step(dict(params), 0.1, **inputs),
        "momentum_step": lambda m: m.momentum_step(dict(params), {}, 0.1, **inputs),
        "adam_step": lambda m: m.adam_step(dict(params), {}, **inputs),
    }
    for fn, call in calls.items():
        with pytest.raises(ValueError) as want:
            call(ref)
        with pytest.raises(ValueError) as got:
            call(cuda)
        assert str(got.value) == str(want.value), fn


def test_loader_check_false(emulated):
    ref, cuda = emulated["mlp_classifier"]
    params, inputs = random_point(ref, n=4, seed=0)
    assert cuda.loss(params, **inputs, check=False) == pytest.approx(ref.loss(params, **inputs), rel=1e-12)
    # unchecked, a label out of range reads as NaN on the GPU (no memory is read out of bounds) ...
    assert np.isnan(cuda.loss(params, x=inputs["x"], label=np.array([0, 1, 2, 9]), check=False))
    # ... and the shapes the kernels index by are checked still
    with pytest.raises(ValueError, match="shape"):
        cuda.loss({**params, "b1": params["b1"][:1]}, **inputs, check=False)
    with pytest.raises(ValueError, match="shape"):
        cuda.loss(params, x=inputs["x"][:, :3], label=inputs["label"], check=False)


def test_c_api_error_codes(emulated, cuda_dir):
    _, cuda = emulated["tanh_regression"]
    lib = cuda._load()
    ws = ctypes.c_void_p()
    assert lib.tanh_regression_workspace_create(0, ctypes.byref(ws)) == -1
    assert not ws.value
    assert b"batch size" in lib.tanh_regression_error_string(-1)
    loss = ctypes.c_double()
    assert lib.tanh_regression_loss(None, None, None, None, None, None, ctypes.byref(loss)) == -2
    assert lib.tanh_regression_error_string(100) == b"no CUDA-capable device is detected"
    assert lib.tanh_regression_error_string(100000 + 7) == b"cuBLAS: invalid value"
    assert lib.tanh_regression_workspace_create(3, ctypes.byref(ws)) == 0
    assert lib.tanh_regression_loss(ws, None, None, None, None, None, None) == -2
    assert lib.tanh_regression_workspace_free(ws) == 0


# ---------------------------------------------------------------------------
# The generated files


def test_cli_writes_the_cu_and_the_loader(tmp_path):
    r = subprocess.run([sys.executable, "-m", "bpcompile", "compile", "examples/softmax_ce_output.yaml",
                        "--target", "cuda", "-o", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["softmax_ce_output.cu", "softmax_ce_output_cuda.py"]
    assert "softmax_ce_output.cu" in r.stdout


def test_cuda_output_is_deterministic(tmp_path):
    specs = ["examples/digits_mlp.yaml", "examples/seed002_network.yaml"]
    for seed in (1, 777):
        env = dict(os.environ, PYTHONHASHSEED=str(seed))
        r = subprocess.run([sys.executable, "-m", "bpcompile", "compile", *specs, "--target", "cuda",
                            "-o", str(tmp_path / str(seed))], cwd=ROOT, env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    for f in sorted((tmp_path / "1").iterdir()):
        assert f.read_bytes() == (tmp_path / "777" / f.name).read_bytes(), f.name


def test_cu_carries_the_bar_notes_and_the_api(cuda_dir):
    text = (cuda_dir / "tanh_regression.cu").read_text()
    assert "// a_bar = e_bar*(1 - e**2)   # tanh" in text
    assert "// W_bar = d_bar x^T (summed over the batch)   # matmul" in text
    for fn in ("workspace_create(int N", "workspace_free(", "value_and_grad(", "predict(", "loss(",
               "error_string(int code)"):
        assert 'extern "C" ' in text and f"tanh_regression_{fn}" in text
    assert "cublasDgemm" in text and "__syncthreads()" in text and "pow(" not in text
    f32 = (cuda_dir / "digits_mlp_f32.cu").read_text()
    assert "typedef float real;" in f32 and "cublasSgemm" in f32 and "tanhf(" in f32
    assert not [line for line in f32.splitlines() if "tanh(" in line and "//" not in line]
    loader = (cuda_dir / "tanh_regression_cuda.py").read_text()
    compile(loader, "tanh_regression_cuda.py", "exec")
    assert "import bpcompile" not in loader


def test_loader_says_when_there_is_no_nvcc(cuda_dir, monkeypatch):
    mod = import_file(cuda_dir / "seed004_linear_cuda.py", "bp_test_cuda_no_nvcc")
    monkeypatch.delenv("BPCOMPILE_CUDA_EMULATE", raising=False)
    monkeypatch.delenv("BPCOMPILE_NVCC", raising=False)
    for v in mod.CUDA_HOMES:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(mod, "DEFAULT_CUDA_HOME", str(cuda_dir / "nowhere"))
    with pytest.raises(mod.CudaModuleError, match="needs nvcc"):
        mod.loss({}, x=np.zeros(2))


@pytest.mark.skipif(HAS_GPU or NVCC is None, reason="checks the message on a machine with nvcc and no GPU")
def test_loader_says_when_there_is_no_gpu(cuda_dir, monkeypatch):
    mod = import_file(cuda_dir / "seed004_linear_cuda.py", "bp_test_cuda_no_gpu")  # no cuBLAS needed
    monkeypatch.delenv("BPCOMPILE_CUDA_EMULATE", raising=False)
    with pytest.raises(mod.CudaModuleError, match="GPU"):
        mod.loss({}, x=np.zeros(2))


# ---------------------------------------------------------------------------
# The emulation is faithful where it matters

EMULATION_PROBE = r"""
#include <cstdio>
typedef double real;
#define LAUNCH(kernel, grid, block, ...) bp_emu::launch(dim3(grid), dim3(block), 0, [&] { kernel(__VA_ARGS__); })

__global__ void block_sum(real* out, const real* x, int n, int barrier)
{
    __shared__ real s[64];
    real acc = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) acc += x[i];
    s[threadIdx.x] = acc;
    if (barrier) __syncthreads();
    for (unsigned w = blockDim.x / 2; w > 0; w /= 2) {
        if (threadIdx.x < w) s[threadIdx.x] += s[threadIdx.x + w];
        if (barrier) __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = s[0] + 1000 * blockIdx.x;
}

__global__ void divergent(real* out)
{
    if (threadIdx.x < 5) return;
    __syncthreads();
    out[0] = 1;
}

int main(int argc, char**)
{
    real x[1000], out[3];
    for (int i = 0; i < 1000; ++i) x[i] = i;
    LAUNCH(block_sum, 3, 64, out, x, 1000, 1);
    std::printf("%g %g %g\n", out[0], out[1], out[2]);
    for (int i = 0; i < 1000; ++i) x[i] = 2 * i;
    LAUNCH(block_sum, 1, 64, out, x, 1000, 0);
    std::printf("%g\n", out[0]);
    cublasHandle_t h;
    cublasCreate(&h);
    const real one = 1, zero = 0;
    real a[6] = {1, 2, 3, 4, 5, 6}, b[6] = {1, 0, 0, 1, 1, 1}, c[4];
    // column-major a (2x3) @ b (3x2)
    int ok = cublasDgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &one, a, 2, b, 3, &zero, c, 2);
    std::printf("%d %g %g %g %g\n", ok, c[0], c[1], c[2], c[3]);
    std::printf("%d\n", (int)cublasDgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &one, a, 1, b, 3, &zero, c, 2));
    cublasDestroy(h);
    std::fflush(stdout);
    if (argc > 1) LAUNCH(divergent, 1, 32, out);
    return 0;
}
"""


@pytest.mark.skipif(CXX is None, reason="no host C++ compiler (g++)")
def test_emulation_is_faithful(tmp_path):
    src = tmp_path / "probe.cpp"
    src.write_text(EMULATION_PROBE)
    exe = tmp_path / "probe"
    r = subprocess.run([CXX, "-std=c++20", "-O1", "-include", str(EMULATION_H), "-o", str(exe), str(src)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split("\n")
    assert lines[0] == "499500 500500 501500"       # every block, every thread, the barriers kept
    assert lines[1] != "999000"                      # without the barriers the reduction goes wrong
    assert lines[2] == "0 1 2 9 12"                  # column-major [[1,3,5],[2,4,6]] @ [[1,1],[0,1],[0,1]]
    assert lines[3] == "7"                           # lda < m: CUBLAS_STATUS_INVALID_VALUE
    r = subprocess.run([str(exe), "diverge"], capture_output=True, text=True)
    assert r.returncode != 0 and "divergence" in r.stderr


# ---------------------------------------------------------------------------
# nvcc


def _default_arch():
    """The architecture nvcc compiles for when given none: the oldest it supports."""
    r = subprocess.run([NVCC, "--list-gpu-arch"], capture_output=True, text=True)
    archs = [a for a in r.stdout.split() if a.startswith("compute_")]
    return archs[0].split("_")[1] if r.returncode == 0 and archs else None


@pytest.fixture(scope="session")
def nvcc_results(cuda_dir, cublas_include):
    """{spec: (returncode, output)}: nvcc -Werror all-warnings -c for sm_90 and for the
    default architecture (one nvcc run per spec), in parallel, cuBLAS's headers from
    the cublas_include fixture (fetched from PyPI when the toolkit lacks them)."""
    default = _default_arch()
    archs = ("90",) + ((default,) if default and default != "90" else ())
    sources = {key: cuda_dir / f"{load_spec(key).name}.cu" for key in SPECS}
    results = nvcc_compile_all(list(sources.values()), cublas_include, archs=archs)
    return {key: results[src] for key, src in sources.items()}


@pytest.mark.parametrize("key", list(SPECS))
def test_nvcc_compiles_without_warnings(key, nvcc_results):
    rc, out = nvcc_results[key]
    assert rc == 0, out
    assert "warning" not in out.lower().split("\n", 1)[1], out


# ---------------------------------------------------------------------------
# On a GPU


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU or NVCC is None, reason="needs an NVIDIA GPU and nvcc")
@pytest.mark.parametrize("key", list(SPECS))
def test_gpu_matches_numpy(key, cuda_dir, monkeypatch):
    monkeypatch.delenv("BPCOMPILE_CUDA_EMULATE", raising=False)
    spec = load_spec(key)
    ref = bpcompile.compile(spec).load()
    cuda = import_file(cuda_dir / f"{spec.name}_cuda.py", f"bp_test_gpu_{spec.name}")
    tol = 1e-11 if ref.DTYPE == np.float64 else 1e-5
    for seed, n in ((0, 1), (1, 7), (2, 1000)):
        params, inputs = random_point(ref, n=n, seed=seed)
        assert rel_error(np.asarray(ref.predict(params, **inputs)), cuda.predict(params, **inputs)) < tol
        want_v, want_g = ref.value_and_grad(params, **inputs)
        got_v, got_g = cuda.value_and_grad(params, **inputs)
        assert abs(got_v - want_v) <= tol * max(abs(want_v), 1e-8)
        for k in want_g:
            assert rel_error(np.asarray(want_g[k]), got_g[k]) < tol, k
    cupy = pytest.importorskip("cupy")
    params, inputs = random_point(ref, n=5, seed=9)
    got_v, got_g = cuda.value_and_grad({k: cupy.asarray(v) for k, v in params.items()},
                                       **{k: cupy.asarray(v) for k, v in inputs.items()})
    want_v, want_g = ref.value_and_grad(params, **inputs)
    assert abs(got_v - want_v) <= tol * max(abs(want_v), 1e-8)
    for k in want_g:
        assert isinstance(got_g[k], cupy.ndarray)
        assert rel_error(np.asarray(want_g[k]), cupy.asnumpy(got_g[k])) < tol, k
