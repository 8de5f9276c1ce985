"""The C loader's binding (bpc_binding, targets/c/binding.c): a Python extension the
loader builds once per cache, through which a call costs about a microsecond
instead of ctypes's 5-7 us.

* It is used wherever Python's headers are installed, and gives the same bits as
  the ctypes path for predict / loss / value_and_grad and the steps.
* It passes only arrays it can pass as they are (and, with check=True, only
  arguments the loader's _check passes); everything else takes the general path:
  conversions, and the same error messages, with or without the binding.
* No reference is leaked or lost; threads calling at once get their own
  workspaces; a status other than 0 raises the loader's error.
* Without Python's headers, or with BPCOMPILE_C_BINDING=ctypes, calls go through
  ctypes and binding() says why.
"""

from __future__ import annotations

import concurrent.futures
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, refusing_compiler
from test_cuda_host import import_file

import bpcompile
from bpcompile.targets.c.printer import binding_source

CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
HEADERS = Path(sysconfig.get_paths()["include"], "Python.h").exists()

pytestmark = [pytest.mark.skipif(CC is None, reason="no C compiler (cc)"),
              pytest.mark.skipif(not HEADERS, reason="no Python.h: the loader uses ctypes")]

SPECS = ("tanh_regression", "digits_mlp", "digits_mlp_f32", "brackets_rnn")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """{spec: (loader with the binding, loader through ctypes)}: two imports of one
    compiled module, the second with BPCOMPILE_C_BINDING=ctypes at its load."""
    out = tmp_path_factory.mktemp("binding")
    mp = pytest.MonkeyPatch()
    mp.setenv("BPCOMPILE_CACHE", str(out / "cache"))
    mp.delenv("CC", raising=False)
    mp.delenv("CFLAGS", raising=False)
    mp.delenv("BPCOMPILE_C_BINDING", raising=False)
    loaded = {}
    for key in SPECS:
        bpcompile.compile(ROOT / "examples" / f"{key}.yaml", target="c").write(out / "m")
        fast = import_file(out / "m" / f"{key}_c.py", f"bp_test_binding_fast_{key}")
        fast._load()
        mp.setenv("BPCOMPILE_C_BINDING", "ctypes")
        slow = import_file(out / "m" / f"{key}_c.py", f"bp_test_binding_slow_{key}")
        slow._load()
        mp.delenv("BPCOMPILE_C_BINDING")
        loaded[key] = fast, slow
    yield loaded
    mp.undo()


def batch(m, N, seed=0):
    rng = np.random.default_rng(seed)
    return {k: (rng.integers(0, m.LABEL_CLASSES[k], (N, *s)).astype(np.int32) if k in m.LABEL_CLASSES
                else rng.standard_normal((N, *s)).astype(m.DTYPE))
            for k, s in m.INPUT_SHAPES.items()}


def test_binding_is_used_and_ctypes_on_request(pairs):
    fast, slow = pairs["digits_mlp"]
    assert fast.binding() == "bpc_binding" and fast._fast
    assert slow.binding() == "ctypes: BPCOMPILE_C_BINDING=ctypes" and not slow._fast
    # one build, shared by every module of the cache
    cache = Path(fast._cache_dir())
    assert len(list(cache.glob("bpc_binding-*"))) == 1


@pytest.mark.parametrize("key", SPECS)
@pytest.mark.parametrize("check", [True, False])
def test_same_bits_as_ctypes(pairs, key, check):
    fast, slow = pairs[key]
    params = fast.init_params(3)
    for N in (1, 5, 64):
        inputs = batch(fast, N, seed=N)
        a, b = fast.value_and_grad(params, check=check, **inputs), slow.value_and_grad(params, check=check, **inputs)
        assert a[0] == b[0] and a[1].keys() == b[1].keys()
        for k in a[1]:
            assert a[1][k].dtype == fast.DTYPE and a[1][k].flags.c_contiguous and a[1][k].flags.writeable
            assert np.array_equal(a[1][k], b[1][k]), k
        assert fast.loss(params, check=check, **inputs) == a[0]
        pred = {k: v for k, v in inputs.items() if k in fast.READS["predict"]}
        assert np.array_equal(fast.predict(params, check=check, **pred), slow.predict(params, check=check, **pred))


@pytest.mark.parametrize("step", ["sgd", "momentum", "adam"])
def test_steps_same_bits_as_ctypes(pairs, step):
    fast, slow = pairs["digits_mlp"]
    inputs = batch(fast, 16)
    pa, pb = fast.init_params(1), slow.init_params(1)
    sa, sb = {}, {}
    for _ in range(3):
        if step == "sgd":
            la, lb = fast.sgd_step(pa, 0.1, **inputs), slow.sgd_step(pb, 0.1, **inputs)
        elif step == "momentum":
            la, lb = fast.momentum_step(pa, sa, 0.1, **inputs), slow.momentum_step(pb, sb, 0.1, **inputs)
        else:
            la, lb = fast.adam_step(pa, sa, 0.01, **inputs), slow.adam_step(pb, sb, 0.01, **inputs)
        assert la == lb
    assert all(np.array_equal(pa[k], pb[k]) for k in pa)


