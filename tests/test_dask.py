"""bpcompile.dask: a generated module's loss and gradient over chunked data.

- exact: the distributed value and gradient equal the single-process full-batch
  result to 1e-12 relative (float64) for every example module, with uneven chunks
  and a short last chunk, on the threaded scheduler and on a 2-process cluster;
  the C target's loader too (the float32 example to 2e-5: its arithmetic is float32);
- survives faults: a worker killed in the middle of a full-batch gradient; Dask
  recomputes what it held, and the result is still exact;
- out of core: a memory-mapped dataset several times a worker's memory limit,
  with the workers' peak resident memory measured under the limit;
- one-line errors, before any work, for data and params it cannot use;
- training: fit through the module's own steps, full-batch L-BFGS.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import os
import shutil
import signal
import sys
import time

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
pytest.importorskip("distributed")

import bpcompile  # noqa: E402
from bpcompile.dask import DaskInputError, DaskModule, from_npy  # noqa: E402

from conftest import EXAMPLES, random_point, rel_error  # noqa: E402

CHUNKS = (17, 40, 1, 30, 15)     # uneven, one of a single row, a short last one
N = sum(CHUNKS)


def tolerance(module):
    # float64: the chunks' sums differ from the full batch's only by summation order
    return 1e-12 if module.DTYPE == np.float64 else 2e-5


def assert_same(module, got, want):
    (v1, g1), (v0, g0) = got, want
    tol = tolerance(module)
    assert abs(v1 - v0) <= tol * max(abs(v0), 1e-30), (v1, v0)
    assert list(g1) == list(g0) == list(module.WRT)
    for k in g0:
        assert g1[k].shape == np.shape(g0[k]) and g1[k].dtype == module.DTYPE, k
        assert rel_error(g1[k], g0[k]) <= tol, (k, rel_error(g1[k], g0[k]))


def chunked(inputs, chunks=CHUNKS):
    return {k: da.from_array(v, chunks=(chunks,) + v.shape[1:]) for k, v in inputs.items()}


def load_file(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def modules(compiled_examples):
    return {k: c.load() for k, c in compiled_examples.items()}


# ---------------------------------------------------------------------------
# Exact, on the threaded scheduler

@pytest.mark.parametrize("name", [p.stem for p in EXAMPLES])
def test_every_example_equals_full_batch(modules, name):
    module = modules[name]
    params, inputs = random_point(module, n=N, seed=1)
    want = module.value_and_grad(params, **inputs)
    dm = DaskModule(module)
    assert_same(module, dm.value_and_grad(params, **chunked(inputs)), want)
    # NumPy inputs, chunked here: 10 rows a chunk, the last one of 3
    assert_same(module, DaskModule(module, rows=10, split_every=2).value_and_grad(params, **inputs), want)
    loss = module.loss(params, **inputs)
    assert abs(dm.loss(params, **chunked(inputs)) - loss) <= tolerance(module) * abs(loss)


def test_mean_is_over_all_rows_not_of_chunk_means(modules):
    # chunks of 1 and of 149 rows: a mean of the two chunk means weighs the single row 75 times
    module = modules["mlp_regression"]
    params, inputs = random_point(module, n=150, seed=2)
    got = DaskModule(module).value_and_grad(params, **chunked(inputs, (1, 149)))
    assert_same(module, got, module.value_and_grad(params, **inputs))


def test_predict_and_gradient(modules):
    module = modules["digits_mlp"]
    params, inputs = random_point(module, n=N, seed=3)
    dm = DaskModule(module)
    out = dm.predict(params, x=chunked(inputs)["x"])
    assert isinstance(out, da.Array) and out.chunks[0] == CHUNKS
    # equal to rounding: BLAS blocks a product of 17 rows differently from one of 103
    assert rel_error(out.compute(), module.predict(params, x=inputs["x"])) < 1e-14
    grads = dm.gradient(params, **inputs)
    want = module.gradient(params, **inputs)
    assert all(rel_error(grads[k], want[k]) <= 1e-12 for k in want)


def test_memory_mapped_npy(modules, tmp_path):
    module = modules["digits_mlp"]
    params, inputs = random_point(module, n=1000, seed=4)
    for k, v in inputs.items():
        np.save(tmp_path / f"{k}.npy", v)
    mapped = {k: np.load(tmp_path / f"{k}.npy", mmap_mode="r") for k in inputs}
    want = module.value_and_grad(params, **inputs)
    assert_same(module, DaskModule(module, rows=300).value_and_grad(params, **mapped), want)
    lazy = {k: from_npy(tmp_path / f"{k}.npy", rows=128) for k in inputs}
    assert lazy["x"].chunks[0][-1] == 1000 - 7 * 128
    assert_same(module, DaskModule(module).value_and_grad(params, **lazy), want)


# ---------------------------------------------------------------------------
# The C target's loader: the same API

def have_cc():
    return shutil.which((os.environ.get("CC") or "cc").split()[0]) is not None


def c_loader(name, directory):
    bpcompile.compile(bpcompile.load_spec(EXAMPLES[0].parent / f"{name}.yaml"), target="c").write(directory)
    return load_file(directory / f"{name}_c.py", f"dask_test_{name}_c")


@pytest.fixture(scope="module")
def c_module(tmp_path_factory):
    if not have_cc():
        pytest.skip("no C compiler")
    return c_loader("digits_mlp", tmp_path_factory.mktemp("c"))


@pytest.mark.skipif(not have_cc(), reason="no C compiler")
@pytest.mark.parametrize("name", [p.stem for p in EXAMPLES])
def test_c_loader_equals_full_batch(modules, name, tmp_path):
    c_module = c_loader(name, tmp_path)
    params, inputs = random_point(c_module, n=N, seed=5)
    want = modules[name].value_and_grad(params, **inputs)     # the NumPy module's, in one call
    assert_same(c_module, DaskModule(c_module).value_and_grad(params, **chunked(inputs)), want)


# ---------------------------------------------------------------------------
# One-line errors, before any work

def poisoned(shape, chunks, dtype=float):
    """A Dask array that fails if any of its blocks is computed."""
    def boom(block):
        raise AssertionError("a block was computed before the arguments were checked")
    return da.zeros(shape, chunks=chunks, dtype=dtype).map_blocks(boom, dtype=dtype)


@pytest.mark.parametrize("case, message", [
    ("x_chunked_across", "x is chunked along axis 1 (chunks (32, 32)); expected chunks along the batch axis only"),
    ("chunks_differ", "label has batch chunks (50, 50); expected (40, 60), the batch chunks of x"),
    ("batch_differs", "label has batch size 99; expected 100, the batch size of x"),
    ("x_shape", "x has shape (100, 63); expected (N, 64)"),
    ("label_float", "label has dtype float64; expected an integer dtype (class labels in [0, 10))"),
    ("missing_input", "input 'label' is missing; expected an array of shape (N,)"),
    ("unknown_input", "'y' is not an input of digits_mlp (its inputs: x, label)"),
    ("missing_param", "params has no 'b2'; digits_mlp expects an array of shape (10,)"),
    ("extra_param", "params has 'W3', which digits_mlp does not have (its params: W1, b1, W2, b2)"),
    ("param_shape", "params['W1'] is an array of shape (64, 63) and dtype float64; "
                    "digits_mlp expects a floating array of shape (64, 64)"),
    ("params_list", "params is a list; expected a dict of arrays"),
    ("no_rows", "the inputs have no rows; expected at least one"),
])
def test_errors_before_any_work(modules, case, message):
    module = modules["digits_mlp"]
    params = module.init_params()
    x = poisoned((100, 64), ((40, 60), 64))
    label = poisoned((100,), ((40, 60),), dtype=np.int64)
    inputs = {"x": x, "label": label}
    if case == "x_chunked_across":
        inputs["x"] = poisoned((100, 64), (50, 32))
        inputs["label"] = poisoned((100,), 50, dtype=np.int64)
    elif case == "chunks_differ":
        inputs["label"] = poisoned((100,), 50, dtype=np.int64)
    elif case == "batch_differs":
        inputs["label"] = poisoned((99,), 50, dtype=np.int64)
    elif case == "x_shape":
        inputs["x"] = poisoned((100, 63), (50, 63))
    elif case == "label_float":
        inputs["label"] = poisoned((100,), ((40, 60),))
    elif case == "missing_input":
        del inputs["label"]
    elif case == "unknown_input":
        inputs["y"] = x
    elif case == "missing_param":
        del params["b2"]
    elif case == "extra_param":
        params["W3"] = np.zeros(3)
    elif case == "param_shape":
        params["W1"] = np.zeros((64, 63))
    elif case == "params_list":
        params = [params]
    elif case == "no_rows":
        inputs = {"x": np.zeros((0, 64)), "label": np.zeros(0, np.int64)}
    dm = DaskModule(module)
    for call in (lambda: dm.value_and_grad(params, **inputs),
                 lambda: dm.fit(params, inputs, optimizer="sgd", lr=0.1, progress=False, log=False)):
        with pytest.raises(DaskInputError) as e:
            call()
        text = str(e.value)
        assert "\n" not in text and message in text, text
        assert isinstance(e.value, ValueError)


def test_not_a_module():
    with pytest.raises(DaskInputError, match="is not a generated gradient module .*no NAME"):
        DaskModule(np)


# ---------------------------------------------------------------------------
# Training

def test_fit_is_the_modules_own_steps(modules):
    # one chunk, one part, no shuffle: fit's steps are the module's steps on the same
    # mini-batches (the gradient equal to rounding: times n, then over n)
    module = modules["mlp_classifier"]
    params, inputs = random_point(module, n=300, seed=6)
    for optimizer, lr, hyper in (("sgd", 0.1, {}), ("momentum", 0.05, {"momentum": 0.8}),
                                 ("adam", 0.01, {"beta1": 0.8})):
        mine = {k: v.copy() for k, v in params.items()}
        theirs = {k: v.copy() for k, v in params.items()}
        state = {}
        step = getattr(module, f"{optimizer}_step")
        losses = []
        for epoch in range(2):
            for lo in range(0, 300, 128):
                batch = {k: v[lo:lo + 128] for k, v in inputs.items()}
                args = (theirs, lr) if optimizer == "sgd" else (theirs, state, lr)
                losses.append(step(*args, **hyper, **batch))
        lines = []
        history = DaskModule(module, rows=300).fit(
            mine, inputs, optimizer=optimizer, lr=lr, epochs=2, batch_size=128, shuffle=False, parts=1,
            progress=False, log=lines.append, **hyper)
        for k in params:
            assert rel_error(mine[k], theirs[k]) < 1e-12, (optimizer, k)
        assert [h["epoch"] for h in history] == [1, 2] and all(h["steps"] == 3 and h["rows"] == 300 for h in history)
        want = (losses[0] * 128 + losses[1] * 128 + losses[2] * 44) / 300
        assert abs(history[0]["loss"] - want) < 1e-12 * abs(want)
        assert len(lines) == 2 and lines[0].startswith("epoch 1/2: loss ")


def test_fit_learns_with_parts_and_shuffling(modules):
    module = modules["digits_mlp"]
    rng = np.random.default_rng(7)
    centers = rng.standard_normal((10, 64)) * 2
    label = rng.integers(0, 10, 5000)
    x = centers[label] + rng.standard_normal((5000, 64))
    params = module.init_params()
    data = {"x": da.from_array(x, chunks=((700,) * 7 + (100,), 64)), "label": da.from_array(label, chunks=((700,) * 7 + (100,),))}
    history = DaskModule(module).fit(params, data, optimizer="adam", lr=0.01, epochs=3, batch_size=512,
                                     parts=3, progress=False, log=False)
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert module.loss(params, x=x, label=label) < history[0]["loss"]


def test_minimize_lbfgs_matches_single_process(modules):
    scipy_optimize = pytest.importorskip("scipy.optimize")
    module = modules["mlp_regression"]
    params, inputs = random_point(module, n=500, seed=8, scale=0.5)
    names = list(module.TRAINED)
    x0 = np.concatenate([params[k].ravel() for k in names])

    def fun(theta):
        p, i = {}, 0
        for k in names:
            size = params[k].size
            p[k] = theta[i:i + size].reshape(params[k].shape)
            i += size
        v, g = module.value_and_grad(p, **inputs)
        return v, np.concatenate([g[k].ravel() for k in names])

    want = scipy_optimize.minimize(fun, x0, jac=True, method="L-BFGS-B", options={"maxiter": 15})
    lines = []
    got = DaskModule(module).minimize(params, chunked(inputs, (100, 250, 150)), maxiter=15, progress=False,
                                      log=lines.append)
    assert got.nit == want.nit and abs(got.fun - want.fun) < 1e-9 * abs(want.fun)
    assert got.fun < fun(x0)[0]
    assert abs(module.loss(params, **inputs) - got.fun) < 1e-12 * got.fun   # params updated in place
    assert len(lines) == got.nit + 1 and lines[0].startswith("iteration 1: loss ")


# ---------------------------------------------------------------------------
# A LocalCluster of two worker processes

MEMORY_LIMIT = 150 * 2**20     # per worker


def local_cluster():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       memory_limit=MEMORY_LIMIT, dashboard_address=":0")
    return cluster, distributed.Client(cluster)


@pytest.fixture(scope="module")
def client():
    cluster, client = local_cluster()
    yield client
    client.close()
    cluster.close()


@pytest.fixture
def fresh_client():
    """A cluster of its own: its workers' peak memory is this test's."""
    cluster, client = local_cluster()
    yield client
    client.close()
    cluster.close()


def test_cluster_equals_full_batch(client, modules):
    for name in ("digits_mlp", "seed004_cubic", "brackets_rnn"):   # a gradient wrt inputs; tokens
        module = modules[name]
        params, inputs = random_point(module, n=N, seed=9)
        got = DaskModule(module, client=client, split_every=2).value_and_grad(params, **chunked(inputs))
        assert_same(module, got, module.value_and_grad(params, **inputs))


def test_cluster_c_loader(client, c_module, modules):
    # the loader travels as its files (.py, .c, .h) and builds on the workers
    params, inputs = random_point(c_module, n=N, seed=10)
    want = modules["digits_mlp"].value_and_grad(params, **inputs)
    assert_same(c_module, DaskModule(c_module, client=client).value_and_grad(params, **chunked(inputs)), want)


def test_cluster_fit(client, modules):
    module = modules["digits_mlp"]
    params, inputs = random_point(module, n=2000, seed=11, scale=0.1)
    theirs = {k: v.copy() for k, v in params.items()}
    DaskModule(module, client=client, rows=700).fit(params, inputs, optimizer="sgd", lr=0.5, batch_size=2000,
                                                    epochs=2, progress=False, log=False)
    for _ in range(2):
        module.sgd_step(theirs, 0.5, **inputs)
    assert all(rel_error(params[k], theirs[k]) < 1e-12 for k in params)


SLOW = '''

# A test wraps the generated value_and_grad: a chunk takes long enough to kill a
# worker in the middle of a full-batch gradient.
import time as _time
_fast_value_and_grad = value_and_grad


def value_and_grad(params, **inputs):
    _time.sleep(0.15)
    return _fast_value_and_grad(params, **inputs)
'''


def test_worker_killed_mid_gradient(client, compiled_examples, modules, tmp_path):
    path = tmp_path / "slow_digits.py"
    path.write_text(compiled_examples["digits_mlp"].source + SLOW)
    slow = load_file(path, "dask_test_slow_digits")
    params, inputs = random_point(slow, n=32 * 400, seed=12)
    want = modules["digits_mlp"].value_and_grad(params, **inputs)
    dm = DaskModule(slow, client=client, rows=400)       # 32 chunks of 0.15 s on 2 workers
    pids = client.run(os.getpid)
    victim = sorted(pids)[0]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(dm.value_and_grad, params, **inputs)
        deadline = time.monotonic() + 60
        # kill it once it holds finished work (chunk sums or partial sums) that the others need
        while not any(str(k).startswith(("bpcompile-chunk", "bpcompile-add"))
                      for k in client.has_what().get(victim, ())):
            assert time.monotonic() < deadline and not running.done(), "the victim never held a result"
            time.sleep(0.01)
        os.kill(pids[victim], signal.SIGKILL)
        got = running.result(timeout=120)
    assert_same(slow, got, want)
    assert pids[victim] not in client.run(os.getpid).values()


def peak_rss():
    """This process's peak resident memory in bytes since it started (VmHWM: unlike
    ru_maxrss, not inherited from the process that forked it)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc")
