"""Every example's gradient against central finite differences, and the seeds'
hand-derived formulas where the lectures give them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import bpcompile
from conftest import EXAMPLES, finite_differences, random_point, rel_error, some_entries


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
@pytest.mark.parametrize("seed", [0, 1])
def test_example_matches_finite_differences(path, seed, compiled_examples):
    compiled = compiled_examples[path.stem]
    if compiled.spec.dtype != "float64":
        # differences need float64; the float32 path is checked against float64 below
        compiled = bpcompile.compile(dataclasses.replace(compiled.spec, dtype="float64"))
    m = compiled.load()
    params, inputs = random_point(m, n=5, seed=seed)
    value, grads = m.value_and_grad(params, **inputs)
    assert value == pytest.approx(m.loss(params, **inputs), rel=1e-12)
    assert list(grads) == list(m.WRT)
    for name, g in grads.items():
        ref = params[name] if name in params else inputs[name]
        assert g.shape == ref.shape and g.dtype == m.DTYPE
        at = some_entries(g.shape, 2000, seed)
        rows = tuple(np.array(at).T)
        fd = finite_differences(m, params, inputs, name, at=at)
        assert rel_error(g[rows], fd[rows]) <= 1e-6, name


def load(name, compiled_examples):
    return compiled_examples[name].load()


def test_seed001_tanh_regression_formulas(compiled_examples):
    """W_bar = a_bar x^T, b_bar = a_bar, v_bar = f_bar * e, a_bar = e_bar (1 - e^2)."""
    m = load("tanh_regression", compiled_examples)
    params, inputs = random_point(m, n=1, seed=3)
    W, b, v = params["W"], params["b"], params["v"]
    x, y = inputs["x"][0], inputs["y"][0]
    e = np.tanh(W @ x + b)
    g = np.sum(v * e)
    g_bar = -2 * (y - g)
    f_bar = g_bar * np.ones(3)
    a_bar = f_bar * v * (1 - e**2)
    grads = m.gradient(params, **inputs)
    np.testing.assert_allclose(grads["W"], np.outer(a_bar, x), rtol=1e-12)
    np.testing.assert_allclose(grads["b"], a_bar, rtol=1e-12)
    np.testing.assert_allclose(grads["v"], f_bar * e, rtol=1e-12)


def test_seed002_worked_example_at_zero_weights(compiled_examples):
    """(x1, x2, t) = (0, 1, 0) with every weight 0: h4 = e^0 = 1, o = sin(0) = 0,
    dJ/do = o - t = 0, so the backward pass sends zero to every weight."""
    m = load("seed002_network", compiled_examples)
    params = m.init_params()
    assert all(np.all(p == 0) for p in params.values())
    inputs = {"x1": np.array([0.0]), "x2": np.array([1.0]), "t": np.array([0.0])}
    value, grads = m.value_and_grad(params, **inputs)
    assert value == 0.0
    assert m.predict(params, **inputs)[0] == 0.0
    assert all(float(g) == 0.0 for g in grads.values())
    # one step of w <- w - l dJ/dw leaves the weights where they were
    m.sgd_step(params, 0.1, **inputs)
    assert all(np.all(p == 0) for p in params.values())


def test_seed002_paths_add_up(compiled_examples):
    """At non-zero weights, h1's adjoint is the sum over its two consumers:
    dJ/dw11 = (dJ/dh3 dh3/dh1 + dJ/dh4 dh4/dh1) dh1/dw11."""
    m = load("seed002_network_nonzero", compiled_examples)
    p = {k: float(v) for k, v in m.init_params().items()}
    x1, x2, t = 0.3, 1.0, 0.2
    z1 = p["w11"] * x1 + p["w21"] * x2
    h1 = z1
    z2 = p["w12"] * x1 + p["w22"] * x2
    h2 = z2**2 / 2
    h3 = 2 * p["v11"] * h1
    z4 = p["v12"] * h1 + p["v22"] * h2
    h4 = np.exp(z4)
    zo = p["u1"] * h3 + p["u2"] * h4
    o = np.sin(zo)
    o_bar = o - t
    zo_bar = o_bar * np.cos(zo)
    h3_bar, h4_bar = zo_bar * p["u1"], zo_bar * p["u2"]
    h1_bar = h3_bar * 2 * p["v11"] + h4_bar * h4 * p["v12"]
    h2_bar = h4_bar * h4 * p["v22"]
    expected = {
        "u1": zo_bar * h3, "u2": zo_bar * h4,
        "v11": h3_bar * 2 * h1, "v12": h4_bar * h4 * h1, "v22": h4_bar * h4 * h2,
        "w11": h1_bar * x1, "w21": h1_bar * x2,
        "w12": h2_bar * z2 * x1, "w22": h2_bar * z2 * x2,
    }
    params = {k: np.array(v) for k, v in p.items()}
    inputs = {"x1": np.array([x1]), "x2": np.array([x2]), "t": np.array([t])}
    value, grads = m.value_and_grad(params, **inputs)
    assert value == pytest.approx(0.5 * (o - t) ** 2, rel=1e-14)
    for k, want in expected.items():
        assert float(grads[k]) == pytest.approx(want, rel=1e-12, abs=1e-15), k


def test_seed003_output_gradient_is_y_hat_minus_onehot(compiled_examples):
    """a_bar = -(e(label) - y_hat); with a = W h + b, b_bar is a_bar averaged."""
    m = load("softmax_ce_output", compiled_examples)
    params, inputs = random_point(m, n=6, seed=2)
    grads = m.gradient(params, **inputs)
    a = inputs["h"] @ params["W"].T + params["b"]
    y_hat = np.exp(a - a.max(1, keepdims=True))
    y_hat /= y_hat.sum(1, keepdims=True)
    e = np.eye(3)[inputs["label"]]
    a_bar = -(e - y_hat) / 6
    np.testing.assert_allclose(grads["b"], a_bar.sum(0), rtol=1e-12)
    np.testing.assert_allclose(grads["W"], a_bar.T @ inputs["h"], rtol=1e-12)
    np.testing.assert_allclose(grads["h"], a_bar @ params["W"], rtol=1e-12)
    np.testing.assert_allclose(m.predict(params, **inputs), y_hat, rtol=1e-12)


def test_seed003_stable_for_large_logits(compiled_examples):
    m = load("softmax_ce_output", compiled_examples)
    params, inputs = random_point(m, n=4, seed=1, scale=400.0)
    value, grads = m.value_and_grad(params, **inputs)
    assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads.values())


def test_seed004_linear(compiled_examples):
    m = load("seed004_linear", compiled_examples)
    x = np.array([-1.0, 0.0, 2.5])
    assert m.loss({}, x=x) == pytest.approx(np.sum(2 * x + 4))
    np.testing.assert_array_equal(m.gradient({}, x=x)["x"], [2.0, 2.0, 2.0])


def test_seed004_cubic(compiled_examples):
    m = load("seed004_cubic", compiled_examples)
    x, y = np.array([0.5, -1.0, 2.0]), np.array([0.25, 1.0, -0.5])
    grads = m.gradient({}, x=x, y=y)
    np.testing.assert_allclose(grads["x"], 9 * (3 * x + 4 * y) ** 2, rtol=1e-14)
    np.testing.assert_allclose(grads["y"], 12 * (3 * x + 4 * y) ** 2, rtol=1e-14)


def test_seed004_two_layer_linear_input_gradient(compiled_examples):
    """dL/dx2 = -2 w2[0] W1[0,1] (y - y_hat) - 2 w2[1] W1[1,1] (y - y_hat)."""
    m = load("seed004_two_layer_linear", compiled_examples)
    params, inputs = random_point(m, n=3, seed=4)
    W1, w2 = params["W1"], params["w2"]
    x, y = inputs["x"], inputs["y"]
    y_hat = (x @ W1.T) @ w2
    r = y - y_hat
    want = -2 * w2[0] * W1[0, 1] * r - 2 * w2[1] * W1[1, 1] * r
    np.testing.assert_allclose(m.gradient(params, **inputs)["x"][:, 1], want, rtol=1e-12)


def test_float32_is_honoured_end_to_end():
    text = (bpcompile.compile("examples/mlp_classifier.yaml").spec.text
            .replace("name: mlp_classifier", "name: mlp_classifier32") + "\ndtype: float32\n")
    c = bpcompile.compile(text)
    m = c.load()
    assert m.DTYPE == np.float32
    params, inputs = random_point(m, n=8, seed=0)
    assert all(p.dtype == np.float32 for p in m.init_params().values())
    value, grads = m.value_and_grad(params, **inputs)
    assert all(g.dtype == np.float32 for g in grads.values())
    assert m.predict(params, **inputs).dtype == np.float32
    m64 = bpcompile.compile("examples/mlp_classifier.yaml").load()
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    i64 = {k: (v.astype(np.float64) if v.dtype.kind == "f" else v) for k, v in inputs.items()}
    v64, g64 = m64.value_and_grad(p64, **i64)
    assert value == pytest.approx(v64, rel=1e-5)
    for k in grads:
        assert rel_error(grads[k].astype(np.float64), g64[k]) < 1e-4


def test_sgd_step_updates_in_place(compiled_examples):
    m = load("mlp_regression", compiled_examples)
    params, inputs = random_point(m, n=8, seed=5)
    before = {k: v.copy() for k, v in params.items()}
    ids = {k: id(v) for k, v in params.items()}
    grads = m.gradient(params, **inputs)
    value = m.sgd_step(params, 0.01, **inputs)
    assert value == pytest.approx(m.loss(before, **inputs))
    for k in params:
        assert id(params[k]) == ids[k]
        np.testing.assert_allclose(params[k], before[k] - 0.01 * grads[k], rtol=1e-12)
    assert m.loss(params, **inputs) < value
