"""The C target (issue 13): <name>.c, <name>.h and the loader <name>_c.py.

* Every example and every spec of the CUDA tests (which reach every kernel kind)
  is compiled with --target c, built by its loader with the system C compiler, and
  predict / loss / value_and_grad and one step of each optimizer are compared
  with the NumPy module (1e-12 relative in float64, 1e-5 in float32); so is every
  row of the systematic op table (tests/test_systematic.py).
* The .c compiles with no warning under gcc and clang (when installed) as C99 with
  -Wall -Wextra -Wpedantic -Werror, the header also as C++; a program driving
  value_and_grad runs clean under AddressSanitizer and UndefinedBehaviorSanitizer.
* The loader's errors: no C compiler, a compile error, an edited source, a cache
  that is not private, a cached library that does not load; the C API's codes.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import os
import shutil
import subprocess
import threading

import numpy as np
import pytest
import yaml
from conftest import ROOT, assert_agrees, random_point, refusing_compiler, rel_error
from test_cuda_host import SPECS, import_file, load_spec
from test_systematic import ALL_ROWS, call, draw_point, module_name, spec_text

import bpcompile
from bpcompile.targets.clike import print_module
from bpcompile.targets.c.printer import check_c_file

GCC = shutil.which("gcc")
CLANG = shutil.which("clang")
CC = shutil.which("cc") or GCC or CLANG
WARNINGS = ["-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Werror"]

pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler (cc)")


def tolerance(module):
    return 1e-12 if module.DTYPE == np.float64 else 1e-5


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private build cache for this module's loaders."""
    path = tmp_path_factory.mktemp("c_cache") / "cache"
    mp = pytest.MonkeyPatch()
    mp.setenv("BPCOMPILE_CACHE", str(path))
    mp.delenv("CC", raising=False)
    mp.delenv("CFLAGS", raising=False)
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def c_dir(tmp_path_factory):
    """Every spec compiled for C and written."""
    out = tmp_path_factory.mktemp("c")
    for key in SPECS:
        bpcompile.compile(load_spec(key), target="c").write(out)
    return out


def build_all(loaders: dict) -> dict:
    """{key: the loader, built, or the exception its build raised}, built two at a time."""
    def build(m):
        try:
            m._load()
            return m
        except Exception as e:   # noqa: BLE001 - reported by the spec's test
            return e
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(loaders, pool.map(build, loaders.values())))


@pytest.fixture(scope="module")
def loaded(c_dir, cache):
    """{spec: (generated NumPy module, C loader)}, every library built."""
    loaders = {key: import_file(c_dir / f"{load_spec(key).name}_c.py", f"bp_test_c_{key}") for key in SPECS}
    built = build_all(loaders)
    return {key: (bpcompile.compile(load_spec(key)).load(), built[key]) for key in SPECS}


def get(loaded, key):
    ref, c = loaded[key]
    if isinstance(c, Exception):
        raise c
    return ref, c


# ---------------------------------------------------------------------------
# Agreement with the NumPy module


@pytest.mark.parametrize("key", list(SPECS))
def test_c_matches_numpy(key, loaded):
    ref, c = get(loaded, key)
    tol = tolerance(ref)
    assert c.DTYPE == ref.DTYPE and c.WRT == ref.WRT and c.PARAM_SHAPES == ref.PARAM_SHAPES
    assert_agrees(ref, c, tol)


# Adam divides each gradient entry by its own magnitude (plus eps): an entry near eps
# carries the rounding of the sums that made it (another order in C) into the step,
# amplified up to lr/eps.  The comparison takes eps = 1e-3, where the step is as
# well conditioned as the gradient.
STEPS = {
    "sgd": lambda m, params, state, inputs: m.sgd_step(params, 0.1, **inputs),
    "momentum": lambda m, params, state, inputs: m.momentum_step(params, state, 0.05, momentum=0.8, **inputs),
    "adam": lambda m, params, state, inputs: m.adam_step(params, state, 0.01, beta1=0.8, eps=1e-3, **inputs),
}


@pytest.mark.parametrize("step", list(STEPS))
@pytest.mark.parametrize("key", list(SPECS))
def test_update_steps_match_numpy(key, step, loaded, monkeypatch):
    ref, c = get(loaded, key)
    tol = tolerance(ref)
    # the NumPy module returns the gradient of a 0-d param as a NumPy scalar, which its
    # momentum and Adam steps cannot update in place: give its steps arrays (the C
    # loader's gradients are arrays, 0-d ones included)
    numpy_vag = ref.value_and_grad
    monkeypatch.setattr(ref, "value_and_grad", lambda params, **kw: (
        lambda value, grads: (value, {k: np.array(g) for k, g in grads.items()}))(*numpy_vag(params, **kw)))
    params, inputs = random_point(ref, n=5, seed=3)
    mine, theirs = {k: v.copy() for k, v in params.items()}, {k: v.copy() for k, v in params.items()}
    state_c, state_ref = {}, {}
    for _ in range(2):   # the second step reads the state the first left
        got = STEPS[step](c, mine, state_c, inputs)
        want = STEPS[step](ref, theirs, state_ref, inputs)
        assert abs(got - want) <= tol * max(abs(want), 1e-8)
    for k in params:
        assert mine[k].dtype == ref.DTYPE
        assert rel_error(theirs[k], mine[k]) < tol, k


