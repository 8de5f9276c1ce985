"""Hostile input against the CUDA target (issue 10; issue 11's CUDA defects).

* Spec text in every field the .cu and its loader print (the spec file's name,
  the spec as written, the equations, the kernels' notes), filled with payloads
  that end a ``//`` comment (newline, carriage return, line and paragraph
  separators), splice the next line (a trailing backslash, the trigraph ``??/``),
  start a directive, close a docstring, or carry control and bidi characters.
  The printer is checked on its own, past the spec reader (which refuses most of
  these up front): comments stripped by a real C preprocessor leave no payload;
  the loader's code holds no payload, and importing it creates no marker file;
  the .cu builds with g++ against the emulation header, gives NumPy's gradients,
  and compiles with ``nvcc -Werror all-warnings``.
* The same attacks through the spec reader, end to end: a SpecError, or a module
  as safe as above.
* Numbers: every literal in device arithmetic is a floating literal of the dtype
  (``sqrt(3)`` made nvcc fail; an integer of 2**63 or more made the gradient 0).
* The loader refuses a .cu that is not the one it was generated with.
* The loader builds and loads libraries only in a private cache, under the
  SHA-256 of all the build reads: a library planted beside the .cu (the old
  ``__bpcache__``) or under another name is never loaded, and a cache others can
  write to is refused.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
from conftest import nvcc_compile_all, random_point, rel_error

from bpcompile.targets.cuda import EMULATION_HEADER
import bpcompile
from bpcompile import __version__
from bpcompile.targets.cuda import printer as codegen_cuda
from bpcompile.ir import equations
from bpcompile.targets.clike import real_literal
from bpcompile.targets.cuda.printer import CudaExprPrinter
from bpcompile.errors import SpecError

EMULATION_H = EMULATION_HEADER
CXX = os.environ.get("CXX") or shutil.which("g++")

# Each payload would put the word PWNED into code if pasted raw into a // comment,
# a docstring or a # comment.
PAYLOADS = [
    "a\n#define tanh exp\nint PWNED_define = 1;",
    "b\rint PWNED_cr = 1;",
    "c\u2028int PWNED_ls = 1;\u2029int PWNED_ps = 2;",
    "ends in a backslash \\\nint PWNED_splice_target = 1;",
    "trigraph ??/\nint PWNED_trigraph = 1;",
    "*/ int PWNED_block = 1; /*",
    '"""; PWNED_doc = __import__("os").system("touch MARKER") #',
    "\"\"\"\nPWNED_doc2 = open('MARKER', 'w')\n'''",
    "\\N{DIGIT ONE} \\x00 \\u0041 \\",
    "bidi \u202e PWNED_bidi \u2066 zero\u200bwidth \ufeff",
    "controls \x00\x07\x1b[2J\x0b\x0c\x7f\x85",
    "__attribute__((constructor)) static void PWNED_ctor() {}\n",
    "{{ name }} {% raw %} {# jinja #}",
    "\\\n\\\n#include </etc/passwd>",
]
HOSTILE_TEXT = "\n".join(PAYLOADS)
HOSTILE_FILE = "evil\nint PWNED_file = 1;\n\\\r\u2028??/.yaml"

# A spec with GEMMs, labels, a reduction and a softmax: most of what the .cu prints.
BASE_SPEC = """
name: hostile
inputs:
  x: [4]
  label: {classes: 3}
params:
  W: [3, 4]
  b: [3]
graph:
  z: W @ x + b
  p: softmax(z)
loss: cross_entropy(p, label) + sum(z * z) / 10
"""


@pytest.fixture(autouse=True)
def _private_build_cache(tmp_path_factory, monkeypatch):
    """The loaders of these tests build into one private cache of the session."""
    cache = tmp_path_factory.getbasetemp() / "bpcompile-cuda-cache"
    cache.mkdir(mode=0o700, exist_ok=True)
    monkeypatch.setenv("BPCOMPILE_CACHE", str(cache))


