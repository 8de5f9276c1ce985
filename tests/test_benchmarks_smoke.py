"""Smoke tests for the benchmark scripts: they run (--quick) and print their rows.

No timing is asserted: only the exit code and the shape of the output.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
NUM = r"[0-9]+(?:\.[0-9]+)?"


def run_script(name, *args, timeout=300):
    proc = subprocess.run([sys.executable, str(BENCH / name), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{name} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.parametrize("spec", ["digits_mlp_bench.yaml", "mnist_mlp_bench.yaml"])
def test_bench_specs_compile(spec):
    import bpcompile
    module = bpcompile.compile(BENCH / "specs" / spec).load()
    assert set(module.WRT) >= {"W1", "b1", "W2", "b2"}
    assert module.REDUCTION == "mean"


def test_bench_numpy_quick():
    out = run_script("bench_numpy.py", "--quick", "--threads", "1")
    assert "# machine:" in out
    for net, batch in (("digits", 32), ("digits", 256), ("mnist", 128)):
        row = rf"^{net}\s+{batch}\s+{NUM}\s+{NUM}\s+{NUM}\s+{NUM}\s+{NUM}\s+{NUM}\s"
        assert re.search(row, out, re.M), f"no row for {net} batch {batch}:\n{out}"
    assert "loss and gradients match hand-written" in out
    assert re.search(rf"^overall: geomean ratio min {NUM}, median {NUM}", out, re.M), out


def test_bench_compile_width_quick():
    out = run_script("bench_compile_width.py", "--quick")
    for depth in (1, 3):
        for width in (4, 64, 4096):
            row = rf"^\s*{depth}\s+{width}\s+\d+\s+\d+\s+\d+\s+{NUM}\s+{NUM}\s+{NUM}\s*$"
            assert re.search(row, out, re.M), f"no row for depth {depth} width {width}:\n{out}"
    assert re.search(rf"^overall: worst width ratio {NUM}", out, re.M), out


def test_bench_cuda_quick():
    """Every spec compiles to CUDA; then a table on a GPU machine, else one 'skipped: <reason>' line."""
    out = run_script("bench_cuda.py", "--quick", timeout=900)
    for spec in ("digits_mlp_bench_f32", "mnist_mlp_bench_f32", "deep_chain_bench_f32", "wide_mlp_bench_f32"):
        assert re.search(rf"^# compiled {spec}\.yaml -> {spec}\.cu: \d+ kernels", out, re.M), out
    skipped = re.findall(r"^skipped: (.+)$", out, re.M)
    if not all(importlib.util.find_spec(m) for m in ("torch", "cupy")):
        assert len(skipped) == 1 and len(skipped[0]) > 10, f"no clear skip reason:\n{out}"
    if skipped:
        assert "torch/gen" not in out, out   # no table
        return
    assert re.search(r"^# GPU: \S", out, re.M), out
    for net, batch in (("digits", 32), ("digits", 256), ("mnist", 128), ("deep", 64), ("wide", 256)):
        row = rf"^{net}\s+{batch}\s+{NUM}\s+{NUM}\s+{NUM}\s+(?:{NUM}|-)\s+(?:{NUM}\s+{NUM}|-\s+-)\s+\S+$"
        assert re.search(row, out, re.M), f"no row for {net} batch {batch}:\n{out}"
    assert "loss and gradients match torch" in out
    assert re.search(rf"^small networks: worst torch/generated {NUM}", out, re.M), out
    assert re.search(rf"^wide network: generated/GEMMs {NUM}", out, re.M), out


def test_bench_compile_time_quick():
    out = run_script("bench_compile_time.py", "--quick")
    for depth in (16, 32, 64, 128):
        assert re.search(rf"^\s*{depth}\s+\d+\s+{NUM}\s+{NUM}\s", out, re.M), f"no row for {depth} layers:\n{out}"
    assert re.search(rf"^\s*32\s+\d+\s+{NUM}\s+{NUM}\s+-?{NUM}\s*$", out, re.M), out   # a slope
    assert re.search(rf"^in process: 128 layers {NUM} s", out, re.M), out
    assert re.search(rf"^command: bpcompile compile of the 128-layer chain {NUM} s", out, re.M), out
    assert re.search(rf"^command: bpcompile verify of the \d+ examples {NUM} s", out, re.M), out


def test_bench_scatter_add_quick():
    out = run_script("bench_scatter_add.py", "--quick")
    for dtype in ("float64", "float32"):
        for V, D, M in ((30, 16, 64), (1000, 64, 1000)):
            row = (rf"^{dtype}\s+{V}\s+{D}\s+{M}\s+" + r"\s+".join([NUM] * 5)
                   + rf"\s+\S+\s+(onehot@|bincount) \({NUM}x the fastest\)$")
            assert re.search(row, out, re.M), f"no row for {dtype} {V} {D} {M}:\n{out}"
