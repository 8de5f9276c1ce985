"""Shared test helpers: random points and central finite differences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import bpcompile

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def random_point(module, n=4, seed=0, scale=1.0):
    """Random params and a batch of random inputs for a generated module."""
    rng = np.random.default_rng(seed)
    params = {k: np.asarray(scale * rng.standard_normal(s), module.DTYPE)
              for k, s in module.PARAM_SHAPES.items()}
    inputs = {}
    for k, s in module.INPUT_SHAPES.items():
        if k in module.LABEL_CLASSES:
            inputs[k] = rng.integers(0, module.LABEL_CLASSES[k], n)
        else:
            inputs[k] = rng.standard_normal((n, *s)).astype(module.DTYPE)
    return params, inputs


def finite_differences(module, params, inputs, name, h=1e-3):
    """Central differences of module.loss with respect to every entry of ``name``.

    The five-point stencil: truncation error O(h^4), so a step large enough to
    keep rounding error far below 1e-6 relative still differentiates accurately.
    """
    store = params if name in params else inputs
    x = store[name]
    out = np.zeros(x.shape)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        f = {}
        for k in (-2, -1, 1, 2):
            x[idx] = old + k * h
            f[k] = module.loss(params, **inputs)
        x[idx] = old
        out[idx] = (f[-2] - 8 * f[-1] + 8 * f[1] - f[2]) / (12 * h)
    return out


def rel_error(a, b):
    scale = max(np.max(np.abs(a)), np.max(np.abs(b)), 1e-8)
    return float(np.max(np.abs(a - b)) / scale)


@pytest.fixture(scope="session")
def compiled_examples():
    return {p.stem: bpcompile.compile(bpcompile.load_spec(p)) for p in EXAMPLES}
