"""The checked-in generated/ files are exactly what the compiler writes today,
and compiling is deterministic: byte-identical across runs and processes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import bpcompile
from conftest import EXAMPLES, ROOT


def compile_cli(out, hash_seed, target="numpy"):
    env = dict(os.environ, PYTHONHASHSEED=str(hash_seed))
    specs = [str(p.relative_to(ROOT)) for p in EXAMPLES]
    r = subprocess.run([sys.executable, "-m", "bpcompile", "compile", *specs, "--target", target,
                        "-o", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r


def test_generated_files_are_current(tmp_path):
    r = compile_cli(tmp_path, 0)
    assert len(r.stdout.splitlines()) == len(EXAMPLES)
    for path in EXAMPLES:
        name = bpcompile.load_spec(path).name
        fresh = (tmp_path / f"{name}.py").read_bytes()
        golden = (ROOT / "generated" / f"{name}.py").read_bytes()
        assert fresh == golden, f"generated/{name}.py is stale: run the README's first command"


def test_generated_cuda_files_are_current(tmp_path):
    compile_cli(tmp_path, 0, "cuda")
    written = sorted(f.name for f in tmp_path.iterdir())
    assert written == sorted(f.name for f in (ROOT / "generated" / "cuda").iterdir() if f.is_file())
    for name in written:
        assert (tmp_path / name).read_bytes() == (ROOT / "generated" / "cuda" / name).read_bytes(), (
            f"generated/cuda/{name} is stale: run bpcompile compile examples/*.yaml --target cuda "
            "-o generated/cuda")


def test_compiling_is_byte_identical_across_processes(tmp_path):
    compile_cli(tmp_path / "a", 1)
    compile_cli(tmp_path / "b", 12345)
    for f in sorted((tmp_path / "a").iterdir()):
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes(), f.name


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_generated_module_imports_numpy_only(path):
    source = (ROOT / "generated" / f"{bpcompile.load_spec(path).name}.py").read_text()
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert imports == ["import numpy as np"]
    compile(source, path.name, "exec")  # valid Python


def test_summary_line_names_the_counts(tmp_path):
    r = compile_cli(tmp_path, 0)
    first = r.stdout.splitlines()[0]
    for word in ("nodes", "adjoints", "shared subexpressions", str(tmp_path)):
        assert word in first


def test_every_generated_module_imports_in_a_fresh_interpreter(tmp_path):
    """A module we report as compiled runs: each generated file (NumPy modules and
    CUDA loaders) imports in a child interpreter, defines the API, and writes nothing."""
    files = sorted((ROOT / "generated").glob("*.py")) + sorted((ROOT / "generated" / "cuda").glob("*.py"))
    assert files
    driver = (
        "import importlib.util, sys\n"
        "for i, path in enumerate(sys.argv[1:]):\n"
        "    spec = importlib.util.spec_from_file_location(f'generated_{i}', path)\n"
        "    m = importlib.util.module_from_spec(spec)\n"
        "    spec.loader.exec_module(m)\n"
        "    for fn in ('init_params', 'predict', 'loss', 'value_and_grad', 'gradient', 'sgd_step'):\n"
        "        assert callable(getattr(m, fn)), (path, fn)\n"
        "print('imported', len(sys.argv) - 1)\n")
    r = subprocess.run([sys.executable, "-I", "-B", "-c", driver, *map(str, files)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"imported {len(files)}"
    assert list(tmp_path.iterdir()) == []
