"""Shared test helpers: random points and central finite differences."""

from __future__ import annotations

import concurrent.futures
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

import bpcompile

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

# A small well-formed spec that tests edit into bad or hostile ones
SMALL_SPEC = """\
name: m
inputs:
  x: [3]
  y: []
params:
  W: [2, 3]
  v: [2]
graph:
  h: tanh(W @ x)
  g: v @ h
loss: (y - g)**2
"""


def compile_error_line(spec_text: str, tmp_path: Path, capsys, monkeypatch) -> str:
    """``bpcompile compile bad.yaml -o out`` on ``spec_text``, asserting the
    contract for bad input: exit 2, nothing on stdout, no traceback, one line on
    stderr naming the file, and nothing written.  Returns that line."""
    from bpcompile.cli import main
    (tmp_path / "bad.yaml").write_text(spec_text)
    monkeypatch.chdir(tmp_path)
    try:
        code = main(["compile", "bad.yaml", "-o", "out"])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and "Traceback" not in err, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "bad.yaml" in lines[0], err
    assert not (tmp_path / "out").exists()
    return lines[0]


# The scale of the random params of a module where 1 would not do.  The RNN's 16
# tied steps are chaotic with recurrent weights of scale 1: its gradient is right
# (a difference of step 1e-6 agrees to 1e-7), but differences of step 1e-3 miss
# its curvature, and rounding (another summation order in C or CUDA) is amplified
# past any tolerance.  Its own init is of scale 0.3 (glorot of U [32, 32]).
# digits_cnn's dense layer reads 1024 features: at scale 1 its logits are in the
# hundreds, the softmax saturates to exact 0s and 1s, and rounding in the loss
# (about 1e-16 of a loss in the hundreds, over a step of 1e-6) swamps the
# differences; 0.1 is about its own init (He and Glorot: 0.47, 0.08, 0.04).
SCALE = {"brackets_rnn": 0.3, "digits_cnn": 0.1}

# Finite-difference steps other than 1e-3, per example.  digits_cnn is piecewise
# linear in its weights (relu, max pool) across 6144 relu units and 1024 pool
# windows per image: the five-point stencil's 4e-3 span crosses kinks and pool
# switches (off by 2-5% at step 1e-3), while a step of 1e-6 stays on one piece
# (agrees to 3e-7 relative).
STEP = {"digits_cnn": 1e-6}


def refusing_compiler(path: Path, pattern: str, message: str, cc: str) -> Path:
    """A C compiler at ``path`` that fails, printing ``message`` to stderr, when its
    arguments match the shell pattern ``pattern``, and is ``cc`` otherwise."""
    path.write_text(f'#!/bin/sh\ncase "$*" in {pattern}) echo "{message}" >&2; exit 1;; esac\nexec {cc} "$@"\n')
    path.chmod(0o755)
    return path


def random_point(module, n=4, seed=0, scale=None):
    """Random params (normal, of ``scale``: by default the module's in SCALE, else 1)
    and a batch of random inputs for a generated module."""
    if scale is None:
        scale = SCALE.get(module.NAME, 1.0)
    rng = np.random.default_rng(seed)
    params = {k: np.asarray(scale * rng.standard_normal(s), module.DTYPE)
              for k, s in module.PARAM_SHAPES.items()}
    inputs = {}
    for k, s in module.INPUT_SHAPES.items():
        if k in module.LABEL_CLASSES:   # labels [N], tokens [N, T]
            inputs[k] = rng.integers(0, module.LABEL_CLASSES[k], (n, *s))
        else:
            inputs[k] = rng.standard_normal((n, *s)).astype(module.DTYPE)
    return params, inputs


def finite_differences(module, params, inputs, name, h=None, at=None):
    """Central differences of module.loss with respect to every entry of ``name``
    (step ``h``: by default the module's in STEP, else 1e-3), or only at the
    entries ``at`` (the others are left 0).

    The five-point stencil: truncation error O(h^4), so a step large enough to
    keep rounding error far below 1e-6 relative still differentiates accurately.
    """
    if h is None:
        h = STEP.get(module.NAME, 1e-3)
    store = params if name in params else inputs
    x = store[name]
    out = np.zeros(x.shape)
    for idx in (np.ndindex(x.shape) if at is None else at):
        old = x[idx]
        f = {}
        for k in (-2, -1, 1, 2):
            x[idx] = old + k * h
            f[k] = module.loss(params, **inputs)
        x[idx] = old
        out[idx] = (f[-2] - 8 * f[-1] + 8 * f[1] - f[2]) / (12 * h)
    return out


def some_entries(shape, most: int, seed: int = 0):
    """Every index of ``shape``, or ``most`` distinct ones drawn at random (seeded)
    where there are more: finite differences of a large kernel entry by entry
    (digits_cnn's W2 has 18,432) would take minutes."""
    size = int(np.prod(shape))
    if size <= most:
        return list(np.ndindex(*shape))
    flat = np.random.default_rng(seed).choice(size, most, replace=False)
    return [tuple(int(i) for i in np.unravel_index(f, shape)) for f in sorted(flat)]


def rel_error(a, b):
    scale = max(np.max(np.abs(a)), np.max(np.abs(b)), 1e-8)
    return float(np.max(np.abs(a - b)) / scale)


@pytest.fixture(scope="session")
def compiled_examples():
    return {p.stem: bpcompile.compile(bpcompile.load_spec(p)) for p in EXAMPLES}


# ---------------------------------------------------------------------------
# nvcc and cuBLAS's headers, for compiling every generated .cu

