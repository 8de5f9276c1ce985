"""Smoke tests for the benchmark scripts: they run (--quick) and print their rows.

No timing is asserted: only the exit code and the shape of the output.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
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


CONV_OPS = all(f in __import__("bpcompile").ops.FUNCTIONS for f in ("conv2d", "max_pool2d", "flatten"))


@pytest.mark.skipif(not CONV_OPS, reason="conv2d, max_pool2d or flatten not in the spec language yet")
def test_bench_lenet_spec_compiles():
    import bpcompile
    module = bpcompile.compile(BENCH / "specs" / "lenet_bench.yaml").load()
    lenet = _bench_lenet()
    assert {k: tuple(v) for k, v in module.PARAM_SHAPES.items()} == lenet.PARAM_SHAPES
    params, x, label = lenet.make_batch(3, seed=1)
    loss, grads = module.value_and_grad(params, x=x, label=label)
    ref_loss, ref_grads = lenet.hand_lenet(params, x, label)
    assert np.isclose(loss, ref_loss, rtol=1e-12)
    for k, g in ref_grads.items():
        np.testing.assert_allclose(grads[k], g, rtol=1e-9, atol=1e-12 * np.abs(g).max(), err_msg=k)


def _bench_lenet():
    """benchmarks/bench_lenet.py as a module (imported, it sets no thread variables)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    import bench_lenet
    return bench_lenet


def test_bench_lenet_hand_written_matches_finite_differences():
    """The benchmark's bar, the hand-written LeNet backprop, checked on its own (the
    benchmark checks the other contenders against it): central differences of the
    loss on a few entries of every param, in float64."""
    lenet = _bench_lenet()
    params, x, label = lenet.make_batch(3, seed=2)
    loss, grads = lenet.hand_lenet(params, x, label)
    assert set(grads) == set(params) and all(grads[k].shape == v.shape for k, v in params.items())
    rng = np.random.default_rng(0)
    eps = 1e-6
    for k, p in params.items():
        for flat in rng.choice(p.size, size=min(4, p.size), replace=False):
            idx = np.unravel_index(flat, p.shape)
            old = p[idx]
            p[idx] = old + eps
            up = lenet.hand_lenet(params, x, label)[0]
            p[idx] = old - eps
            down = lenet.hand_lenet(params, x, label)[0]
            p[idx] = old
            assert abs((up - down) / (2 * eps) - grads[k][idx]) <= 1e-6 + 1e-5 * abs(grads[k][idx]), (k, idx)
    # the loss itself: softmax cross-entropy of logits near 0 over 10 classes is about log(10)
    assert 1.5 < loss < 3.5


def test_bench_lenet_quick():
    """Every contender that can run here is checked against the float64 reference and
    timed; one that cannot (not installed, or the spec's ops not merged yet) says why."""
    out = run_script("bench_lenet.py", "--quick", "--batch", "4", "--round-seconds", "0.002")
    assert re.search(r"^# threads: pinned to CPU \d", out, re.M), out
    available = {"generated": CONV_OPS, "hand": True,
                 "torch": importlib.util.find_spec("torch") is not None,
                 "jax": importlib.util.find_spec("jax") is not None}
    for name, here in available.items():
        for dtype in ("float32", "float64"):
            if here:
                assert f"# {name} {dtype}: ready in" in out and "loss and gradients match" in out, out
                assert re.search(rf"^{name}\s+{dtype}\s+{NUM}\s+{NUM}\s", out, re.M), f"no row for {name}:\n{out}"
            else:
                assert re.search(rf"^{name}: skipped: .{{10,}}$", out, re.M), f"no reason for {name}:\n{out}"
                assert re.search(rf"^{name}\s+{dtype}\s+skipped$", out, re.M), out
    # a ratio of medians per dtype: hand/torch when PyTorch runs, generated/hand when it does not
    assert re.search(r"^  float32: \w+/\w+ ", out, re.M) and re.search(r"^  float64: \w+/\w+ ", out, re.M), out
    goal = re.search(r"^goal generated/torch <= 1\.5: float32 (.*); float64 (.*)$", out, re.M)
    assert goal, out
    if CONV_OPS and available["torch"]:
        assert all(re.match(rf"{NUM} \((met|not met)\)$", g) for g in goal.groups()), goal.group(0)