def taken_by_binding(m, fn, params, inputs, check):
    """Whether the binding itself takes the call (it returns NotImplemented else)."""
    return m._fast[fn](params, *[inputs.get(k) for k in m.INPUT_SHAPES], check) is not NotImplemented


def variants(m, params, inputs):
    """(what, params, inputs, binding takes it with check, without) for arguments the
    binding must pass on to the general path, or take."""
    x = inputs["x"]
    N = x.shape[0]
    first = next(iter(params))
    bad_label = dict(inputs, label=inputs["label"].copy())
    bad_label["label"][0] = m.LABEL_CLASSES["label"]
    ro = x.copy()
    ro.flags.writeable = False
    return [
        ("as given", params, inputs, True, True),
        ("strided input", params, dict(inputs, x=np.repeat(x, 2, axis=0)[::2]), False, False),
        ("Fortran-order input", params, dict(inputs, x=np.asfortranarray(x)), False, False),
        ("float32 input", params, dict(inputs, x=x.astype(np.float32)), False, False),
        ("big-endian input", params, dict(inputs, x=x.astype(x.dtype.newbyteorder(">"))), False, False),
        ("list input", params, dict(inputs, x=x.tolist()), False, False),
        ("int64 labels", params, dict(inputs, label=inputs["label"].astype(np.int64)), False, False),
        ("a label out of range", params, bad_label, False, True),
        ("read-only input", params, dict(inputs, x=ro), True, True),
        ("a transposed param", dict(params, **{first: np.ascontiguousarray(params[first].T).T}), inputs,
         params[first].ndim < 2, params[first].ndim < 2),
        ("a param of another dtype", dict(params, **{first: params[first].astype(np.float32)}), inputs, False, False),
        ("a subclass input", params, dict(inputs, x=x.view(np.memmap)), False, True),
        ("a missing param", {k: v for k, v in params.items() if k != first}, inputs, False, False),
        ("an unread input missing", params, dict(inputs, label=None), False, False),
        ("batch sizes differ", params, dict(inputs, label=inputs["label"][: N - 1]), False, False),
        ("params not a dict", list(params.values()), inputs, False, False),
    ]


def test_what_the_binding_takes_and_leaves(pairs):
    fast, slow = pairs["digits_mlp"]
    params, inputs = fast.init_params(0), batch(fast, 6)
    for what, p, i, with_check, without in variants(fast, params, inputs):
        assert taken_by_binding(fast, "value_and_grad", p, i, True) == with_check, what
        assert taken_by_binding(fast, "value_and_grad", p, i, False) == without, what


def outcome(m, params, inputs, check):
    try:
        value, grads = m.value_and_grad(params, check=check, **inputs)
    except Exception as e:   # noqa: BLE001 - compared between the two paths
        return type(e).__name__, str(e)
    return value, {k: v.tolist() for k, v in grads.items()}


@pytest.mark.parametrize("check", [True, False])
def test_every_argument_ends_as_through_ctypes(pairs, check):
    """The binding changes nothing a caller sees: the same result or the same error."""
    fast, slow = pairs["digits_mlp"]
    params, inputs = fast.init_params(0), batch(fast, 6)
    for what, p, i, _, without in variants(fast, params, inputs):
        if not check and what == "a label out of range":
            continue   # unchecked, a label out of range is read out of bounds (in both paths)
        assert outcome(fast, p, i, check) == outcome(slow, p, i, check), what


def test_no_reference_leaked(pairs):
    fast, _ = pairs["digits_mlp"]
    params, inputs = fast.init_params(0), batch(fast, 4)
    bad = dict(inputs, x=inputs["x"].astype(np.float32))
    watched = list(params.values()) + list(inputs.values()) + [params]
    for m_inputs in (inputs, bad):
        fast.value_and_grad(params, **m_inputs)
        before = [sys.getrefcount(a) for a in watched]
        for _ in range(500):
            fast.value_and_grad(params, **m_inputs)
            fast.loss(params, **m_inputs)
            fast.predict(params, x=m_inputs["x"])
        assert [sys.getrefcount(a) for a in watched] == before
    value, grads = fast.value_and_grad(params, **inputs)
    assert [sys.getrefcount(grads[k]) for k in grads] == [2] * len(grads)   # the dict's, getrefcount's argument


def test_threads_get_their_own_workspaces(pairs):
    fast, slow = pairs["brackets_rnn"]
    params = fast.init_params(0)
    work = [batch(fast, N, seed=N) for N in (1, 3, 7, 16, 33) for _ in range(4)]
    want = [slow.value_and_grad(params, **i) for i in work]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            got = list(pool.map(lambda i: fast.value_and_grad(params, **i), work))
            for (a, ga), (b, gb) in zip(got, want):
                assert a == b and all(np.array_equal(ga[k], gb[k]) for k in ga)


