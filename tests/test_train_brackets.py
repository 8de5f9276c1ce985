"""Issue 12: the generated brackets_rnn module (an RNN over integer tokens, its
weights tied across 16 steps) learns whether brackets balance, better than a
dense net on the one-hot tokens (examples/train_brackets.py)."""

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


tb = _load("train_brackets")


@pytest.fixture(scope="module")
def data():
    return tb.load_data(seed=0)


@functools.lru_cache(maxsize=None)
def rnn():
    # compiled in-process, so the test follows the compiler rather than a stale generated/
    return tb.load_module(compile=True)


@pytest.fixture(scope="module")
def trained(data):
    return tb.train(rnn(), data)


def test_data_is_fixed_and_labelled_by_the_rule(data):
    t_tr, y_tr, t_te, y_te = data
    assert t_tr.shape == (2000, 16) and t_te.shape == (2000, 16)
    assert t_tr.min() == 0 and t_tr.max() == 3
    again = tb.load_data(seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(again, data))
    for tokens, labels in ((t_tr, y_tr), (t_te, y_te)):
        assert [tb.balanced(s) for s in tokens] == list(labels)
        assert labels.mean() == 0.5
        # most unbalanced sequences have as many '(' as ')': counting is not enough
        neg = tokens[labels == 0]
        same = np.mean((neg == tb.OPEN).sum(1) == (neg == tb.CLOSE).sum(1))
        assert 0.7 < same < 0.95
    assert tb.balanced([0, 2, 0, 1, 3, 1]) and not tb.balanced([0, 1, 1, 0]) and not tb.balanced([0, 0, 1])


def test_rnn_learns_to_balance_brackets(trained):
    h = trained
    assert h["test_acc"][0] < 0.6                    # chance is 0.5
    assert h["train_acc"][-1] >= 0.985
    assert h["test_acc"][-1] >= 0.985                # 99.0% on seed 0 (README)


def test_trained_params_keep_their_shapes(trained):
    module = rnn()
    for k, shape in module.PARAM_SHAPES.items():
        assert trained["params"][k].shape == shape and trained["params"][k].dtype == module.DTYPE


def test_dense_net_on_one_hot_tokens_learns_worse(data, trained):
    """The baseline has a weight per (position, token): it fits the training set
    and generalizes worse than the RNN, whose steps share one U."""
    base = tb.train(tb.baseline_module(), data)
    assert base["train_acc"][-1] >= 0.99
    assert base["test_acc"][-1] <= trained["test_acc"][-1] - 0.02


def test_script_reports_the_test_accuracy_last():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        tb.main(["--compile", "--no-progress", "--epochs", "1"])
    lines = out.getvalue().strip().splitlines()
    assert lines[0].startswith("brackets_rnn (adam") and "1 epochs" in lines[0]
    assert lines[-1].startswith("  test:  accuracy ") and lines[-1].endswith("%")
