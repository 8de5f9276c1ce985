"""Issue 5: the generated digits_mlp module trains on real data (examples/train_digits.py)."""

from __future__ import annotations

import functools
import importlib.util

import numpy as np
import pytest

from conftest import ROOT

pytest.importorskip("sklearn")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


td = _load("train_digits")


@pytest.fixture(scope="module")
def data():
    return td.load_data(seed=0)


@functools.lru_cache(maxsize=None)
def compiled(dtype):
    # compiled in-process, so the test follows the compiler rather than a stale generated/
    return td.load_module(dtype, compile=True)


@pytest.fixture(scope="module", params=["float64", "float32"])
def trained(request, data):
    module = compiled(request.param)
    return module, td.train(module, epochs=5, data=data, progress=False)


def test_split_is_fixed_and_disjoint(data):
    x_tr, y_tr, x_te, y_te = data
    assert x_tr.shape == (1347, 64) and x_te.shape == (450, 64)
    assert 0.0 <= x_tr.min() and x_tr.max() <= 1.0
    assert set(np.unique(y_te)) == set(range(10))
    again = td.load_data(seed=0)
    assert np.array_equal(again[3], y_te) and np.array_equal(again[2], x_te)


def test_loss_falls_and_accuracy_beats_chance(trained):
    module, h = trained
    assert len(h["train_loss"]) == 6                       # before training + 5 epochs
    assert h["train_loss"][-1] < 0.2 * h["train_loss"][0]
    assert h["test_loss"][-1] < 0.3 * h["test_loss"][0]
    assert h["test_acc"][0] < 0.3                          # chance is 0.1
    assert h["test_acc"][-1] > 0.9
    assert h["train_acc"][-1] > 0.9
    assert all(np.isfinite(h[k]).all() for k in ("train_loss", "test_loss"))


def test_trained_params_keep_the_module_dtype(trained):
    module, h = trained
    assert h["dtype"] == np.dtype(module.DTYPE).name
    for k, shape in module.PARAM_SHAPES.items():
        assert h["params"][k].dtype == module.DTYPE and h["params"][k].shape == shape


def test_float32_tracks_float64(data):
    hs = {dt: td.train(compiled(dt), epochs=3, data=data, progress=False)
          for dt in ("float64", "float32")}
    assert abs(hs["float64"]["test_acc"][-1] - hs["float32"]["test_acc"][-1]) <= 0.01
    assert np.allclose(hs["float64"]["train_loss"], hs["float32"]["train_loss"], rtol=1e-3)


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_other_optimizers_train(optimizer, data):
    module = compiled("float64")
    h = td.train(module, epochs=3, optimizer=optimizer, data=data, progress=False)
    assert h["train_loss"][-1] < 0.3 * h["train_loss"][0]
    assert h["test_acc"][-1] > 0.85


def test_plot_writes_a_png(data, tmp_path):
    pytest.importorskip("matplotlib")
    h = td.train(compiled("float32"), epochs=1, data=data, progress=False)
    out = tmp_path / "curves.png"
    td.plot(h, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
