"""Issue 12: the generated digits_cnn module (conv 32 -> conv 64 -> max pool -> dense 10
on the 8x8 digits as [1, 8, 8] images) beats the MLP on train_digits.py's split
(examples/train_digits_cnn.py)."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io

import numpy as np
import pytest

from conftest import ROOT


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tc = _load("train_digits_cnn")


@functools.lru_cache(maxsize=None)
def cnn():
    # compiled in-process, so the test follows the compiler rather than a stale generated/
    return tc.load_module(compile=True)


@pytest.fixture(scope="module")
def trained():
    return tc.train(cnn(), progress=False)


def test_data_is_train_digits_split_as_images():
    x_tr, y_tr, x_te, y_te = tc.load_data(seed=0)
    f_tr, g_tr, f_te, g_te = tc.td.load_data(seed=0)
    assert x_tr.shape == (len(f_tr), 1, 8, 8) and x_te.shape == (len(f_te), 1, 8, 8)
    assert np.array_equal(x_tr.reshape(len(f_tr), 64), f_tr) and np.array_equal(y_tr, g_tr)
    assert np.array_equal(x_te.reshape(len(f_te), 64), f_te) and np.array_equal(y_te, g_te)


def test_shift_moves_each_image_by_at_most_one_pixel():
    rng = np.random.default_rng(1)
    x = rng.random((64, 2, 8, 8))
    y = tc.shift(x, np.random.default_rng(2))
    assert y.shape == x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    offsets = set()
    for n in range(len(x)):          # the reference: which of the nine crops each image is
        hits = [(dy, dx) for dy in range(3) for dx in range(3)
                if np.array_equal(y[n], padded[n, :, dy:dy + 8, dx:dx + 8])]
        assert len(hits) == 1
        offsets.add(hits[0])
    assert len(offsets) == 9         # all nine offsets occur over 64 images
    assert np.array_equal(tc.shift(x, np.random.default_rng(2)), y)   # seeded


def test_gradient_matches_finite_differences():
    m = cnn()
    rng = np.random.default_rng(0)
    # nonzero biases: with b1 = 0 the blank pixels put z1 exactly on relu's kink
    params = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in m.init_params(seed=3).items()}
    x_tr, y_tr, _, _ = tc.load_data(seed=0)
    x, label = x_tr[:4], y_tr[:4]
    _, grads = m.value_and_grad(params, x=x, label=label)
    eps = 1e-6
    for name, value in params.items():
        for _ in range(4):
            i = tuple(rng.integers(0, s) for s in value.shape)
            old = value[i]
            value[i] = old + eps
            up = m.loss(params, x=x, label=label)
            value[i] = old - eps
            down = m.loss(params, x=x, label=label)
            value[i] = old
            assert grads[name][i] == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-8), (name, i)


def test_cnn_reaches_98_5_percent_on_the_digits_test_split(trained):
    assert trained["test_acc"][0] < 0.2                 # untrained: chance
    assert trained["test_acc"][-1] >= 0.985
    assert trained["train_acc"][-1] >= trained["test_acc"][-1] - 0.01


def test_script_reports_the_test_accuracy_last():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        hist = tc.main(["--compile", "--epochs", "1", "--no-progress"])
    last = out.getvalue().strip().splitlines()[-1]
    assert last.strip().startswith("test:") and f"{100 * hist['test_acc'][-1]:.2f}%" in last
