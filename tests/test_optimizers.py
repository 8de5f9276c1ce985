"""The update steps of the generated module against plain NumPy references of the
textbook updates."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import random_point


@pytest.fixture
def setup(compiled_examples):
    m = compiled_examples["mlp_regression"].load()
    params, inputs = random_point(m, n=16, seed=7, scale=0.5)
    return m, params, inputs


def test_sgd_step_matches_reference(setup):
    m, params, inputs = setup
    ref = {k: v.copy() for k, v in params.items()}
    for _ in range(3):
        grads = m.gradient(ref, **inputs)
        ref = {k: ref[k] - 0.05 * grads[k] for k in ref}
        m.sgd_step(params, 0.05, **inputs)
    for k in params:
        np.testing.assert_allclose(params[k], ref[k], rtol=1e-12, atol=1e-14)


def test_momentum_step_matches_reference(setup):
    m, params, inputs = setup
    ref = {k: v.copy() for k, v in params.items()}
    u = {k: np.zeros_like(v) for k, v in ref.items()}
    state = {}
    for step in range(4):
        grads = m.gradient(ref, **inputs)
        for k in ref:
            u[k] = 0.8 * u[k] + grads[k]
            ref[k] = ref[k] - 0.05 * u[k]
        value = m.momentum_step(params, state, 0.05, momentum=0.8, **inputs)
        if step == 0:
            buffers = {k: id(v) for k, v in state["u"].items()}
    assert {k: id(v) for k, v in state["u"].items()} == buffers  # updated in place
    assert np.isfinite(value)
    for k in params:
        np.testing.assert_allclose(params[k], ref[k], rtol=1e-11, atol=1e-13)
        np.testing.assert_allclose(state["u"][k], u[k], rtol=1e-11, atol=1e-13)


def test_adam_step_matches_reference(setup):
    m, params, inputs = setup
    ref = {k: v.copy() for k, v in params.items()}
    mom = {k: np.zeros_like(v) for k, v in ref.items()}
    vel = {k: np.zeros_like(v) for k, v in ref.items()}
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    state = {}
    for t in range(1, 6):
        grads = m.gradient(ref, **inputs)
        for k in ref:
            mom[k] = b1 * mom[k] + (1 - b1) * grads[k]
            vel[k] = b2 * vel[k] + (1 - b2) * grads[k] ** 2
            m_hat = mom[k] / (1 - b1 ** t)
            v_hat = vel[k] / (1 - b2 ** t)
            ref[k] = ref[k] - lr * m_hat / (np.sqrt(v_hat) + eps)
        m.adam_step(params, state, lr, **inputs)
        if t == 1:
            buffers = {k: id(v) for k, v in state["m"].items()}
    assert state["t"] == 5
    assert {k: id(v) for k, v in state["m"].items()} == buffers
    for k in params:
        np.testing.assert_allclose(params[k], ref[k], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(state["m"][k], mom[k], rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(state["v"][k], vel[k], rtol=1e-10, atol=1e-16)


def test_updates_do_not_rebind_params(setup):
    m, params, inputs = setup
    ids = {k: id(v) for k, v in params.items()}
    m.sgd_step(params, 0.1, **inputs)
    m.momentum_step(params, {}, 0.1, **inputs)
    m.adam_step(params, {}, 0.1, **inputs)
    assert {k: id(v) for k, v in params.items()} == ids


def test_adam_trains(setup):
    m, params, inputs = setup
    state = {}
    first = m.adam_step(params, state, 0.01, **inputs)
    for _ in range(200):
        last = m.adam_step(params, state, 0.01, **inputs)
    assert last < 0.5 * first


@pytest.mark.parametrize("example", ["deep_thin_chain", "seed002_network"])
def test_scalar_params_get_array_gradients_and_every_step_runs(compiled_examples, example):
    """A 0-d param's gradient is a 0-d array, not a NumPy scalar (a reduction to a
    scalar returns one): the steps update gradients in place, and momentum and
    Adam failed with 'return arrays must be of ArrayType' on the scalar-only nets."""
    module = compiled_examples[example].load()
    params, inputs = random_point(module, n=4, seed=1, scale=0.5)
    _, grads = module.value_and_grad(params, **inputs)
    for name, g in grads.items():
        assert isinstance(g, np.ndarray) and g.shape == module.PARAM_SHAPES[name], (name, type(g))
    for step, kw in (("sgd_step", {"lr": 0.01}), ("momentum_step", {"lr": 0.01}), ("adam_step", {})):
        state = {}
        before = {k: v.copy() for k, v in params.items()}
        for _ in range(2):
            if step == "sgd_step":
                module.sgd_step(params, **kw, **inputs)
            else:
                getattr(module, step)(params, state, **kw, **inputs)
        assert any(not np.array_equal(before[k], params[k]) for k in params), step
