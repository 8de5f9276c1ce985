"""The NumPy module's arrays kept between calls (workspaces, ones, row indices)
against the plain path, where every array is made fresh.

The plain path is the same module with ``_take_workspace`` handing out no arrays
(``out=None`` everywhere: each product a fresh array, as NumPy's ``@`` makes it)
and fresh ``ones``/``arange`` each call.  Every optimised call must give the
same values (1e-12), whatever the batch sizes before it, and nothing it returns
may share memory with a workspace or with what another call returned.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import bpcompile
from conftest import EXAMPLES, random_point

# sizes change between calls and come back; some below, some above the least batch
# size at which a workspace is kept (64 KiB of arrays)
BATCHES = (5, 300, 1, 300, 64, 5, 64)


def modules(path):
    """(optimised, plain): two loads of one compiled module, the second without its arrays kept."""
    compiled = bpcompile.compile(bpcompile.load_spec(path))
    fast, plain = compiled.load(), compiled.load()
    plain._take_workspace = lambda where, N, arrays, params: plain._NoWorkspace()
    plain._ones = lambda N: np.ones(N, plain.DTYPE)
    plain._arange = lambda N: np.arange(N)
    return fast, plain


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def arrays_of(result):
    """The arrays in a function's result (predict's array; value_and_grad's dict)."""
    if isinstance(result, tuple):
        result = result[1]
    if isinstance(result, dict):
        return list(result.values())
    return [result] if isinstance(result, np.ndarray) else []


def workspace_arrays(module):
    return [a for ws in module._WORKSPACES.values() for a in ws.values()]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_calls_at_changing_batch_sizes_match_the_plain_path_and_alias_nothing(path):
    fast, plain = modules(path)
    fast.reset_workspace()
    params = random_point(fast, 2, seed=0)[0]
    kept = []   # (function, result, expected) of every call, checked again at the end
    for i, n in enumerate(BATCHES):
        _, inputs = random_point(fast, n, seed=i)
        for fn in ("predict", "loss", "value_and_grad"):
            got = getattr(fast, fn)(params, **inputs)
            want = getattr(plain, fn)(params, **inputs)
            kept.append((fn, got, want))
    for fn, got, want in kept:   # nothing returned was overwritten by a later call
        if fn == "value_and_grad":
            close(got[0], want[0])
            assert set(got[1]) == set(want[1])
            for k in got[1]:
                close(got[1][k], want[1][k])
                assert got[1][k].dtype == want[1][k].dtype
        else:
            close(got, want)
    returned = [a for _, got, _ in kept for a in arrays_of(got)]
    kept_arrays = workspace_arrays(fast) + list(fast._ONES.values()) + list(fast._ARANGE.values())
    for i, a in enumerate(returned):
        assert not any(np.shares_memory(a, w) for w in kept_arrays), "a result lives in a workspace"
        assert not any(np.shares_memory(a, b) for b in returned[i + 1:]), "two results share memory"


def test_the_workspace_is_used_and_reset_frees_it():
    fast, _ = modules(EXAMPLES[0].parent / "digits_mlp.yaml")
    fast.reset_workspace()
    params, inputs = random_point(fast, 700)
    fast.value_and_grad(params, **inputs)
    fast.predict(params, **inputs)
    dt = fast.DTYPE
    assert {("value_and_grad", 700, dt), ("predict", 700, dt)} <= set(fast._WORKSPACES)
    assert (700, dt) in fast._ONES and 700 in fast._ARANGE
    assert not any(a.flags.writeable for a in (fast._ONES[700, dt], fast._ARANGE[700]))
    fast.value_and_grad(params, **random_point(fast, 2)[1])
    assert ("value_and_grad", 2, dt) not in fast._WORKSPACES   # 2 rows: too small to keep
    fast.reset_workspace()
    assert not fast._WORKSPACES and not fast._ONES and not fast._ARANGE
    fast.value_and_grad(params, **inputs)   # made again