def test_bench_numpy_quick():
    out = run_script("bench_numpy.py", "--quick", "--threads", "1")
    assert "# machine:" in out
    for net, batch in (("seed001", 1), ("digits", 32), ("deep", 8)):
        for dtype in ("float64", "float32"):
            for mode in ("same", "proc"):   # one process, and one process per side
                row = rf"^{net}\s+{dtype}\s+{batch}\s+{mode}\s+{NUM}\s+{NUM}\s+{NUM}\s+{NUM}\s+{NUM}\s+{NUM}\s"
                assert re.search(row, out, re.M), f"no row for {net} {dtype} batch {batch} {mode}:\n{out}"
    assert "loss and gradients match hand-written" in out
    assert re.search(rf"^overall: geomean median ratio {NUM}; worst {NUM}; goal .* met on \d+ of 12$", out, re.M), out


def test_bench_numpy_hand_written_matches_finite_differences():
    """The benchmark's bars, its hand-written backprops (the generated modules are
    checked against them), checked on their own: central differences of the loss on
    a few entries of every param, in float64, at batch 3."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    import bench_numpy
    import bpcompile
    rng = np.random.default_rng(0)
    for net, (_, hand, _) in bench_numpy.NETWORKS.items():
        if net == "wide":   # its own function; the same math as deep's chain, at 4096 wide
            continue
        module = bpcompile.compile(bench_numpy.spec_text(net, "float64")).load()
        params = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in module.init_params(0).items()}
        inputs = bench_numpy.random_batch(module, 3, seed=1)
        _, grads = hand(params, **inputs)
        for k, p in params.items():
            for flat in rng.choice(p.size, size=min(3, p.size), replace=False):
                idx = np.unravel_index(flat, p.shape)
                old = p[idx]
                p[idx] = old + 1e-6
                up = hand(params, **inputs)[0]
                p[idx] = old - 1e-6
                down = hand(params, **inputs)[0]
                p[idx] = old
                assert abs((up - down) / 2e-6 - grads[k][idx]) <= 1e-6 * max(1.0, abs(grads[k][idx])), (net, k)


def test_bench_c_quick():
    """bench_c.py: the C target, the NumPy modules and the hand-written C agree and
    are timed (PyTorch and JAX left out here: they are optional)."""
    out = run_script("bench_c.py", "--threads", "1", "--quick", "--no-torch", "--no-jax",
                     "--network", "seed001", "--network", "digits", "--dtype", "float32", timeout=600)
    assert "# threads=1" in out
    assert re.search(rf"^seed001\s+float32\s+1\s+{NUM}\s+{NUM}\s+{NUM}\s+{NUM}\s+-\s+-\s+-\s", out, re.M), out
    # digits has a hand-written C yardstick: its time and the ratio to it
    assert re.search(rf"^digits\s+float32\s+32\s+(?:{NUM}\s+){{4}}-\s+-\s+{NUM}\s.*hand<=1.3:", out, re.M), out
    assert "# goals:" in out


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
    assert re.search(rf"^\s*32\s+\d+\s+{NUM}\s+{NUM}\s+-?{NUM}\s+{NUM}\s*$", out, re.M), out   # a slope, cpu
    assert re.search(rf"^in process: 128 layers {NUM} s", out, re.M), out
    assert re.search(rf"^linear fit: {NUM} ms per layer \+ -?{NUM} ms; 128 layers {NUM} s", out, re.M), out
    assert re.search(rf"^command: bpcompile compile of the 128-layer chain {NUM} s", out, re.M), out
    assert re.search(rf"^command, bytecode cached \(as installed\): bpcompile compile of the 128-layer chain {NUM} s",
                     out, re.M), out
    assert re.search(rf"^command: bpcompile verify of the \d+ examples {NUM} s", out, re.M), out


def test_bench_scatter_add_quick():
    out = run_script("bench_scatter_add.py", "--quick")
    for dtype in ("float64", "float32"):
        for V, D, M in ((30, 16, 64), (1000, 64, 1000)):
            row = (rf"^{dtype}\s+{V}\s+{D}\s+{M}\s+" + r"\s+".join([NUM] * 5)
                   + rf"\s+\S+\s+(onehot@|bincount) \({NUM}x the fastest\)$")
            assert re.search(row, out, re.M), f"no row for {dtype} {V} {D} {M}:\n{out}"