NVCC = shutil.which("nvcc") or next((str(p) for p in [Path("/usr/local/cuda/bin/nvcc")] if p.exists()), None)
CUBLAS_CACHE = Path(os.environ.get("BPCOMPILE_TEST_CACHE") or Path.home() / ".cache" / "bpcompile") / "cublas-include"


def _nvcc_major():
    r = subprocess.run([NVCC, "--version"], capture_output=True, text=True)
    m = re.search(r"release (\d+)\.", r.stdout)
    return int(m.group(1)) if m else None


def _known_cublas_include():
    """A directory holding cublas_v2.h that is already here: -I of BPCOMPILE_NVCC_FLAGS,
    the toolkit's include/, an installed nvidia-cublas wheel."""
    dirs = [f[2:] for f in shlex.split(os.environ.get("BPCOMPILE_NVCC_FLAGS", "")) if f.startswith("-I")]
    dirs.append(str(Path(os.path.realpath(NVCC)).parent.parent / "include"))
    try:
        import nvidia
        dirs += [str(p.parent) for root in nvidia.__path__ for p in Path(root).glob("*/include/cublas_v2.h")]
    except ImportError:
        pass
    return next((Path(d) for d in dirs if (Path(d) / "cublas_v2.h").exists()), None)


def download_cublas_headers(cache: Path = CUBLAS_CACHE, timeout: float = 600):
    """The include directory of cuBLAS's headers from PyPI's wheel for this nvcc's CUDA
    major version (nvidia-cublas for 13, nvidia-cublas-cu12 for 12), downloaded once with
    pip into ``cache`` (only the headers are kept: the wheel is some 450 MB).  Returns
    (directory or None, why not)."""
    major = _nvcc_major()
    if major is None:
        return None, "cannot read nvcc's CUDA version"
    package = f"nvidia-cublas>={major},<{major + 1}" if major >= 13 else f"nvidia-cublas-cu{major}"
    target = cache / f"cuda{major}"
    if (target / "cublas_v2.h").exists():
        return target, ""
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        try:
            r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir",
                                "--only-binary=:all:", "--disable-pip-version-check", "-q", "-d", tmp, package],
                               capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, f"pip download {package} timed out"
        wheels = sorted(Path(tmp).glob("*.whl"))
        if r.returncode != 0 or not wheels:
            return None, f"pip download {package} failed: {(r.stderr or r.stdout).strip()[-300:]}"
        staged = Path(tmp) / "include"
        staged.mkdir()
        with zipfile.ZipFile(wheels[0]) as z:
            for info in z.infolist():
                p = info.filename
                if "/include/" in p and p.endswith(".h") and ".." not in p.split("/"):
                    (staged / Path(p).name).write_bytes(z.read(info))
        if not (staged / "cublas_v2.h").exists():
            return None, f"{wheels[0].name} holds no cublas_v2.h"
        try:
            os.replace(staged, target)      # atomic: another session may be doing the same
        except OSError:
            if not (target / "cublas_v2.h").exists():
                raise
    return target, ""


@pytest.fixture(scope="session")
def cublas_include():
    """["-I<dir>"] for cuBLAS's headers: found here, or fetched from PyPI (cached in
    ~/.cache/bpcompile).  Skips only without nvcc or when the download fails."""
    if NVCC is None:
        pytest.skip("nvcc is not installed")
    found = _known_cublas_include()
    if found is None:
        found, why = download_cublas_headers()
        if found is None:
            pytest.skip(f"no cuBLAS headers: {why}")
    return [f"-I{found}"]


def nvcc_compile_all(sources, include, archs=("90",), jobs=None):
    """{source: (returncode, output)}: nvcc -Werror all-warnings -c on each .cu, in parallel
    (each to an object beside it)."""
    gencode = []
    for a in archs:
        gencode += ["-gencode", f"arch=compute_{a},code=sm_{a}"]

    def run(src):
        cmd = [NVCC, *gencode, "-Werror", "all-warnings", "-c", str(src), "-o", str(Path(src).with_suffix(".o")),
               *include]
        r = subprocess.run(cmd, capture_output=True, text=True)
        return r.returncode, " ".join(cmd) + "\n" + r.stdout + r.stderr

    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 2) as pool:
        futures = {src: pool.submit(run, src) for src in sources}
        return {src: f.result() for src, f in futures.items()}


def assert_agrees(ref, other, tol):
    """``other`` (a module of another target) agrees with the NumPy module ``ref``
    within ``tol`` on predict, loss and value_and_grad, at batch sizes 1, 6 and 41,
    with the same dtypes, shapes and gradient names."""
    for seed, n in ((0, 1), (1, 6), (2, 41)):
        params, inputs = random_point(ref, n=n, seed=seed)
        want = np.asarray(ref.predict(params, **inputs))
        got = other.predict(params, **inputs)
        assert got.shape == want.shape and got.dtype == ref.DTYPE
        assert rel_error(want, got) < tol, ("predict", seed, n)
        want_l = ref.loss(params, **inputs)
        assert abs(other.loss(params, **inputs) - want_l) <= tol * max(abs(want_l), 1e-8), ("loss", seed, n)
        want_v, want_g = ref.value_and_grad(params, **inputs)
        got_v, got_g = other.value_and_grad(params, **inputs)
        assert abs(got_v - want_v) <= tol * max(abs(want_v), 1e-8), ("value", seed, n)
        assert list(got_g) == list(want_g)
        for k in want_g:
            assert got_g[k].shape == np.shape(want_g[k]) and got_g[k].dtype == ref.DTYPE, k
            assert rel_error(np.asarray(want_g[k]), got_g[k]) < tol, (k, seed, n)
