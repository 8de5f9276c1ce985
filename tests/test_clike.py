"""The C-like base (targets/clike/: CStyle and the shared lowering) on its own.

CStyle's defaults are plain C99 on one CPU thread, the language the C target
(issue 13) will state its differences against, as CUDA does.  Here every spec the
CUDA tests use (every example, and specs that reach every kernel kind) is printed
in the base language, wrapped in the least a C file needs around it (a typedef,
the workspace struct and its allocation), compiled as C99 with every warning an
error, and run with ctypes against the NumPy module: the shared lowering is
right whatever the language, and the base is real C, not a stub.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest
from conftest import random_point, rel_error
from test_cuda_host import SPECS, load_spec

import bpcompile
from bpcompile.targets.clike import CStyle
from bpcompile.targets.clike import FunctionPrinter, print_module
from bpcompile.targets.cuda.printer import CUDA, Cuda

CC = shutil.which("cc") or shutil.which("gcc")

# What a module in the base language expects of the file around it (CStyle's docstring).
PRELUDE = """\
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

typedef {real} real;

#define BP_ERROR_NULL_POINTER (-2)

static inline real bp_max(real a, real b)
{{
    return (a > b || a != a) ? a : b;
}}

static inline real* bp_carve(char* base, size_t* off, size_t n)
{{
    real* p = base ? (real*)(base + *off) : NULL;
    *off += (n * sizeof(real) + 255) / 256 * 256;
    return p;
}}

typedef struct {name}_workspace {{
    int N;
    void* arena;
{structs}
}} {name}_workspace;

static inline size_t {name}_layout({name}_workspace* ws, char* base)
{{
    const size_t N = (size_t)ws->N;
    size_t off = 0, top = 0;
    (void)N;
    (void)base;
{layout}
    return top > off ? top : off;
}}

void* test_create(int N)
{{
    {name}_workspace* ws = ({name}_workspace*)calloc(1, sizeof *ws);
    if (ws == NULL) return NULL;
    ws->N = N;
    ws->arena = malloc({name}_layout(ws, NULL) + 1);
    if (ws->arena == NULL) {{
        free(ws);
        return NULL;
    }}
    {name}_layout(ws, (char*)ws->arena);
    return ws;
}}

void test_free(void* ws)
{{
    free((({name}_workspace*)ws)->arena);
    free(ws);
}}
"""


def c_file(compiled, lang) -> str:
    """The spec printed in ``lang``, in a C file of its own."""
    spec = compiled.spec
    printed = print_module(compiled.lowered, compiled.programs, lang)
    indent = lambda lines: "\n".join("    " + line for line in lines)   # noqa: E731
    prelude = PRELUDE.format(real="float" if spec.dtype == "float32" else "double", name=spec.name,
                             structs=indent(printed.structs), layout=indent(printed.layout))
    return "\n\n".join([prelude, *printed.kernels, *printed.functions.values()]) + "\n"


class Library:
    """A spec's C file, built and loaded: its three functions over NumPy arrays."""

    def __init__(self, compiled, path):
        self.c = compiled
        self.lib = ctypes.CDLL(str(path))
        self.lib.test_create.restype = ctypes.c_void_p
        self.dtype = np.float32 if compiled.spec.dtype == "float32" else np.float64

    def call(self, fn, params, inputs):
        spec, program = self.c.spec, self.c.programs[fn]
        N = len(next(iter(inputs.values())))
        ws = self.lib.test_create(N)
        assert ws
        keep = [np.ascontiguousarray(params[p], self.dtype) for p in spec.params]
        keep += [np.ascontiguousarray(inputs[i], np.int32 if d.is_label else self.dtype)
                 for i, d in spec.inputs.items()]
        args = [ctypes.c_void_p(ws)] + [a.ctypes.data_as(ctypes.c_void_p) for a in keep]
        loss = ctypes.c_double(np.nan)
        outs = {}

        def result(key, v):
            outs[key] = np.full(((N,) if v.batched else ()) + tuple(v.shape), np.nan, self.dtype)
            args.append(outs[key].ctypes.data_as(ctypes.c_void_p))

        if fn == "predict":
            result("out", program.output)
        else:
            args.append(ctypes.byref(loss))
        if fn == "value_and_grad":
            for nm, v in program.grads.items():
                result(nm, v)
        try:
            assert getattr(self.lib, f"{spec.name}_{fn}")(*args) == 0
        finally:
            self.lib.test_free(ctypes.c_void_p(ws))
        return loss.value, outs


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """{spec: (generated NumPy module, its base-language C library)}."""
    if CC is None:
        pytest.skip("no C compiler (cc)")
    out = tmp_path_factory.mktemp("clike")
    libs = {}
    for key in SPECS:
        c = bpcompile.compile(load_spec(key))
        src = out / f"{key}.c"
        src.write_text(c_file(c, CStyle()))
        so = out / f"{key}.so"
        r = subprocess.run([CC, "-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-O1", "-shared",
                            "-fPIC", "-o", str(so), str(src), "-lm"], capture_output=True, text=True)
        assert r.returncode == 0, f"{src}:\n{r.stderr[:3000]}"
        libs[key] = (c.load(), Library(c, so))
    return libs