def import_file(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def strip_comments(cu: Path) -> str:
    """The .cu as the C preprocessor sees it after line splicing, trigraphs and comment
    removal (directives kept, not run)."""
    r = subprocess.run([CXX, "-std=c++20", "-x", "c++", "-trigraphs", "-fpreprocessed", "-dD", "-E", "-P", str(cu)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def render_hostile(spec_text: str = BASE_SPEC, name: str = "hostile"):
    """codegen_cuda.render on a compiled spec whose every printed text field is hostile
    (set past the spec reader, which refuses most of these characters)."""
    c = bpcompile.compile(bpcompile.parse_spec(spec_text, file=f"{name}.yaml"))
    spec = dataclasses.replace(c.spec, file=HOSTILE_FILE, text=HOSTILE_TEXT)
    low = dataclasses.replace(c.lowered, spec=spec)
    for prog in c.programs.values():
        for k in prog.kernels:
            k.notes = list(PAYLOADS)
    real_lines = equations.docstring_lines
    equations.docstring_lines = lambda low, adj, namer=None: (list(PAYLOADS), list(PAYLOADS))
    try:
        return c, codegen_cuda.render(low, c.adjoints, c.programs, __version__)
    finally:
        equations.docstring_lines = real_lines


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile_cuda")
    c, files = render_hostile()
    for fname, text in files.items():
        (out / fname).write_text(text, encoding="utf-8", newline="\n")
    shutil.copy(EMULATION_H, out / "cuda_emulation.h")
    return c, out


# ---------------------------------------------------------------------------
# Escaping by construction


def test_hostile_fields_stay_in_their_comments(hostile_dir):
    _, out = hostile_dir
    cu = out / "hostile.cu"
    text = cu.read_text()
    assert text.isascii() and "\r" not in text and "??" not in text
    codegen_cuda.check_c_source(text, "hostile.cu")
    if CXX is None:
        pytest.skip("no C preprocessor (g++)")
    code = strip_comments(cu)
    assert "PWNED" not in code and "passwd" not in code and "MARKER" not in code
    # the directives are those of the same spec compiled with harmless text
    clean = out / "clean.cu"
    clean.write_text(bpcompile.compile(bpcompile.parse_spec(BASE_SPEC), target="cuda").files["hostile.cu"])
    directives = [line for line in code.splitlines() if line.startswith("#")]
    assert directives == [line for line in strip_comments(clean).splitlines() if line.startswith("#")]
    # every launch is still code (a spliced comment used to swallow one)
    assert code.count("LAUNCH(kernels::") == text.count("LAUNCH(kernels::")


def test_hostile_loader_holds_the_text_only_as_data(hostile_dir, tmp_path):
    _, out = hostile_dir
    loader = (out / "hostile_cuda.py").read_text()
    assert loader.isascii()
    tree = ast.parse(loader)
    doc = ast.get_docstring(tree, clean=False)
    assert "evil\nint PWNED_file = 1;" in doc     # the file name, as data, exactly
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            assert "PWNED" not in node.id
    comments = [line for line in loader.splitlines() if "#" in line]
    assert not [c for c in comments if "PWNED" in c]
    # importing it runs nothing: no marker file in the directory it is imported from
    r = subprocess.run([sys.executable, "-c", "import hostile_cuda as m; print(m.NAME, m.SOURCE_SHA256[:8])"],
                       cwd=out, capture_output=True, text=True, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "hostile"
    assert not (out / "MARKER").exists()


def test_hostile_cu_builds_and_matches_numpy(hostile_dir, monkeypatch):
    """No comment swallowed code: built on the host, the gradients are NumPy's."""
    if CXX is None:
        pytest.skip("no host C++ compiler (g++)")
    c, out = hostile_dir
    monkeypatch.setenv("BPCOMPILE_CUDA_EMULATE", "1")
    monkeypatch.setenv("BPCOMPILE_CXXFLAGS", "-Wall -Wextra -Werror")
    cuda = import_file(out / "hostile_cuda.py", "bp_test_hostile_cuda")
    ref = c.load()
    params, inputs = random_point(ref, n=5, seed=1)
    want_v, want_g = ref.value_and_grad(params, **inputs)
    got_v, got_g = cuda.value_and_grad(params, **inputs)
    assert abs(got_v - want_v) <= 1e-12 * abs(want_v)
    for k in want_g:
        assert np.all(np.isfinite(got_g[k])) and rel_error(want_g[k], got_g[k]) < 1e-12, k


def test_templates_refuse_an_unescaped_field():
    env = codegen_cuda.environment()
    with pytest.raises(TypeError, match="without an escaping filter"):
        env.from_string("// {{ x }}").render(x="a\n#define y")
    assert env.from_string("// {{ x | c_comment }}").render(x="a\n#define y\\") == "// a #define y\\x5c"
    assert env.from_string("{{ x | py_str }}").render(x="'\n") == ascii("'\n")
    with pytest.raises(ValueError):
        codegen_cuda.ident("a\nb")


@pytest.mark.parametrize("line", [
    "int x; // ok",
    "#define LAUNCH(kernel, grid) \\",
])
def test_c_source_check_accepts_the_template(line):
    codegen_cuda.check_c_source(line + "\n    continued\n", "t")


@pytest.mark.parametrize("text", [
    "#define tanh exp\n",
    "// comment \\\nint spliced;\n",
    "// a\rb\n",
    "// ??/\n",
    "  #include </etc/passwd>\n",
    "// caf\u00e9\n",
])
def test_c_source_check_catches(text):
    with pytest.raises(AssertionError):
        codegen_cuda.check_c_source(text, "t")


# ---------------------------------------------------------------------------
# The same attacks through the spec reader


def _yaml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r") + '"'


ATTACKS = {
    "newline_define": ("(w*x\n#define tanh exp\n)", "a.yaml"),
    "carriage_return": ("(w*x  # c\rint PWNED = 1;\n)", "a.yaml"),
    "backslash_comment": ("(w*x  # ends in \\\n)", "a.yaml"),
    "trigraph_comment": ("(w*x  # ends in ??/\n)", "a.yaml"),
    "newline_file": ("w*x", "evil\n__attribute__((constructor)) static void PWNED() {}\n.yaml"),
}


@pytest.mark.parametrize("key", list(ATTACKS))
def test_attacks_through_the_spec_reader(key, tmp_path, monkeypatch):
    expr, file = ATTACKS[key]
    text = f"name: atk\ninputs:\n  x: [3]\nparams:\n  w: [3]\ngraph:\n  h: {_yaml_str(expr)}\n  g: tanh(h)\nloss: sum(g)\n"
    try:
        spec = bpcompile.parse_spec(text, file=file)
    except SpecError:
        return      # refused up front: fine
    c = bpcompile.compile(spec, target="cuda")
    c.write(tmp_path)
    cu = tmp_path / "atk.cu"
    codegen_cuda.check_c_source(cu.read_text(), "atk.cu")
    if CXX is None:
        pytest.skip("no host C++ compiler (g++)")
    assert "PWNED" not in strip_comments(cu) and "define tanh" not in strip_comments(cu)
    shutil.copy(EMULATION_H, tmp_path / "cuda_emulation.h")
    monkeypatch.setenv("BPCOMPILE_CUDA_EMULATE", "1")
    monkeypatch.setenv("BPCOMPILE_CXXFLAGS", "-Wall -Wextra -Werror")
    cuda = import_file(tmp_path / "atk_cuda.py", f"bp_test_atk_{key}")
    ref = bpcompile.compile(spec).load()
    params, inputs = random_point(ref, n=3, seed=2)
    for k, g in ref.gradient(params, **inputs).items():
        assert rel_error(g, cuda.gradient(params, **inputs)[k]) < 1e-12, k


# ---------------------------------------------------------------------------
# Numbers


@pytest.mark.parametrize("dtype, value, text", [
    ("float64", 3, "3.0"), ("float32", 3, "3.0f"), ("float64", 0, "0.0"), ("float64", -2, "-2.0"),
    ("float64", 2 ** 63, "9.223372036854776e+18"), ("float32", 2 ** 64 + 1, "1.8446744e+19f"),
    ("float64", 10 ** 400, "INFINITY"), ("float64", -10 ** 400, "(-INFINITY)"),
    ("float32", 1e39, "INFINITY"), ("float64", 1e-5, "1e-05"), ("float32", 0.1, "0.1f"),
    ("float64", 1e300, "1e+300"), ("float32", sp.Rational(1, 3), "0.33333334f"),
], ids=lambda v: str(v)[:24])
def test_real_literal(dtype, value, text):
    assert real_literal(value, dtype) == text


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_device_arithmetic_holds_no_integer_literal(dtype):
    x = sp.Symbol("x", real=True)
    p = CudaExprPrinter(dtype, {})
    exprs = [sp.sqrt(3) * x, x / 3, sp.exp(2) + x, sp.log(3) * x, x ** 7, 1 / x, x ** -2, sp.Integer(2 ** 64) * x,
             sp.pi * x, sp.E * x, sp.Max(x, 0), x - 1, sp.Rational(10 ** 30, 7) * x, sp.sqrt(x) / 3]
    for e in exprs:
        text = p.doprint(e)
        # every numeric literal (pp-number) is a floating one: a '.' or an exponent
        numbers = re.findall(r"(?<![\w.])\.?\d(?:[eE][+-]|[\w.])*", text)
        assert numbers and all("." in n or "e" in n for n in numbers), (e, text, numbers)
        assert "M_PI" not in text and "M_E" not in text
    assert p.doprint(sp.sqrt(3)) == ("sqrtf(3.0f)" if dtype == "float32" else "sqrt(3.0)")


NUMBER_SPECS = {
    "huge_int": """
name: huge_int
inputs:
  x: [3]
params:
  w: {shape: [3], init: normal(1.0)}
graph:
  h: w * x * 2**64 * 3
  g: tanh(h * 1e-20)
loss: sum(g * w) + sum(h) * 1e-19
""",
    "sqrt3": """
name: sqrt3
inputs:
  x: [3]
params:
  w: {shape: [3], init: normal(1.0)}
graph:
  h: w * x / sqrt(3) + exp(2) * w + log(3)
loss: sum(tanh(h)) + sum(w) ** 3
""",
    "sqrt3_f32": """
name: sqrt3_f32
dtype: float32
inputs:
  x: [3]
params:
  w: {shape: [3], init: normal(1.0)}
graph:
  h: w * x / sqrt(3) + 2 ** 0.5
loss: sum(h * h) / 7
""",
}


@pytest.mark.parametrize("key", list(NUMBER_SPECS))
def test_number_specs_match_numpy(key, tmp_path, monkeypatch):
    if CXX is None:
        pytest.skip("no host C++ compiler (g++)")
    spec = bpcompile.parse_spec(NUMBER_SPECS[key], file=f"{key}.yaml")
    bpcompile.compile(spec, target="cuda").write(tmp_path)
    shutil.copy(EMULATION_H, tmp_path / "cuda_emulation.h")
    monkeypatch.setenv("BPCOMPILE_CUDA_EMULATE", "1")
    monkeypatch.setenv("BPCOMPILE_CXXFLAGS", "-Wall -Wextra -Werror")
    cuda = import_file(tmp_path / f"{spec.name}_cuda.py", f"bp_test_numbers_{key}")
    ref = bpcompile.compile(spec).load()
    params, inputs = random_point(ref, n=4, seed=0)
    tol = 1e-12 if ref.DTYPE == np.float64 else 1e-5
    want = ref.gradient(params, **inputs)
    got = cuda.gradient(params, **inputs)
    for k in want:
        assert np.any(want[k] != 0) and rel_error(want[k], got[k]) < tol, (k, want[k], got[k])


# ---------------------------------------------------------------------------
# nvcc: every hostile .cu compiles without a warning


def test_nvcc_compiles_the_hostile_sources(hostile_dir, tmp_path, cublas_include):
    _, out = hostile_dir
    sources = [out / "hostile.cu"]
    for key, src in NUMBER_SPECS.items():
        spec = bpcompile.parse_spec(src, file=f"{key}.yaml")
        bpcompile.compile(spec, target="cuda").write(tmp_path)
        sources.append(tmp_path / f"{spec.name}.cu")
    for rc, output in nvcc_compile_all(sources, cublas_include).values():
        assert rc == 0, output
        assert "warning" not in output.lower().split("\n", 1)[1], output


# ---------------------------------------------------------------------------
# A .cu and its loader go together


def test_loader_refuses_a_cu_it_was_not_generated_with(tmp_path, monkeypatch):
    spec = bpcompile.parse_spec(NUMBER_SPECS["sqrt3"], file="sqrt3.yaml")
    c = bpcompile.compile(spec, target="cuda")
    c.write(tmp_path)
    cu = tmp_path / "sqrt3.cu"
    loader = (tmp_path / "sqrt3_cuda.py").read_text()
    assert f'SOURCE_SHA256 = "{hashlib.sha256(cu.read_bytes()).hexdigest()}"' in loader
    # a .cu from another compile (as a kill between writing the two files leaves)
    other = NUMBER_SPECS["sqrt3"].replace("log(3)", "log(5)")
    cu.write_text(bpcompile.compile(bpcompile.parse_spec(other), target="cuda").files["sqrt3.cu"])
    monkeypatch.setenv("BPCOMPILE_CUDA_EMULATE", "1")
    shutil.copy(EMULATION_H, tmp_path / "cuda_emulation.h")
    mod = import_file(tmp_path / "sqrt3_cuda.py", "bp_test_hash_mismatch")
    with pytest.raises(mod.CudaModuleError, match="not the source this loader was generated with"):
        mod.loss(mod.init_params(), x=np.zeros((2, 3)))
    assert not (tmp_path / "__bpcache__").exists() or not list((tmp_path / "__bpcache__").glob("*.so"))
    cu.unlink()
    with pytest.raises(mod.CudaModuleError, match="cannot read"):
        mod.loss(mod.init_params(), x=np.zeros((2, 3)))


# ---------------------------------------------------------------------------
# The build cache: private, keyed by everything the build reads

EVIL_SO = """
#include <fcntl.h>
#include <unistd.h>
__attribute__((constructor)) static void planted(void) {
    int fd = open("MARKER_PATH", O_CREAT | O_WRONLY, 0644);
    if (fd >= 0) close(fd);
}
"""


def _planted_library(tmp_path: Path, marker: Path) -> Path:
    """A shared library whose constructor creates ``marker`` when it is loaded."""
    src = tmp_path / "evil.c"
    src.write_text(EVIL_SO.replace("MARKER_PATH", str(marker)))
    lib = tmp_path / "evil.so"
    subprocess.run([CXX, "-x", "c", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    return lib


def _write_sqrt3(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    spec = bpcompile.parse_spec(NUMBER_SPECS["sqrt3"], file="sqrt3.yaml")
    bpcompile.compile(spec, target="cuda").write(directory)
    shutil.copy(EMULATION_H, directory / "cuda_emulation.h")
    return directory / "sqrt3_cuda.py"


def _old_cache_key(src_dir: Path) -> str:
    """The key the loader used to look up in __bpcache__ beside the .cu: computable by
    anyone holding the .cu."""
    source = (src_dir / "sqrt3.cu").read_bytes()
    header = (src_dir / "cuda_emulation.h").resolve()
    probe = [os.environ.get("CXX", "g++"), "-std=c++20", "-O1", "-x", "c++", "-include", str(header),
             "-shared", "-fPIC", "-o", "OUT", "SRC"] + os.environ.get("BPCOMPILE_CXXFLAGS", "").split()
    return hashlib.sha256(source + "\0".join(probe).encode()).hexdigest()[:16]


def test_loader_never_loads_a_planted_library(tmp_path, monkeypatch):
    if CXX is None:
        pytest.skip("no host C++ compiler (g++)")
    marker = tmp_path / "PWNED_marker"
    evil = _planted_library(tmp_path, marker)
    src_dir = tmp_path / "zoo"
    loader = _write_sqrt3(src_dir)
    cache = tmp_path / "cache"
    monkeypatch.setenv("BPCOMPILE_CACHE", str(cache))
    monkeypatch.setenv("BPCOMPILE_CUDA_EMULATE", "1")
    monkeypatch.delenv("BPCOMPILE_CXXFLAGS", raising=False)
    # the old place beside the source, under the old key (and an unemulated name)
    old = src_dir / "__bpcache__"
    old.mkdir()
    key = _old_cache_key(src_dir)
    for name in (f"sqrt3-emulated-{key}.so", f"sqrt3-{key}.so"):
        shutil.copy(evil, old / name)
    # the new place under names that are not the key of this build
    cache.mkdir(mode=0o700)
    for name in (f"sqrt3-emulated-{key}.so", f"sqrt3-emulated-{'0' * 64}.so", f"sqrt3-{'0' * 64}.so"):
        shutil.copy(evil, cache / name)
    planted = set(cache.iterdir())
    cuda = import_file(loader, "bp_test_planted_library")
    ref = bpcompile.compile(bpcompile.parse_spec(NUMBER_SPECS["sqrt3"])).load()
    params, inputs = random_point(ref, n=3, seed=1)
    assert cuda.loss(params, **inputs) == pytest.approx(ref.loss(params, **inputs), rel=1e-12)
    assert not marker.exists(), "a planted library was loaded"
    built = [p for p in cache.iterdir() if p not in planted]
    assert len(built) == 1 and re.fullmatch(r"sqrt3-emulated-[0-9a-f]{64}\.so", built[0].name), built
    assert (cache.stat().st_mode & 0o777) == 0o700


def test_emulation_header_is_part_of_the_key(tmp_path, monkeypatch):
    """The force-included header is read, hashed and built from a private copy: a
    header changed beside the .cu gets a library of its own."""
    if CXX is None:
        pytest.skip("no host C++ compiler (g++)")
    loader = _write_sqrt3(tmp_path / "src")
    cache = tmp_path / "cache"
    monkeypatch.setenv("BPCOMPILE_CACHE", str(cache))
    monkeypatch.setenv("BPCOMPILE_CUDA_EMULATE", "1")
    x = np.ones((2, 3))
    first = import_file(loader, "bp_test_header_key_1")
    value = first.loss(first.init_params(), x=x)
    assert len(list(cache.glob("*.so"))) == 1
    header = tmp_path / "src" / "cuda_emulation.h"
    header.write_text(header.read_text() + "\nstatic const int bp_header_changed = 1;\n")
    second = import_file(loader, "bp_test_header_key_2")
    assert second.loss(second.init_params(), x=x) == value
    assert len(list(cache.glob("*.so"))) == 2
    # the same files again: the cached library, nothing built
    third = import_file(loader, "bp_test_header_key_3")
    third.loss(third.init_params(), x=x)
    assert len(list(cache.glob("*.so"))) == 2 and not list(cache.glob(".*"))


def test_default_cache_is_private_and_nothing_is_written_beside_the_source(tmp_path, monkeypatch):
    if CXX is None:
        pytest.skip("no host C++ compiler (g++)")
    loader = _write_sqrt3(tmp_path / "src")
    before = sorted(p.name for p in (tmp_path / "src").iterdir())
    monkeypatch.delenv("BPCOMPILE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("BPCOMPILE_CUDA_EMULATE", "1")
    cuda = import_file(loader, "bp_test_default_cache")
    cuda.loss(cuda.init_params(), x=np.ones((2, 3)))
    cache = tmp_path / "xdg" / "bpcompile" / "cuda"
    assert len(list(cache.glob("sqrt3-emulated-*.so"))) == 1
    assert (cache.stat().st_mode & 0o777) == 0o700
    assert sorted(p.name for p in (tmp_path / "src").iterdir() if p.name != "__pycache__") == before


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o722], ids=lambda m: f"{m:o}")
def test_cache_that_others_can_write_is_refused(tmp_path, monkeypatch, mode):
    loader = _write_sqrt3(tmp_path / "src")
    cache = tmp_path / "shared"
    cache.mkdir()
    cache.chmod(mode)
    monkeypatch.setenv("BPCOMPILE_CACHE", str(cache))
    monkeypatch.setenv("BPCOMPILE_CUDA_EMULATE", "1")
    cuda = import_file(loader, f"bp_test_shared_cache_{mode:o}")
    with pytest.raises(cuda.CudaModuleError, match=re.escape(f"refusing the build cache {cache}: it is group- "
                                                             f"or world-writable (mode {mode:04o})")):
        cuda.loss(cuda.init_params(), x=np.ones((2, 3)))
    assert not list(cache.iterdir())


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="chown needs root")
def test_cache_owned_by_another_user_is_refused(tmp_path, monkeypatch):
    loader = _write_sqrt3(tmp_path / "src")
    cache = tmp_path / "theirs"
    cache.mkdir(mode=0o700)
    os.chown(cache, 65534, 65534)
    monkeypatch.setenv("BPCOMPILE_CACHE", str(cache))
    monkeypatch.setenv("BPCOMPILE_CUDA_EMULATE", "1")
    cuda = import_file(loader, "bp_test_foreign_cache")
    with pytest.raises(cuda.CudaModuleError, match="it is owned by uid 65534, not by you"):
        cuda.loss(cuda.init_params(), x=np.ones((2, 3)))
