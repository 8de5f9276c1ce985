"""Issue 5: vanishing and exploding gradients in a deep thin chain (examples/gradient_health.py)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from conftest import ROOT

_spec = importlib.util.spec_from_file_location("gradient_health", ROOT / "examples" / "gradient_health.py")
gh = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gh)


def test_chain_spec_compiles_to_one_weight_per_layer():
    m = gh.chain_module(8, "tanh")
    assert set(m.WRT) == {f"{p}{l}" for p in "wb" for l in range(1, 9)}
    assert all(shape == () for shape in m.PARAM_SHAPES.values())


def test_sigmoid_gradient_vanishes_at_depth_32():
    r = gh.gradient_norms("sigmoid", depth=32, weight=1.0)
    g = r["w"]
    assert np.all(g > 0) and np.all(np.isfinite(g))
    assert g[0] * 1e3 <= g[-1]                      # first layer >= 1e3 times smaller than the last
    # sigmoid' <= 1/4: with w = 1 every link back multiplies the adjoint by at most 1/4
    assert np.all(r["b"][:-1] <= 0.25 * r["b"][1:] * (1 + 1e-12))


def test_vanishing_gets_worse_with_depth():
    first_over_last = [gh.ratio(r["w"][0], r["w"][-1])
                       for r in (gh.gradient_norms("sigmoid", d, 1.0) for d in (4, 8, 16, 32))]
    assert all(a > 100 * b for a, b in zip(first_over_last, first_over_last[1:]))


def test_relu_with_large_weights_explodes():
    # relu passes w * a_bar back unchanged where a > 0: with every w = 4 the adjoint
    # grows by 4 per layer towards the input ...
    r = gh.gradient_norms("relu", depth=32, weight=4.0)
    assert np.allclose(r["b"][:-1] / r["b"][1:], 4.0)
    assert r["b"][0] >= 1e3 * r["b"][-1]
    # ... and the weight gradients (a_bar * h_(l-1), the forward signal grown by 4 per
    # layer) are equal at every layer, and grow with depth
    assert np.allclose(r["w"], r["w"][0])
    shallow = gh.gradient_norms("relu", depth=4, weight=4.0)
    assert r["w"][0] >= 1e3 * shallow["w"][0]


def test_relu_with_unit_weights_is_flat():
    r = gh.gradient_norms("relu", depth=16, weight=1.0)
    assert np.allclose(r["w"], r["w"][0]) and np.allclose(r["b"], r["b"][0])


def test_table_and_plot(tmp_path):
    res = gh.sweep(activations=("sigmoid", "relu"), depths=(4, 8), weights=(1.0, 4.0), seeds=2)
    text = gh.table(res)
    assert len(text.splitlines()) == 2 + 8 and "sigmoid" in text and "relu" in text
    pytest.importorskip("matplotlib")
    out = tmp_path / "g.png"
    gh.plot(res, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
