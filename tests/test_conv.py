"""Convolutions and pooling (issue 12): their errors, their GEMMs, their NumPy
printing, their equations and their tie rule.

The values and gradients of conv1d, conv2d, max_pool2d and avg_pool2d on every
target are tests/test_systematic.py's rows; this file checks what those rows do
not: one clear line for every new way a spec can be wrong (through the command
line), the GEMM forms a convolution's three contractions take (``ops.gemm_form``),
the shape of the generated NumPy code (im2col once, col2im as a loop over the
kernel's offsets, pooling windows that tile the input as a view), the rules the
equations name, and max's tie rule on every target.
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

from conftest import compile_error_line

import bpcompile
from bpcompile.ops import gemm_form
from bpcompile.ops.structural import gemm_plan
from bpcompile.targets.clike.contractions import Gemm
from bpcompile.targets.clike.gemm import gemm_call

IMAGE = """\
name: m
inputs:
  x: [2, 6, 6]
  s: [2, 9]
  v: [3]
  c: {{classes: 3}}
params:
  W: [4, 2, 3, 3]
  B: [4, 2, 5, 5]
  K: [4, 2, 3]
graph:
  h: {expr}
loss: sum(h)
"""

ERRORS = {
    # label: (expression, words the one line must hold)
    "stride 0": ("conv2d(x, W, stride=0)", ["graph.h", "conv2d(): stride must be at least 1, got stride=0"]),
    "negative stride": ("conv1d(s, K, stride=-2)", ["conv1d(): stride must be at least 1, got stride=-2"]),
    "negative padding": ("conv2d(x, W, padding=-1)", ["conv2d(): padding must be at least 0, got padding=-1"]),
    "padding mode": ("conv2d(x, W, padding='full')", ["strings are not allowed", "'same' and 'valid'"]),
    "padding a name": ("conv2d(x, W, padding=v)", ["padding must be an integer constant or one of"]),
    "same with a stride": ("conv2d(x, W, stride=2, padding='same')",
                           ["padding='same' needs stride=1", "got stride=2"]),
    "kernel larger than the input": ("conv2d(max_pool2d(x, 3), W)",
                                     ["the kernel's size 3 is larger than the input",
                                      "'max_pool2d(x, 3)' of shape [2, 2, 2] has size 2 along axis 1"]),
    "kernel larger than the padded input": ("conv2d(max_pool2d(x, 3), B, padding=1)",
                                            ["the kernel's size 5 is larger than the input",
                                             "has size 2 (4 with its padding) along axis 1"]),
    "channel mismatch": ("conv2d(conv2d(x, W), W)",
                         ["channel mismatch", "'W' of shape [4, 2, 3, 3] takes 2 input channels",
                          "'conv2d(x, W)' of shape [4, 4, 4] has 4"]),
    "input rank": ("conv2d(s, W)", ["conv2d() takes an input of shape [C, H, W] per example",
                                    "'s' has shape [2, 9]"]),
    "kernel rank": ("conv2d(x, K)", ["conv2d() takes a kernel of shape [O, C, KH, KW]", "'K' has shape [4, 2, 3]"]),
    "conv1d input rank": ("conv1d(x, K)", ["conv1d() takes an input of shape [C, L] per example"]),
    "a label": ("conv2d(c, W)", ["'c' is an integer class label"]),
    "pool size 0": ("max_pool2d(x, 0)", ["max_pool2d(): the pool size must be at least 1, got 0"]),
    "negative pool size": ("avg_pool2d(x, -2)", ["avg_pool2d(): the pool size must be at least 1, got -2"]),
    "pool larger than the input": ("max_pool2d(x, 7)", ["the pool size 7 is larger than the input",
                                                        "'x' of shape [2, 6, 6] has size 6 along axis 1"]),
    "pool stride 0": ("avg_pool2d(x, 2, stride=0)", ["avg_pool2d(): stride must be at least 1, got stride=0"]),
    "pool input rank": ("max_pool2d(v, 2)", ["max_pool2d() takes an input of shape [C, H, W] per example"]),
    "pool size not a constant": ("max_pool2d(x, v)", ["argument 2 of max_pool2d() must be an integer constant"]),
    "pool size a float": ("max_pool2d(x, 2.0)", ["argument 2 of max_pool2d() must be an integer constant"]),
    "pool padding": ("max_pool2d(x, 2, padding=1)", ["max_pool2d() takes no padding= (it takes stride=)"]),
    "conv axis": ("conv2d(x, W, axis=0)", ["conv2d() takes no axis= (it takes stride= and padding=)"]),
    "too few arguments": ("conv2d(x)", ["conv2d() takes 2 arguments, got 1"]),
}
# the windows' size is bounded like any tensor's (a huge kernel over a huge input)
HUGE = ("name: m\ninputs:\n  x: [1, 40000, 40000]\nparams:\n  W: [1, 1, 20000, 20000]\n"
        "graph:\n  h: conv2d(x, W)\nloss: sum(h)\n")


@pytest.mark.parametrize("label", list(ERRORS))
def test_each_error_is_one_line_through_the_command_line(label, tmp_path, capsys, monkeypatch):
    expr, words = ERRORS[label]
    line = compile_error_line(IMAGE.format(expr=expr), tmp_path, capsys, monkeypatch)
    for w in words:
        assert w in line, (label, w, line)


def test_windows_too_large_is_refused_at_once():
    start = time.perf_counter()
    with pytest.raises(bpcompile.SpecError) as e:
        bpcompile.compile(HUGE)
    assert "conv2d(): the windows of 'x' have" in str(e.value) and "MAX_SHAPE_ELEMENTS" in str(e.value)
    assert time.perf_counter() - start < 10


def test_compile_time_does_not_grow_with_the_image():
    """Shapes are numbers in the graph: a 512 x 512 image compiles like a 16 x 16 one."""
    spec = ("name: m\ninputs:\n  x: [3, {n}, {n}]\nparams:\n  W: [8, 3, 5, 5]\n  V: [4, 8, 3, 3]\n"
            "graph:\n  h: max_pool2d(relu(conv2d(x, W, padding=2)), 2)\n  g: conv2d(h, V, stride=2)\n"
            "loss: sum(g * g)\n")
    times = {}
    for n in (16, 512):
        start = time.perf_counter()
        bpcompile.compile(spec.format(n=n))
        times[n] = time.perf_counter() - start
    assert times[512] < 3 * times[16] + 1, times


# -- the GEMMs of a convolution ---------------------------------------------------------

def test_a_convolution_is_one_gemm_per_example_with_the_kernel_shared():
    # forward: W[o, (cij)] @ X[n, (cij), (hw)], W the same for every example
    g = gemm_form("ocij", "ncijhw", "nohw")
    assert (g.left, g.m, g.k, g.n, g.batch, g.broadcast, g.summed) == (0, "o", "cij", "hw", "n", 0, False)
    assert not g.trans_left and not g.trans_right and g.grouped
    # the input's adjoint: W^T @ z_bar[n]
    g = gemm_form("ocij", "nohw", "ncijhw")
    assert (g.m, g.k, g.n, g.broadcast, g.trans_left, g.trans_right) == ("cij", "o", "hw", 0, True, False)
    # the kernel's adjoint: the sum over the examples of z_bar[n] @ X[n]^T
    g = gemm_form("nohw", "ncijhw", "ocij")
    assert (g.m, g.k, g.n, g.batch, g.summed, g.trans_right) == ("o", "hw", "cij", "n", True, True)


def test_grouped_indices_are_one_big_gemm_when_they_stand_together():
    g = gemm_form("nij", "jk", "nik")          # M @ V for a matrix per example: one GEMM, N*I rows
    assert (g.m, g.k, g.n, g.batched) == ("ni", "j", "k", False)
    assert gemm_form("ij", "njk", "nik").broadcast == 0    # W @ X[n]: a batch, W shared
    assert gemm_form("ij", "jk", "ik") == gemm_form("ij", "jk", "ik")   # plain products unchanged
    assert not gemm_form("ij", "jk", "ik").grouped
    assert gemm_form("ijk", "ijk", "") is not None     # a dot product of two 3-d arrays
    assert gemm_form("ijk", "jik", "") is None         # its summed indices in another order
    assert gemm_form("iaj", "jab", "ib") is None   # the summed group in two orders
    assert gemm_form("nij", "nj", "ni") is None        # batched matrix-vector: an einsum


def test_indices_of_size_one_are_read_away_for_a_better_gemm():
    # a kernel's gradient when the output is 1 x 1 (a dense layer written as a conv)
    sizes = {"n": None, "o": 120, "c": 16, "i": 4, "j": 4, "h": 1, "w": 1}
    assert gemm_form("nohw", "ncijhw", "ocij").summed
    form, *subs = gemm_plan("nohw", "ncijhw", "ocij", sizes)
    assert subs == ["no", "ncij", "ocij"] and not form.batched and form.k == "n"


def test_c_gemm_lines_of_a_shared_and_a_summed_batch():
    shared = Gemm(out="z", left="W", right="X", m=6, n=576, k=25, trans_left=False, trans_right=False,
                  ld_left=25, ld_right=576, batched=True, stride_left=0, stride_right=14400,
                  stride_out=3456, dtype="float64")
    assert gemm_call(shared) == ("for (int _ex = 0; _ex < N; _ex++) bp_dgemm(0, 0, 6, 576, 25, 1.0, W, 25, "
                                 "X + (size_t)_ex * 14400, 576, 0.0, z + (size_t)_ex * 3456, 576);")
    summed = Gemm(out="W_bar", left="z_bar", right="X", m=6, n=25, k=576, trans_left=False, trans_right=True,
                  ld_left=576, ld_right=576, batched=True, stride_left=3456, stride_right=14400,
                  stride_out=0, dtype="float32", accumulate=True)
    assert gemm_call(summed).endswith("_ex ? 1.0f : 0.0f, W_bar, 25);")


# -- the NumPy code -------------------------------------------------------------------

LENET = """\
name: lenet_part
inputs:
  x: [1, 12, 12]