def test_a_status_raises_the_loaders_error(pairs, tmp_path):
    fast, _ = pairs["tanh_regression"]
    src = tmp_path / "fail.c"
    src.write_text("int bp_fail(int n, void* w, void* const* a);\n"
                   "int bp_fail(int n, void* w, void* const* a) { (void)n; (void)w; (void)a; return -2; }\n")
    subprocess.run([CC, "-shared", "-fPIC", "-o", str(tmp_path / "fail.so"), str(src)], check=True)
    import ctypes
    lib = ctypes.CDLL(str(tmp_path / "fail.so"))
    address = ctypes.cast(lib.bp_fail, ctypes.c_void_p).value
    module = fast._binding_module()
    entry = module.Entry(address, 1, (), (), (), fast._local, fast._workspace_entry,
                         lambda status: fast._raise_status(status, "loss"))
    with pytest.raises(fast.CModuleError, match=r"tanh_regression: loss failed: a NULL workspace .* \(error -2\)"):
        entry({}, True)
    with pytest.raises(TypeError):
        entry({})
    with pytest.raises(ValueError):
        module.Entry(0, 1, (), (), (), None, None, None)


def test_without_python_headers_calls_go_through_ctypes(tmp_path, monkeypatch):
    bpcompile.compile(ROOT / "examples" / "tanh_regression.yaml", target="c").write(tmp_path / "m")
    monkeypatch.setenv("BPCOMPILE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BPCOMPILE_C_BINDING", raising=False)
    paths = dict(sysconfig.get_paths(), include=str(tmp_path / "no-include"))
    monkeypatch.setattr(sysconfig, "get_paths", lambda *a, **k: paths)
    m = import_file(tmp_path / "m" / "tanh_regression_c.py", "bp_test_binding_noheaders")
    assert m.binding().startswith("ctypes: no Python.h in ")
    params = m.init_params()
    assert np.isfinite(m.loss(params, x=np.ones((2, 3)), y=np.ones(2)))
    assert not list((tmp_path / "cache").glob("bpc_binding-*"))


def test_binding_source_compiles_without_warnings(tmp_path):
    src = tmp_path / "bpc_binding.c"
    src.write_text(binding_source())
    cmd = [CC, "-O2", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared", f"-I{sysconfig.get_paths()['include']}",
           f"-I{np.get_include()}", "-o", str(tmp_path / "b.so"), str(src)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[:3000]


def test_gradients_share_one_block_without_overlapping(pairs):
    """value_and_grad's gradients are views of one allocation (one malloc a call, not
    one per gradient: see new_arrays in binding.c), disjoint, each writable, and a
    gradient kept alone stays valid after the rest are gone."""
    fast, slow = pairs["brackets_rnn"]
    params, inputs = fast.init_params(0), batch(fast, 9)
    value, grads = fast.value_and_grad(params, **inputs)
    arrays = list(grads.values())
    assert len({id(g.base) for g in arrays}) == 1
    for i, a in enumerate(arrays):
        assert a.ctypes.data % 64 == 0
        for b in arrays[i + 1:]:
            assert not np.shares_memory(a, b)
    want = slow.value_and_grad(params, **inputs)[1]
    k = max(grads, key=lambda k: grads[k].size)
    kept = grads[k]
    del grads, arrays
    fast.value_and_grad(params, **batch(fast, 9, seed=5))   # reuses freed memory, if any was freed
    assert np.array_equal(kept, want[k])
    kept += 1.0
    assert np.array_equal(kept, want[k] + 1.0)


def test_a_binding_that_does_not_build_leaves_ctypes(tmp_path, monkeypatch):
    """The library builds, the binding does not (a compiler that refuses its source):
    calls go through ctypes, and binding() quotes the compiler's error line."""
    bpcompile.compile(ROOT / "examples" / "tanh_regression.yaml", target="c").write(tmp_path / "m")
    monkeypatch.setenv("BPCOMPILE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BPCOMPILE_C_BINDING", raising=False)
    monkeypatch.delenv("CFLAGS", raising=False)
    cc = refusing_compiler(tmp_path / "cc-no-binding", "*bpc_binding.c*", "bpc_binding.c:1: error: refused", CC)
    monkeypatch.setenv("CC", str(cc))
    m = import_file(tmp_path / "m" / "tanh_regression_c.py", "bp_test_binding_refused")
    assert m.binding() == "ctypes: building bpc_binding failed (bpc_binding.c:1: error: refused)"
    assert np.isfinite(m.loss(m.init_params(), x=np.ones((2, 3)), y=np.ones(2)))
    assert not list((tmp_path / "cache").glob("bpc_binding-*"))