def test_init_params_are_the_numpy_modules(loaded):
    ref, c = get(loaded, "digits_mlp")
    a, b = ref.init_params(seed=4), c.init_params(seed=4)
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def systematic(tmp_path_factory, cache):
    """Every row of the systematic op table: (NumPy module, C loader or its exception)."""
    out = tmp_path_factory.mktemp("c_systematic")
    loaders, refs = {}, {}
    for op in ALL_ROWS:
        refs[op] = bpcompile.compile(spec_text(op)).load()
        bpcompile.compile(spec_text(op), target="c").write(out)
        loaders[op] = import_file(out / f"{module_name(op)}_c.py", f"bp_systematic_{module_name(op)}_c")
    built = build_all(loaders)
    return {op: (refs[op], built[op]) for op in ALL_ROWS}


@pytest.mark.parametrize("op", list(ALL_ROWS))
def test_systematic_row_matches_numpy(op, systematic):
    ref, c = get(systematic, op)
    for seed in (1, 2):
        params, inputs = draw_point(ref, ALL_ROWS[op], seed=seed)
        want = np.asarray(call(ref.predict, params, inputs))
        assert rel_error(want, call(c.predict, params, inputs)) <= 1e-12, (op, "predict")
        want_l = call(ref.loss, params, inputs)
        assert abs(call(c.loss, params, inputs) - want_l) <= 1e-12 * max(abs(want_l), 1e-8), (op, "loss")
        want_v, want_g = call(ref.value_and_grad, params, inputs)
        got_v, got_g = call(c.value_and_grad, params, inputs)
        assert abs(got_v - want_v) <= 1e-12 * max(abs(want_v), 1e-8), (op, "value")
        assert list(got_g) == list(want_g)
        for k in want_g:
            assert rel_error(np.asarray(want_g[k]), got_g[k]) <= 1e-12, (op, k)