def test_only_the_most_recent_workspaces_are_kept():
    fast, _ = modules(EXAMPLES[0].parent / "digits_mlp.yaml")
    fast.reset_workspace()
    params = random_point(fast, 1)[0]
    for n in range(200, 200 + 2 * fast._KEEP + 1):
        fast.value_and_grad(params, **random_point(fast, n)[1])
    assert len(fast._WORKSPACES) == fast._KEEP
    assert ("value_and_grad", 200 + 2 * fast._KEEP, fast.DTYPE) in fast._WORKSPACES


def test_params_of_another_dtype_take_the_plain_path():
    """float32 params in a float64 module: no workspace (its arrays are float64),
    NumPy promotes as in the plain path."""
    fast, plain = modules(EXAMPLES[0].parent / "digits_mlp.yaml")
    params, inputs = random_point(fast, 600)
    params32 = {k: v.astype(np.float32) for k, v in params.items()}
    fast.reset_workspace()
    got, want = fast.value_and_grad(params32, **inputs), plain.value_and_grad(params32, **inputs)
    close(got[0], want[0])
    for k in got[1]:
        close(got[1][k], want[1][k])
        assert got[1][k].dtype == want[1][k].dtype
    assert not fast._WORKSPACES


BENCH_MLP = EXAMPLES[0].parent.parent / "benchmarks" / "specs" / "digits_mlp_bench.yaml"   # 64 KiB of gradients


@pytest.mark.parametrize("path", [EXAMPLES[0].parent / "mlp_classifier.yaml", BENCH_MLP], ids=lambda p: p.stem)
@pytest.mark.parametrize("step", ["sgd_step", "momentum_step", "adam_step"])
def test_optimizer_steps_match_the_plain_path(step, path):
    fast, plain = modules(path)
    params = random_point(fast, 1, seed=3)[0]
    pf = {k: v.copy() for k, v in params.items()}
    pp = {k: v.copy() for k, v in params.items()}
    sf, sp_ = {}, {}
    for i, n in enumerate((4, 300, 4, 300, 1)):
        inputs = random_point(fast, n, seed=10 + i)[1]
        extra_f = (sf,) if step != "sgd_step" else ()
        extra_p = (sp_,) if step != "sgd_step" else ()
        lf = getattr(fast, step)(pf, *extra_f, 0.05, **inputs)
        lp = getattr(plain, step)(pp, *extra_p, 0.05, **inputs)
        close(lf, lp)
        for k in pf:
            close(pf[k], pp[k])


def test_concurrent_calls_in_threads_match_the_plain_path():
    """Each call takes its workspace out of the store: threads never share one."""
    fast, plain = modules(EXAMPLES[0].parent / "digits_mlp.yaml")
    fast.reset_workspace()
    params = random_point(fast, 1)[0]
    batches = [random_point(fast, n, seed=n)[1] for n in (300, 300, 160, 160, 1, 3)]
    wants = [plain.value_and_grad(params, **inputs) for inputs in batches]
    errors = []

    def work(t):
        for r in range(40):
            i = (t + r) % len(batches)
            loss, grads = fast.value_and_grad(params, **batches[i])
            try:
                close(loss, wants[i][0])
                for k in grads:
                    close(grads[k], wants[i][1][k])
            except AssertionError as e:
                errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_the_optimised_lines_match_the_plain_ones(path, monkeypatch):
    """Sums that absorb their map (np.vdot, a GEMV), products split into one in-place
    step per factor, and workspaces: the module printed without any of them
    computes the same values (1e-12), and the optimised one no more NumPy calls."""
    from bpcompile.targets.numpy import printer as codegen_numpy
    spec = bpcompile.load_spec(path)
    fast = bpcompile.compile(spec)
    monkeypatch.setattr(codegen_numpy, "absorb_plan", lambda kernels, returns: {})
    monkeypatch.setattr(codegen_numpy.NumpyPrinter, "smaller_than", staticmethod(lambda k: None))
    monkeypatch.setattr(codegen_numpy, "workspace_plan", lambda kernels, returns, folded: {})
    monkeypatch.setattr(codegen_numpy, "grad_plan", lambda program, skip, dtype: {})
    plain = bpcompile.compile(spec)
    monkeypatch.undo()
    assert "np.vdot" not in plain.source and "_take_workspace('" not in plain.source
    fm, pm = fast.load(), plain.load()
    for n in (5, 300):
        params, inputs = random_point(fm, n, seed=n)
        for fn in ("predict", "loss", "value_and_grad"):
            got = getattr(fm, fn)(params, **inputs)
            want = getattr(pm, fn)(params, **inputs)
            if fn == "value_and_grad":
                close(got[0], want[0])
                for k in want[1]:
                    np.testing.assert_allclose(got[1][k], want[1][k], rtol=1e-12,
                                               atol=1e-12 * max(1.0, float(np.abs(want[1][k]).max())))
            else:
                close(got, want)