params:
  W1: [4, 1, 5, 5]
  b1: [4, 1, 1]
  W2: [3, 4, 3, 3]
graph:
  z1: conv2d(x, W1) + b1
  h1: max_pool2d(relu(z1), 2)
  z2: conv2d(h1, W2, padding=1)
loss: sum(z2 * z2)
wrt: [W1, b1, W2, x]
"""


def _value_and_grad(source: str) -> str:
    return source[source.index("def value_and_grad"):source.index("def gradient")]


def test_numpy_code_is_im2col_once_and_gemms():
    body = _value_and_grad(bpcompile.compile(LENET).source)
    # each input's windows copied once (read by the forward GEMM and the kernel's gradient)
    assert body.count("sliding_window_view") == 2 and body.count(".copy()") == 2
    assert "np.einsum" not in body
    assert "W1.reshape(4, 25) @ " in body and ".sum(axis=0).reshape(4, 1, 5, 5)" in body
    # the pooling windows tile relu(z1): a view; their max one np.maximum per entry
    assert re.search(r"\.reshape\(N, 4, 4, 2, 4, 2\)\.transpose\(0, 1, 3, 5, 2, 4\)\n", body)
    assert body.count("np.maximum(h1, ") == 2
    # col2im: loops over the kernel's offsets only
    loops = re.findall(r"for (\w+) in range\((\w+)\)", body)
    assert loops and all(var.startswith("_k") and n.isdigit() and int(n) <= 5 for var, n in loops), loops


def test_the_equations_name_the_convolution_rules():
    from bpcompile.tools import inspect as explain
    text = explain.as_text(explain.derive(bpcompile.compile(LENET), naive=False))
    lines = [line.strip() for line in text.splitlines()]
    assert "z1 = conv2d(x, W1) + b1" in " ".join(lines)
    for start, rule in [("h1_bar = conv_transpose2d(z2_bar, W2, padding=1)", "conv2d"),
                        ("W2_bar = conv2d_weight(h1, z2_bar, padding=1) (summed over the batch)", "conv2d"),
                        ("q1_bar = max_unpool2d(h1_bar, relu(z1), 2)", "max_pool2d"),
                        ("W1_bar = conv2d_weight(x, z1_bar) (summed over the batch)", "conv2d"),
                        ("x_bar = conv_transpose2d(z1_bar, W1)", "conv2d")]:
        assert any(line.startswith(start) and line.endswith(f"# {rule}") for line in lines), (start, text)
    assert not any(line.startswith("u") and "windows(" in line for line in lines), text


# -- max's ties: split equally, on every target ---------------------------------------------

@pytest.mark.parametrize("target", bpcompile.targets.names())
def test_max_pool_splits_a_tie_equally(target, tmp_path, monkeypatch):
    spec = "name: ties\ninputs:\n  x: [1, 2, 4]\ngraph:\n  p: max_pool2d(x, 2)\nloss: sum(p)\nwrt: [x]\n"
    c = bpcompile.compile(spec, target=target)
    m = c.load() if target == "numpy" else _load_native(c, target, tmp_path, monkeypatch)
    x = np.array([[[[1.0, 3.0, 2.0, 2.0], [3.0, 0.0, 2.0, 2.0]]]])
    _, g = m.value_and_grad({}, x=x)
    want = np.array([[[[0, 0.5, 0.25, 0.25], [0.5, 0, 0.25, 0.25]]]])
    np.testing.assert_array_equal(np.asarray(g["x"]), want)


def _load_native(compiled, target, directory, monkeypatch):
    """The loader of a C or CUDA module (CUDA built for the host with the emulation header)."""
    import importlib.util
    import shutil
    if target == "cuda":
        if shutil.which("g++") is None:
            pytest.skip("no g++ to build the CUDA target with its emulation header")
        from bpcompile.targets.cuda import EMULATION_HEADER
        shutil.copy(EMULATION_HEADER, directory / "cuda_emulation.h")
        monkeypatch.setenv("BPCOMPILE_CUDA_EMULATE", "1")
    compiled.write(directory)
    entry = bpcompile.targets.get(target).entry_file("ties")
    spec = importlib.util.spec_from_file_location(f"ties_{target}", directory / entry)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- nvcc -----------------------------------------------------------------------------------

ALL_CONV = """\
name: {name}
dtype: {dtype}
inputs:
  x: [2, 7, 6]
  s: [2, 9]