def test_out_of_core(fresh_client, modules, tmp_path):
    # 600 MB of rows against workers limited to 150 MiB each (a worker starts at ~85 MiB:
    # Python, NumPy, Dask); chunks of 4 MiB
    module = modules["digits_mlp"]
    rows = 600 * 10**6 // (64 * 8)
    x = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float64, shape=(rows, 64))
    rng = np.random.default_rng(13)
    for lo in range(0, rows, 100_000):
        x[lo:lo + 100_000] = rng.standard_normal((min(100_000, rows - lo), 64))
    x.flush()
    del x
    np.save(tmp_path / "label.npy", rng.integers(0, 10, rows))
    size = (tmp_path / "x.npy").stat().st_size
    assert size > 3.5 * MEMORY_LIMIT
    params = module.init_params(seed=1)
    client = fresh_client
    before = client.run(os.getpid)
    data = {k: from_npy(tmp_path / f"{k}.npy", rows=8192) for k in ("x", "label")}
    t0 = time.perf_counter()
    got = DaskModule(module, client=client).value_and_grad(params, **data)
    seconds = time.perf_counter() - t0
    peaks = client.run(peak_rss)
    print(f"\nout of core: {rows:,} rows, {size / 2**20:.0f} MiB; worker peak RSS "
          f"{sorted(round(p / 2**20, 1) for p in peaks.values())} MiB; limit {MEMORY_LIMIT / 2**20:.0f} MiB; "
          f"{seconds:.1f} s")
    assert client.run(os.getpid) == before, "a worker was restarted (out of memory?)"
    assert max(peaks.values()) < MEMORY_LIMIT
    mapped = {k: np.load(tmp_path / f"{k}.npy", mmap_mode="r") for k in ("x", "label")}
    assert_same(module, got, module.value_and_grad(params, **mapped))