def test_sums_absorb_their_maps_in_the_examples():
    """The lecture's tanh regression: g = sum(v * e) is one GEMV, L the sum of the
    squares one np.vdot; no line computes f or L_n."""
    source = bpcompile.compile(bpcompile.load_spec(EXAMPLES[0].parent / "tanh_regression.yaml")).source
    body = source[source.index("def value_and_grad"):source.index("def gradient")]
    lines = [line.strip() for line in body.splitlines()]
    assert "g = np.dot(e, v)" in lines and "L = np.vdot(t0, t0)/N" in lines
    assert not any(line.startswith(("f = ", "L_n = ")) for line in lines)
    assert "# f = v * e" in lines and "# L_n = (y - g)**2" in lines   # their equations stay


def test_steps_compute_gradients_into_arrays_they_give_back():
    """With 64 KiB of gradients or more, the steps' gradients are computed into kept
    arrays (given back after the update, reused by the next step); value_and_grad
    and gradient still return fresh arrays."""
    fast, _ = modules(BENCH_MLP)
    source = bpcompile.compile(bpcompile.load_spec(BENCH_MLP)).source
    assert "value, grads = value_and_grad(params, x=x, label=label, check=False, _keep_grads=True)" in source
    assert source.count("    _give_back_grads(grads)\n") == 3
    fast.reset_workspace()
    params, inputs = random_point(fast, 16, seed=1)
    fast.sgd_step(params, 0.01, **inputs)
    kept = fast._WORKSPACES[("grads", 0, fast.DTYPE)]
    assert set(kept) == set(fast._KEPT_GRADS) and "W1" in kept
    before = {k: id(v) for k, v in kept.items()}
    fast.sgd_step(params, 0.01, **inputs)
    assert {k: id(v) for k, v in fast._WORKSPACES[("grads", 0, fast.DTYPE)].items()} == before   # the same arrays again
    _, grads = fast.value_and_grad(params, **inputs)
    fresh = fast.gradient(params, **inputs)
    for g in [*grads.values(), *fresh.values()]:
        assert not any(np.shares_memory(g, a) for a in kept.values())
    params32 = {k: v.astype(np.float32) for k, v in params.items()}   # another dtype: fresh arrays,
    fast.reset_workspace()                                            # kept only if of DTYPE
    fast.sgd_step(params32, 0.01, **inputs)
    assert all(a.dtype == fast.DTYPE for a in fast._WORKSPACES.get(("grads", 0, fast.DTYPE), {}).values())


def test_switching_dtype_switches_the_arrays_kept():
    """verify runs a float32 module with DTYPE switched to float64 and back: what is
    kept is kept per DTYPE, so each run computes in its own dtype."""
    spec = bpcompile.load_spec(BENCH_MLP)
    import yaml
    data = yaml.safe_load(BENCH_MLP.read_text())
    data["dtype"] = "float32"
    fast = bpcompile.compile(data).load()
    params, inputs = random_point(fast, 300)
    for dtype in (np.float64, np.float32, np.float64):
        fast.DTYPE = dtype
        p = {k: v.astype(dtype) for k, v in params.items()}
        loss, grads = fast.value_and_grad(p, **inputs)
        assert all(g.dtype == dtype for g in grads.values())
        fast.sgd_step(p, 0.01, **inputs)
    fast.DTYPE = np.float32
    assert spec.name == "digits_mlp_bench"