params:
  W: [3, 2, 3, 3]
  V: [2, 3, 2, 4]
  K: [2, 2, 3]
  b: [3, 1, 1]
graph:
  z: conv2d(x, W, stride=2, padding=1) + b
  y: conv2d(tanh(conv2d(x, W)), V, padding='same')
  p: max_pool2d(y, 2)
  q: avg_pool2d(relu(z), 2, stride=1)
  c: conv1d(s, K, stride=2, padding=1)
loss: sum(p * p) + sum(q * q) + sum(c * c) + sum(tanh(z))
wrt: [W, V, K, b, x, s]
"""


def test_nvcc_compiles_convolutions_and_pooling(tmp_path, cublas_include):
    """windows, unwindow and the batched, broadcast and summed GEMMs, forward and
    backward, in both dtypes: nvcc -Werror all-warnings."""
    from conftest import nvcc_compile_all
    sources = []
    for dtype in ("float32", "float64"):
        name = f"all_conv_{dtype}"
        bpcompile.compile(ALL_CONV.format(name=name, dtype=dtype), target="cuda").write(tmp_path)
        sources.append(tmp_path / f"{name}.cu")
    for src, (rc, out) in nvcc_compile_all(sources, cublas_include).items():
        assert rc == 0, out
        assert "warning" not in out.lower().split("\n", 1)[1], out