# ---------------------------------------------------------------------------
# The benchmark and the example run (no timing asserted)

def run_script(*args, timeout=240):
    import subprocess
    root = EXAMPLES[0].parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=root, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_bench_dask_quick():
    out = run_script("benchmarks/bench_dask.py", "--quick", "--no-cluster", "--n", "40000", "--rows", "8192")
    for side in ("full batch, 1 thread", "loop, 1 thread", "dask threads=1", "dask threads=2"):
        assert f"\n{side} " in out, out
    assert "dask overhead at one thread:" in out and "load before" in out and "load after" in out


def test_train_dask_example():
    out = run_script("examples/train_dask.py", "--rows", "30000", "--chunk", "4096", "--epochs", "2",
                     "--batch", "4096", "--no-progress", "--compile")
    start = float(out.split("start: loss ")[1].split()[0])
    end = float(out.split("end: loss ")[1].split(",")[0])
    assert "epoch 2/2: loss" in out and end < 0.5 * start, out


def test_a_module_travelling_by_value_leaves_its_workspaces_behind(modules):
    """A NumPy module from Compiled.load() is pickled by value; the arrays it keeps
    between calls are a cache: they must neither travel (megabytes per call) nor
    arrive (as read-only buffers, a worker's products could not write into them:
    'output array is not acceptable' after an earlier call in the client)."""
    import cloudpickle
    from bpcompile.dask_tasks import ModuleRef
    module = modules["digits_mlp"]
    params, inputs = random_point(module, n=512, seed=3)
    expected = module.value_and_grad(params, **inputs)
    assert module._WORKSPACES                      # the call kept a workspace
    copy = cloudpickle.loads(cloudpickle.dumps(ModuleRef(module))).module
    assert not copy._WORKSPACES and not module._WORKSPACES
    got = copy.value_and_grad(params, **inputs)
    assert got[0] == expected[0]
    assert all(np.array_equal(got[1][k], expected[1][k]) for k in expected[1])
