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

BATCHES = (5, 1, 5, 8, 1, 5)   # sizes change between calls and come back


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
    params, inputs = random_point(fast, 7)
    fast.value_and_grad(params, **inputs)
    fast.predict(params, **inputs)
    assert {("value_and_grad", 7), ("predict", 7)} <= set(fast._WORKSPACES)
    assert 7 in fast._ONES and 7 in fast._ARANGE
    assert not any(a.flags.writeable for a in (fast._ONES[7], fast._ARANGE[7]))
    fast.reset_workspace()
    assert not fast._WORKSPACES and not fast._ONES and not fast._ARANGE
    fast.value_and_grad(params, **inputs)   # made again


def test_only_the_most_recent_workspaces_are_kept():
    fast, _ = modules(EXAMPLES[0].parent / "digits_mlp.yaml")
    fast.reset_workspace()
    params = random_point(fast, 1)[0]
    for n in range(1, 2 * fast._KEEP + 2):
        fast.value_and_grad(params, **random_point(fast, n)[1])
    assert len(fast._WORKSPACES) == fast._KEEP
    assert ("value_and_grad", 2 * fast._KEEP + 1) in fast._WORKSPACES


def test_params_of_another_dtype_take_the_plain_path():
    """float32 params in a float64 module: no workspace (its arrays are float64),
    NumPy promotes as in the plain path."""
    fast, plain = modules(EXAMPLES[0].parent / "digits_mlp.yaml")
    params, inputs = random_point(fast, 6)
    params32 = {k: v.astype(np.float32) for k, v in params.items()}
    fast.reset_workspace()
    got, want = fast.value_and_grad(params32, **inputs), plain.value_and_grad(params32, **inputs)
    close(got[0], want[0])
    for k in got[1]:
        close(got[1][k], want[1][k])
        assert got[1][k].dtype == want[1][k].dtype
    assert not fast._WORKSPACES


@pytest.mark.parametrize("step", ["sgd_step", "momentum_step", "adam_step"])
def test_optimizer_steps_match_the_plain_path(step):
    fast, plain = modules(EXAMPLES[0].parent / "mlp_classifier.yaml")
    params = random_point(fast, 1, seed=3)[0]
    pf = {k: v.copy() for k, v in params.items()}
    pp = {k: v.copy() for k, v in params.items()}
    sf, sp_ = {}, {}
    for i, n in enumerate((4, 9, 4, 1)):
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
    batches = [random_point(fast, n, seed=n)[1] for n in (3, 3, 16, 16, 1, 3)]
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