def test_threads_share_a_module(loaded):
    """The C functions are re-entrant: two threads call one module at once (each
    with its own workspace) and get what a lone call gets."""
    ref, c = get(loaded, "digits_mlp")
    points = [random_point(ref, n=64, seed=s) for s in range(2)]
    want = [c.value_and_grad(p, **i) for p, i in points]
    got = [[] for _ in points]

    def work(j):
        for _ in range(20):
            got[j].append(c.value_and_grad(*points[j][:1], **points[j][1]))
    threads = [threading.Thread(target=work, args=(j,)) for j in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for j, (v, g) in enumerate(want):
        for v2, g2 in got[j]:
            assert v2 == v and all(np.array_equal(g[k], g2[k]) for k in g)


def test_arrays_are_passed_without_a_copy(loaded):
    ref, c = get(loaded, "digits_mlp")
    x = np.zeros((4, 64), c.DTYPE)
    assert c._array(x, c.DTYPE, x.shape, "x") is x
    strided = np.zeros((4, 128), c.DTYPE)[:, ::2]
    converted = c._array(strided, c.DTYPE, (4, 64), "x")
    assert converted is not strided and converted.flags.c_contiguous


def test_the_fast_call_path_takes_any_array_and_returns_fresh_results(loaded):
    """_call's inlined fast path (no copy for a C-contiguous array of the dtype, the
    address through the buffer protocol) and its fallbacks (read-only, strided,
    another dtype, a list) give the same numbers; results are fresh arrays each call."""
    ref, c = get(loaded, "tanh_regression")
    params, inputs = random_point(ref, n=3)
    want_v, want_g = c.value_and_grad(params, **inputs, check=False)
    view = np.zeros((5, 3), c.DTYPE)[1:4]
    view[...] = inputs["x"]
    assert c._pointer(view) == view.ctypes.data   # a view's own data, not its base's
    frozen = {k: v.copy() for k, v in params.items()}
    for v in frozen.values():
        v.flags.writeable = False
    variants = [dict(inputs, x=view),
                dict(inputs, x=np.asfortranarray(inputs["x"])),
                dict(inputs, x=inputs["x"].astype(np.longdouble)),   # another dtype: converted
                dict(inputs, x=inputs["x"].tolist())]
    for kwargs in variants:
        v, g = c.value_and_grad(params, **kwargs, check=False)
        assert v == want_v and all(np.array_equal(g[k], want_g[k]) for k in g)
    v, g = c.value_and_grad(frozen, **inputs, check=False)
    assert v == want_v and all(np.array_equal(g[k], want_g[k]) for k in g)
    v2, g2 = c.value_and_grad(params, **inputs, check=False)
    assert all(not np.shares_memory(g[k], g2[k]) for k in g)
    assert all(not np.shares_memory(g2[a], g2[b]) for a in g2 for b in g2 if a != b)
    other = {k: v[:1] for k, v in inputs.items()}   # another batch size: another workspace
    assert c.loss(params, **other, check=False) == ref.loss(params, **other)
    assert c.loss(params, **inputs, check=False) == want_v
    out = c.predict(params, x=inputs["x"], check=False)
    assert out is not c.predict(params, x=inputs["x"], check=False)


def test_an_input_the_function_reads_is_required(loaded):
    ref, c = get(loaded, "tanh_regression")
    params, inputs = random_point(ref, n=3)
    with pytest.raises(ValueError, match="reads x, y, given None"):
        c.loss(params, x=None, y=None, check=False)


# ---------------------------------------------------------------------------
# Warnings, C++, sanitizers


def compile_c(compiler, files, *flags, out=None):
    """Compile ``files`` with every warning an error (linked into ``out`` with libm, or -c)."""
    cmd = [compiler, *WARNINGS, *flags, *map(str, files)] + (["-o", str(out), "-lm"] if out else ["-c"])
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.mark.parametrize("compiler", ["gcc", "clang"])
def test_c_compiles_without_warnings(compiler, c_dir, tmp_path):
    path = shutil.which(compiler)
    if path is None:
        pytest.skip(f"{compiler} is not installed")
    for key in SPECS:
        name = load_spec(key).name
        r = subprocess.run([path, *WARNINGS, "-O2", "-c", str(c_dir / f"{name}.c"), "-o", str(tmp_path / "x.o")],
                           capture_output=True, text=True)
        assert r.returncode == 0 and not r.stderr, f"{compiler} {name}.c:\n{r.stderr[:3000]}"


def test_headers_go_together_and_into_cpp(c_dir, tmp_path):
    """Every header in one C translation unit, and in one C++ one (extern "C")."""
    names = [load_spec(key).name for key in SPECS]
    unit = "".join(f'#include "{n}.h"\n' for n in names) + "int main(void) { return 0; }\n"
    (tmp_path / "all.c").write_text(unit)
    r = subprocess.run([CC, *WARNINGS, f"-I{c_dir}", "-fsyntax-only", str(tmp_path / "all.c")],
                       capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr, r.stderr[:3000]
    cxx = shutil.which("g++") or shutil.which("clang++")
    if cxx:
        (tmp_path / "all.cpp").write_text(unit.replace("(void)", "()"))
        r = subprocess.run([cxx, "-std=c++17", "-Wall", "-Wextra", "-Werror", f"-I{c_dir}", "-fsyntax-only",
                            str(tmp_path / "all.cpp")], capture_output=True, text=True)
        assert r.returncode == 0 and not r.stderr, r.stderr[:3000]


def driver(spec) -> str:
    """A C program calling predict, loss and value_and_grad of ``spec`` on
    pseudo-random data, every array malloc'd at its exact size (so that a sanitizer
    sees any access past it), and printing the loss."""
    real = "float" if spec.dtype == "float32" else "double"
    name = spec.name
    c = bpcompile.compile(spec, target="c")
    vag, pred = c.programs["value_and_grad"], c.programs["predict"]
    lines = ["#include <stdio.h>", "#include <stdlib.h>", f'#include "{name}.h"', "",
             f"static {real}* fill(size_t n, unsigned* s)", "{",
             f"    {real}* p = ({real}*)malloc(n * sizeof *p);",
             f"    for (size_t i = 0; i < n; i++) {{ *s = *s * 1103515245u + 12345u; "
             f"p[i] = ({real})((*s >> 8) % 2000) / ({real})1000 - 1; }}",
             "    return p;", "}", "", "int main(void)", "{", "    const int N = 5;", "    unsigned s = 7;",
             f"    void* ws = malloc({name}_workspace_size(N));", "    double L = 0;"]
    args = []
    for p, d in spec.params.items():
        lines.append(f"    {real}* p_{p} = fill({int(np.prod(d.shape))}, &s);")
        args.append(f"p_{p}")
    for i, d in spec.inputs.items():
        if d.is_label:   # a label, or tokens: N * T of them
            size = f"N * {int(np.prod(d.shape))}" if d.shape else "N"
            lines.append(f"    int* i_{i} = (int*)malloc({size} * sizeof(int));")
            lines.append(f"    for (int k = 0; k < {size}; k++) i_{i}[k] = (k * 7 + 3) % {d.classes};")
        else:
            lines.append(f"    {real}* i_{i} = fill((size_t)N * {int(np.prod(d.shape))}, &s);")
        args.append(f"i_{i}")

    def size(v):
        return f"(size_t)N * {int(np.prod(v.shape))}" if v.batched else f"{int(np.prod(v.shape))}"
    lines.append(f"    {real}* out = ({real}*)malloc({size(pred.output)} * sizeof(*out));")
    grads = []
    for k, v in vag.grads.items():
        lines.append(f"    {real}* g_{k} = ({real}*)malloc({size(v)} * sizeof(*g_{k}));")
        grads.append(f"g_{k}")
    call = ", ".join(["N", "ws", *args])
    lines += [f"    if ({name}_predict({call}, out) != 0) return 1;",
              f"    if ({name}_loss({call}, &L) != 0) return 2;",
              f"    if ({name}_value_and_grad({call}, &L, {', '.join(grads)}) != 0) return 3;",
              '    printf("%.17g\\n", L);', "    return 0;", "}", ""]
    return "\n".join(lines)


@pytest.mark.parametrize("key", ["digits_mlp", "cov_matrix", "brackets_rnn"])
def test_runs_clean_under_sanitizers(key, c_dir, tmp_path):
    if GCC is None:
        pytest.skip("gcc is not installed")
    spec = load_spec(key)
    (tmp_path / "main.c").write_text(driver(spec))
    exe = tmp_path / "main"
    r = compile_c(GCC, [tmp_path / "main.c", c_dir / f"{spec.name}.c"], f"-I{c_dir}", "-g", "-O1",
                  "-fsanitize=address,undefined", "-fno-sanitize-recover=all", out=exe)
    if r.returncode != 0 and "asan" in r.stderr.lower():
        pytest.skip(f"no sanitizer runtime: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stderr[:3000]
    env = dict(os.environ, ASAN_OPTIONS="halt_on_error=1:detect_leaks=0",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    run = subprocess.run([str(exe)], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0 and "runtime error" not in run.stderr, run.stderr[:3000]
    assert np.isfinite(float(run.stdout))


# ---------------------------------------------------------------------------
# The C API's error codes


def test_c_api_error_codes(loaded):
    ref, c = get(loaded, "tanh_regression")
    fns = c._load()
    loss = ctypes.c_double()
    assert fns["workspace_size"](0) == 0 and fns["workspace_size"](3) > 0
    ws = np.zeros(fns["workspace_size"](3) + 16, np.uint8)
    base = ws.ctypes.data + (-ws.ctypes.data) % 8
    x = np.zeros((3, 3))
    w = np.zeros((3, 3))
    arrays = [w.ctypes.data, w.ctypes.data, w.ctypes.data, x.ctypes.data, x.ctypes.data]
    assert fns["loss"](3, base, *arrays, ctypes.addressof(loss)) == 0
    assert fns["loss"](0, base, *arrays, ctypes.addressof(loss)) == -1
    assert fns["loss"](3, None, *arrays, ctypes.addressof(loss)) == -2
    assert fns["loss"](3, base, *arrays, None) == -2
    assert fns["loss"](3, base + 1, *arrays, ctypes.addressof(loss)) == -3
    assert b"batch size" in fns["error_string"](-1)
    assert b"aligned" in fns["error_string"](-3)
    assert fns["error_string"](5) == b"unknown error code"


# ---------------------------------------------------------------------------
# The loader's errors, each one line


def fresh_loader(directory, tag):
    return import_file(directory / "tanh_regression_c.py", f"bp_test_c_fresh_{tag}")


@pytest.fixture
def one(tmp_path, monkeypatch):
    """tanh_regression compiled for C into a directory of its own, with a cache of its own."""
    bpcompile.compile(ROOT / "examples" / "tanh_regression.yaml", target="c").write(tmp_path / "m")
    monkeypatch.setenv("BPCOMPILE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv("CFLAGS", raising=False)
    return tmp_path / "m"


def test_no_c_compiler(one, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    m = fresh_loader(one, "nocc")
    with pytest.raises(m.CModuleError, match=r"no C compiler found \(CC=/nonexistent/cc\)"):
        m.loss(m.init_params(), x=np.zeros((2, 3)), y=np.zeros(2))


def test_compile_error_shows_the_compilers_first_lines(one, monkeypatch):
    monkeypatch.setenv("CFLAGS", "-O2 -Dtanh=@")
    m = fresh_loader(one, "broken")
    with pytest.raises(m.CModuleError) as e:
        m._load()
    text = str(e.value)
    assert text.startswith("tanh_regression: compiling tanh_regression.c failed (")
    assert "error" in text and "-Dtanh=@" in text
    assert len(text.splitlines()) <= 13
    assert not list((one.parent / "cache").glob("*.so"))


def test_cflags_and_cc_choose_the_build(one, monkeypatch):
    monkeypatch.setenv("CC", f"{CC} -DUNUSED_FLAG")
    monkeypatch.setenv("CFLAGS", "-O1")
    m = fresh_loader(one, "cflags")
    cmd = m._build_command("OUT", "SRC")
    assert cmd[1:3] == ["-DUNUSED_FLAG", "-O1"] and "-O3" not in cmd
    params = m.init_params()
    assert np.isfinite(m.loss(params, x=np.ones((2, 3)), y=np.ones(2)))


def test_an_edited_source_is_refused(one):
    src = one / "tanh_regression.c"
    src.write_text(src.read_text() + "\n")
    m = fresh_loader(one, "edited")
    with pytest.raises(m.CModuleError, match="is not the file this loader was generated with"):
        m._load()


def test_a_cached_library_that_does_not_load_is_rebuilt(one):
    """(A truncated file, or another machine's library, under the name the build's
    hash gives: the loader builds it again.)"""
    m = fresh_loader(one, "stale")
    source, header = m._read(m.SOURCE, m.SOURCE_SHA256), m._read(m.HEADER, m.HEADER_SHA256)
    lib = m._library_path(m._cache_dir(), source, header)
    lib.write_bytes(b"not a library")
    params = m.init_params()
    assert np.isfinite(m.loss(params, x=np.ones((2, 3)), y=np.ones(2)))
    assert lib.read_bytes()[:4] == b"\x7fELF"


def test_a_shared_cache_is_refused(one):
    cache = one.parent / "cache"
    cache.mkdir(mode=0o700)
    cache.chmod(0o777)
    m = fresh_loader(one, "shared")
    with pytest.raises(m.CModuleError, match="group- or world-writable"):
        m._load()


# ---------------------------------------------------------------------------
# The generated files


def test_cli_writes_the_c_the_header_and_the_loader(tmp_path):
    from bpcompile.cli import main
    assert main(["compile", str(ROOT / "examples" / "tanh_regression.yaml"), "--target", "c",
                 "-o", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tanh_regression.c", "tanh_regression.h",
                                                         "tanh_regression_c.py"]


def test_c_output_is_deterministic():
    for key in ("digits_mlp", "cov_matrix"):
        a = bpcompile.compile(load_spec(key), target="c").files
        b = bpcompile.compile(load_spec(key), target="c").files
        assert a == b


def test_files_carry_the_bar_notes_and_the_api(c_dir):
    h = (c_dir / "tanh_regression.h").read_text()
    c = (c_dir / "tanh_regression.c").read_text()
    for text in ("W_bar = d_bar x^T (summed over the batch)", "size_t tanh_regression_workspace_size(int N);",
                 "int tanh_regression_value_and_grad(", "const double* x,", "#ifndef BPC_TANH_REGRESSION_H",
                 'extern "C" {', "BP_ERROR_ALIGNMENT"):
        assert text in h, text
    assert '#include "tanh_regression.h"' in c and "malloc(" not in c
    assert "// a = d + b" in c
    for key in SPECS:
        name = load_spec(key).name
        for suffix in (".c", ".h"):
            check_c_file((c_dir / f"{name}{suffix}").read_text(), name + suffix, name)


# ---------------------------------------------------------------------------
# Hostile text in every field the files print (as tests/test_hostile_cuda.py for the .cu)


def test_hostile_fields_stay_in_their_comments(tmp_path, monkeypatch):
    """Spec text that ends a comment, splices a line, starts a directive or closes a
    docstring, in the spec file's name, the spec, the equations and the kernels'
    notes: the .c and .h hold it only in comments (gone after the preprocessor), the
    loader only as data, and the library still gives NumPy's gradients."""
    import ast
    import dataclasses
    import sys

    from test_hostile_cuda import BASE_SPEC, HOSTILE_FILE, HOSTILE_TEXT, PAYLOADS

    from bpcompile import __version__
    from bpcompile.ir import equations
    from bpcompile.targets.c import printer

    c = bpcompile.compile(bpcompile.parse_spec(BASE_SPEC, file="hostile.yaml"))
    spec = dataclasses.replace(c.spec, file=HOSTILE_FILE, text=HOSTILE_TEXT)
    low = dataclasses.replace(c.lowered, spec=spec)
    for prog in c.programs.values():
        for k in prog.kernels:
            k.notes = list(PAYLOADS)
    monkeypatch.setattr(equations, "docstring_lines", lambda low, adj, namer=None: (list(PAYLOADS), list(PAYLOADS)))
    files = printer.render(low, c.adjoints, c.programs, __version__)
    monkeypatch.undo()
    for fname, text in files.items():
        (tmp_path / fname).write_text(text, encoding="utf-8", newline="\n")
    clean = bpcompile.compile(bpcompile.parse_spec(BASE_SPEC), target="c").files

    def preprocessed(path):
        """The file after line splicing, trigraphs and comment removal (directives kept, not run)."""
        r = subprocess.run([CC, "-std=c99", "-trigraphs", "-fpreprocessed", "-dD", "-E", "-P", str(path)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return r.stdout

    (tmp_path / "clean").mkdir()
    for fname in ("hostile.c", "hostile.h"):
        assert files[fname].isascii() and "\r" not in files[fname] and "??" not in files[fname]
        (tmp_path / "clean" / fname).write_text(clean[fname])
        code = preprocessed(tmp_path / fname)
        assert "PWNED" not in code and "passwd" not in code and "MARKER" not in code
        directives = [line for line in code.splitlines() if line.startswith("#")]
        assert directives == [line for line in preprocessed(tmp_path / "clean" / fname).splitlines()
                              if line.startswith("#")]
    loader = files["hostile_c.py"]
    tree = ast.parse(loader)
    assert "evil\nint PWNED_file = 1;" in ast.get_docstring(tree, clean=False)
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Name) and "PWNED" in n.id]
    assert not [line for line in loader.splitlines() if "#" in line and "PWNED" in line]
    monkeypatch.setenv("BPCOMPILE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("CFLAGS", "-O1 -Wall -Wextra -Wpedantic -Werror")
    r = subprocess.run([sys.executable, "-c", "import hostile_c as m; print(m.NAME)"], cwd=tmp_path,
                       capture_output=True, text=True, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    assert r.returncode == 0 and r.stdout.split() == ["hostile"], r.stderr
    assert not (tmp_path / "MARKER").exists()
    mod = import_file(tmp_path / "hostile_c.py", "bp_test_hostile_c")
    ref = c.load()
    params, inputs = random_point(ref, n=5, seed=1)
    want_v, want_g = ref.value_and_grad(params, **inputs)
    got_v, got_g = mod.value_and_grad(params, **inputs)
    assert abs(got_v - want_v) <= 1e-12 * abs(want_v)
    for k in want_g:
        assert rel_error(want_g[k], got_g[k]) < 1e-12, k


def test_templates_refuse_an_unescaped_field():
    from bpcompile.targets.c import printer
    env = printer.environment()
    with pytest.raises(TypeError, match="without an escaping filter"):
        env.from_string("// {{ x }}").render(x="text\nint PWNED;")
    assert "\n" not in env.from_string("// {{ x | c_comment }}").render(x="a\nint PWNED;")


# ---------------------------------------------------------------------------
# examples/c_embed: a plain C program training with generated gradients


def test_c_embed_example_trains(tmp_path):
    import re
    bpcompile.compile(ROOT / "examples" / "tanh_regression.yaml", target="c").write(tmp_path)
    exe = tmp_path / "train"
    r = compile_c(CC, [ROOT / "examples" / "c_embed" / "train.c", tmp_path / "tanh_regression.c"],
                  f"-I{tmp_path}", "-O2", out=exe)
    assert r.returncode == 0 and not r.stderr, r.stderr[:3000]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    m = re.search(r"loss fell from (\S+) to (\S+) ", run.stdout)
    assert m, run.stdout
    first, last = float(m.group(1)), float(m.group(2))
    assert np.isfinite(last) and last < first / 100, run.stdout
    losses = [float(x) for x in re.findall(r"loss (\S+)\n", run.stdout)]
    assert len(losses) == 9 and losses == sorted(losses, reverse=True), run.stdout


def test_generated_c_files_are_current(tmp_path):
    """generated/c/ is what the compiler writes today, byte for byte, whatever the hash seed."""
    from test_golden import compile_cli
    compile_cli(tmp_path / "a", 0, "c")
    compile_cli(tmp_path / "b", 12345, "c")
    written = sorted(f.name for f in (tmp_path / "a").iterdir())
    assert written == sorted(f.name for f in (ROOT / "generated" / "c").iterdir() if f.is_file())
    for name in written:
        fresh = (tmp_path / "a" / name).read_bytes()
        assert fresh == (tmp_path / "b" / name).read_bytes(), name
        assert fresh == (ROOT / "generated" / "c" / name).read_bytes(), (
            f"generated/c/{name} is stale: run bpcompile compile examples/*.yaml --target c -o generated/c")


def test_checked_in_loaders_pass_pyflakes():
    pyflakes_api = pytest.importorskip("pyflakes.api", reason="pyflakes (the test extra) lints generated code")
    from pyflakes.reporter import Reporter
    import io
    for path in sorted((ROOT / "generated" / "c").glob("*_c.py")):
        out = io.StringIO()
        assert pyflakes_api.check(path.read_text(), str(path), Reporter(out, out)) == 0, out.getvalue()


def test_c_states_only_how_it_differs():
    """The C language overrides CStyle's entry point (the caller's workspace), its
    GEMM (the blocked kernel of clike/gemm.py), its tanh (bp_tanh, vectorisable)
    and runs elementwise kernels as loop nests, nothing else: the kernels, loops,
    reductions and memory operations are the base's, and the lowering (every
    @lowers method) is the shared one."""
    from bpcompile.targets import get
    from bpcompile.targets.c.printer import C
    from bpcompile.targets.clike import CStyle, FunctionPrinter
    assert get("c").printer is FunctionPrinter and issubclass(C, CStyle)
    overridden = {k for k in vars(C) if not k.startswith("__") and k in vars(CStyle)}
    assert overridden == {"name", "reserved", "entry_params", "entry_head", "gemm", "expr_printer", "nested_loops", "reuse_buffers"}
    assert not any(getattr(v, "lowers", None) for v in vars(C).values())


# ---------------------------------------------------------------------------
# Speed: what the generated code relies on


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_bp_tanh_matches_numpy(dtype, cache):
    """bp_tanh (the C target's vectorisable tanh: expm1 by a polynomial) against
    NumPy's tanh over the whole range: tiny, near 0, the middle, where it rounds to
    +-1, the signed zeros, infinities and NaN; within a few ulp (relative)."""
    spec = {"name": f"tanh_only_{dtype}", "dtype": dtype, "inputs": {"x": [512]}, "params": {},
            "graph": {"e": "tanh(x)"}, "output": "e", "loss": "sum(e)", "wrt": ["x"]}
    c = bpcompile.compile(spec, target="c").load()
    assert "bp_tanh(" in bpcompile.compile(spec, target="c").source
    dt = np.dtype(dtype)
    rng = np.random.default_rng(0)
    x = np.concatenate([np.logspace(-30, 1.5, 3000), rng.uniform(-25, 25, 3000), np.linspace(-1, 1, 1001),
                        [0.0, 1e-300, 5e-324, 19.99, 20.0, 20.01, 9.99, 10.0, 10.01, float(np.finfo(dt).max)]]).astype(dt)
    x = np.concatenate([x, -x])
    x = np.resize(x, (len(x) // 512 + 1) * 512).reshape(-1, 512)
    got = c.predict({}, x=x)
    want = np.tanh(x)
    ulp = np.spacing(np.abs(want).astype(dt))
    assert np.max(np.abs(got - want) / ulp) <= 8
    assert np.array_equal(np.signbit(got), np.signbit(want))     # -0.0 stays -0.0
    special = np.array([[np.nan, np.inf, -np.inf, -0.0] * 128], dt)
    got = c.predict({}, x=special)[0, :4]
    assert np.isnan(got[0]) and got[1] == 1 and got[2] == -1 and got[3] == 0 and np.signbit(got[3])


def test_loader_default_flags(tmp_path, monkeypatch):
    """Without CFLAGS the loader builds with -O3 -march=native -ffp-contract=fast where
    the compiler takes them (gcc and clang here do), else -O3; a library built
    for the machine is cached under a key naming its CPU."""
    monkeypatch.setenv("BPCOMPILE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv("CFLAGS", raising=False)
    m = import_file(ROOT / "generated" / "c" / "tanh_regression_c.py", "bp_test_c_flags")
    native = m._takes_native(m._compiler())
    assert m.cflags() == (m.NATIVE_CFLAGS if native else m.PORTABLE_CFLAGS)
    cmd = m._build_command("OUT", "SRC")
    assert cmd[1:1 + len(m.cflags().split())] == m.cflags().split()
    source, header = m._read(m.SOURCE, m.SOURCE_SHA256), m._read(m.HEADER, m.HEADER_SHA256)
    here = m._library_path(m._cache_dir(), source, header)
    monkeypatch.setattr(m, "_machine", lambda: "another CPU")
    elsewhere = m._library_path(m._cache_dir(), source, header)
    assert (here != elsewhere) == native
    monkeypatch.setenv("CFLAGS", "-O2")
    assert m.cflags() == "-O2" and "-march=native" not in m._build_command("OUT", "SRC")
    monkeypatch.setenv("CC", "/bin/false")   # a "compiler" that refuses everything: the portable flags
    monkeypatch.delenv("CFLAGS")
    assert m.cflags() == m.PORTABLE_CFLAGS


@pytest.mark.parametrize("key", list(SPECS))
def test_shared_buffers_never_meet(key):
    """share_buffers: a buffer given to a later value was last read (through any
    alias) before that value's first write, and has its size; so no kernel's
    output shares memory with one of its arguments, and no value is overwritten
    while it is still to be read."""
    from bpcompile.targets.c.printer import LANG
    from bpcompile.targets.clike.host import lifetimes, share_buffers
    spec = load_spec(key)
    compiled = bpcompile.compile(spec, target="c")
    printed = print_module(compiled.lowered, compiled.programs, LANG)
    for fn, fp in printed.printers.items():
        life, shared = lifetimes(fp), share_buffers(fp)
        owner = {nm: shared.get(nm, nm) for nm in fp.storage}
        for nm, slot in shared.items():
            assert fp.storage[nm] == fp.storage[slot], (fn, nm, slot)
        by_slot = {}
        for nm in fp.storage:
            by_slot.setdefault(owner[nm], []).append(life[nm])
        for slot, spans in by_slot.items():
            spans.sort()
            for (_, stop), (start, _) in zip(spans, spans[1:]):
                assert stop < start, (key, fn, slot, spans)


def test_shared_buffers_shrink_the_workspace():
    """Deep thin (32 x 64 tanh) at batch 64: every layer's buffers reused, the
    workspace about a quarter of one buffer per value."""
    spec = yaml.safe_load((ROOT / "benchmarks" / "specs" / "deep_chain_bench_f32.yaml").read_text())
    from bpcompile.targets.c.printer import LANG
    from bpcompile.targets.clike.host import share_buffers
    compiled = bpcompile.compile(spec, target="c")
    fp = print_module(compiled.lowered, compiled.programs, LANG).printers["value_and_grad"]
    shared = share_buffers(fp)
    assert len(fp.storage) > 100 and len(fp.storage) - len(shared) <= len(fp.storage) // 3


def test_loader_falls_back_to_portable_flags(tmp_path, monkeypatch):
    """A build that fails with the default native flags (they passed the probe, the
    file did not build) is retried with -O3 once; with CFLAGS set, it is an error."""
    monkeypatch.setenv("BPCOMPILE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CFLAGS", raising=False)
    # a compiler that takes -march=native for the probe but fails on the module
    wrapper = refusing_compiler(tmp_path / "cc-no-native", "*march=native*shared*", "no: $*", CC)
    monkeypatch.setenv("CC", str(wrapper))
    m = import_file(ROOT / "generated" / "c" / "tanh_regression_c.py", "bp_test_c_fallback")
    assert m.cflags() == m.NATIVE_CFLAGS
    params, inputs = random_point(m, n=3, seed=1)
    m.loss(params, **inputs)
    assert m.cflags() == m.PORTABLE_CFLAGS
    monkeypatch.setenv("CFLAGS", m.NATIVE_CFLAGS)
    fresh = import_file(ROOT / "generated" / "c" / "tanh_regression_c.py", "bp_test_c_fallback_2")
    with pytest.raises(fresh.CModuleError, match="compiling tanh_regression.c failed"):
        fresh.loss(params, **inputs)


@pytest.mark.parametrize("key", ["digits_mlp", "brackets_rnn", "mlp_regression", "digits_cnn"])
def test_sums_made_in_their_maps_loop_add_in_the_same_order(key, tmp_path, monkeypatch):
    """A sum of a map's output made in the map's loop nest (``map_and_sum``: bias
    gradients, the loss, softmax's denominators) adds the same terms in the same
    order as the reduction kernel it replaces: built without floating contraction
    (-O2 in C99 mode), the two builds give the same bits, and the fused one has
    fewer kernels."""
    import bpcompile.targets.clike.host as host
    spec = ROOT / "examples" / f"{key}.yaml"
    bpcompile.compile(spec, target="c").write(tmp_path / "fused")
    with monkeypatch.context() as mp:
        mp.setattr(host, "fusable_sums", lambda *a: {})
        bpcompile.compile(spec, target="c").write(tmp_path / "apart")
    fused, apart = ((tmp_path / d / f"{key}.c").read_text() for d in ("fused", "apart"))
    assert "added up in the same loop" in fused and "added up in the same loop" not in apart
    assert fused.count("_kernel(") < apart.count("_kernel(")
    monkeypatch.setenv("BPCOMPILE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CFLAGS", "-O2")
    monkeypatch.delenv("CC", raising=False)
    a = import_file(tmp_path / "fused" / f"{key}_c.py", f"bp_test_fused_{key}")
    b = import_file(tmp_path / "apart" / f"{key}_c.py", f"bp_test_apart_{key}")
    for n in (1, 4, 9):
        params, inputs = random_point(a, n=n, seed=n)
        va, ga = a.value_and_grad(params, **inputs)
        vb, gb = b.value_and_grad(params, **inputs)
        assert va == vb
        for k in ga:
            assert np.array_equal(ga[k], gb[k]), (key, n, k)