@pytest.mark.parametrize("key", list(SPECS))
def test_base_language_matches_numpy(key, built):
    ref, lib = built[key]
    tol = 1e-12 if ref.DTYPE == np.float64 else 1e-5
    for seed, n in ((0, 1), (1, 7)):
        params, inputs = random_point(ref, n=n, seed=seed)
        _, out = lib.call("predict", params, inputs)
        want = np.asarray(ref.predict(params, **inputs))
        # an output that reads no input is one value (the NumPy module repeats it per example)
        assert rel_error(want, np.broadcast_to(out["out"], want.shape)) < tol, (seed, n)
        want_l = ref.loss(params, **inputs)
        got_l, _ = lib.call("loss", params, inputs)
        assert abs(got_l - want_l) <= tol * max(abs(want_l), 1e-8), (seed, n)
        want_v, want_g = ref.value_and_grad(params, **inputs)
        got_v, got_g = lib.call("value_and_grad", params, inputs)
        assert abs(got_v - want_v) <= tol * max(abs(want_v), 1e-8), (seed, n)
        assert list(got_g) == list(want_g)
        for k in want_g:
            assert rel_error(np.asarray(want_g[k]), got_g[k]) < tol, (k, seed, n)


def test_base_language_is_plain_c():
    """No CUDA in the base's text: no qualifier, launch, thread index or cuBLAS call;
    GEMMs lowered as reductions (the base has no GEMM of its own)."""
    c = bpcompile.compile(load_spec("digits_mlp"))
    text = c_file(c, CStyle())
    for cuda_word in ("__global__", "__restrict__", "__shared__", "__syncthreads", "LAUNCH", "threadIdx",
                      "blockIdx", "cublas", "cuda", 'extern "C"'):
        assert cuda_word not in text, cuda_word
    assert "static void " in text and "const real* restrict " in text
    assert "einsum(" in text   # the GEMMs, as reductions


def test_cuda_states_only_how_it_differs():
    """The CUDA language overrides CStyle's hooks and attributes; the lowering
    (every @lowers method) is the shared one."""
    from bpcompile.targets import get
    assert get("cuda").printer is FunctionPrinter
    assert isinstance(CUDA, Cuda) and issubclass(Cuda, CStyle)
    overridden = {k for k in vars(Cuda) if not k.startswith("__") and k in vars(CStyle)}
    assert {"loop", "launch", "reduction", "launch_reduction", "gemm", "fill", "copy", "zero",
            "loss_to_host", "function_prologue", "kernel_prefix", "restrict", "host_prefix"} <= overridden
    assert not any(getattr(v, "lowers", None) for v in vars(Cuda).values())
