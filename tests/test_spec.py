"""The spec format of DESIGN.md: YAML and JSON, inits, the layers shorthand, defaults."""

from __future__ import annotations

import json

import numpy as np
import yaml

import bpcompile
from conftest import ROOT


def test_json_spec_is_the_same_model(tmp_path):
    data = yaml.safe_load((ROOT / "examples" / "tanh_regression.yaml").read_text())
    path = tmp_path / "tanh_regression.json"
    path.write_text(json.dumps(data))
    from_json = bpcompile.compile(bpcompile.load_spec(path)).load()
    from_yaml = bpcompile.compile(bpcompile.load_spec(ROOT / "examples" / "tanh_regression.yaml")).load()
    params = from_yaml.init_params(3)
    x, y = np.random.default_rng(0).standard_normal((4, 3)), np.zeros(4)
    a, ga = from_json.value_and_grad(params, x=x, y=y)
    b, gb = from_yaml.value_and_grad(params, x=x, y=y)
    assert a == b and all(np.array_equal(ga[k], gb[k]) for k in ga)


def test_parse_spec_accepts_a_dict_and_text():
    d = {"name": "m", "inputs": {"x": [2]}, "params": {"w": [2]}, "loss": "dot(w, x)"}
    s1 = bpcompile.parse_spec(d)
    s2 = bpcompile.parse_spec(yaml.safe_dump(d))
    assert s1.name == s2.name == "m" and s1.wrt == s2.wrt == ("w",)
    assert s1.reduction == "mean" and s1.dtype == "float64"


def test_inits_and_defaults():
    spec = """
name: inits
inputs: {x: [4]}
params:
  A: [3, 4]
  B: {shape: [3, 4], init: he}
  c: [3]
  d: {shape: [3], init: ones}
  e: {shape: [], init: constant(2.5)}
  f: {shape: [3, 4], init: normal(0.01)}
  g: {shape: [3, 4], init: uniform(0.1)}
  z: {shape: [2], init: zeros}
loss: sum(A @ x + B @ x + f @ x + g @ x) + sum(c * d) * e + sum(z)
"""
    m = bpcompile.compile(spec).load()
    p = m.init_params(seed=1)
    assert np.all(np.abs(p["A"]) <= np.sqrt(6 / 7) + 1e-12) and p["A"].std() > 0   # glorot
    assert np.all(p["c"] == 0) and np.all(p["d"] == 1) and float(p["e"]) == 2.5
    assert np.abs(p["f"]).max() < 0.1 and np.all(np.abs(p["g"]) <= 0.1)
    assert np.array_equal(m.init_params(seed=1)["B"], p["B"])          # seeded
    assert not np.array_equal(m.init_params(seed=2)["B"], p["B"])
    assert m.PARAM_SHAPES["B"] == (3, 4) and m.INPUT_SHAPES == {"x": (4,)}


def test_layers_shorthand_is_the_written_out_graph():
    short = """
name: mlp
inputs: {x: [5], label: {classes: 3}}
layers:
  - {dense: 7, activation: relu}
  - {dense: 3}
loss: softmax_cross_entropy(z2, label)
"""
    long = """
name: mlp
inputs: {x: [5], label: {classes: 3}}
params:
  W1: [7, 5]
  b1: [7]
  W2: [3, 7]
  b2: [3]
graph:
  z1: W1 @ x + b1
  h1: relu(z1)
  z2: W2 @ h1 + b2
loss: softmax_cross_entropy(z2, label)
"""
    a, b = bpcompile.compile(short), bpcompile.compile(long)
    assert a.spec.wrt == b.spec.wrt == ("W1", "b1", "W2", "b2")
    ma, mb = a.load(), b.load()
    p = ma.init_params(0)
    x = np.random.default_rng(0).standard_normal((6, 5))
    label = np.array([0, 1, 2, 0, 1, 2])
    va, ga = ma.value_and_grad(p, x=x, label=label)
    vb, gb = mb.value_and_grad(p, x=x, label=label)
    assert va == vb and all(np.array_equal(ga[k], gb[k]) for k in ga)


def test_output_and_wrt_inputs():
    spec = """
name: out
inputs: {x: [3], y: []}
params: {w: [3]}
graph:
  h: tanh(x * w)
  p: sum(h)
loss: (p - y)**2
output: h
wrt: [w, x]
"""
    m = bpcompile.compile(spec).load()
    x = np.ones((2, 3))
    assert m.predict({"w": np.ones(3)}, x=x).shape == (2, 3)
    g = m.gradient({"w": np.ones(3)}, x=x, y=np.zeros(2))
    assert list(g) == ["w", "x"] and g["x"].shape == (2, 3)
