"""Generated modules check their arguments (issue 10): labels are integers in
[0, K), inputs have the declared per-example shape behind one batch axis and a
real numeric dtype, params are present with exactly the declared shape and a
floating dtype.  One ValueError names the argument, the expected and the given;
``check=False`` skips the checks."""

from __future__ import annotations

import re

import numpy as np
import pytest
from jinja2 import Environment, PackageLoader

import bpcompile

SPEC = """\
name: checked
inputs:
  x: [3]
  label: {classes: 4}
params:
  W: [4, 3]
  b: {shape: [4], init: zeros}
graph:
  z: W @ x + b
loss: softmax_cross_entropy(z, label)
"""

REGRESSION = """\
name: checked_regression
inputs:
  x: [3]
  y: []
params:
  w: [3]
graph:
  g: sum(w * x)
loss: (y - g)**2
"""


@pytest.fixture(scope="module")
def m():
    return bpcompile.compile(SPEC).load()


@pytest.fixture(scope="module")
def reg():
    return bpcompile.compile(REGRESSION).load()


def good(m, n=5):
    rng = np.random.default_rng(0)
    params = m.init_params(0)
    params["b"] += rng.standard_normal(4)
    return params, {"x": rng.standard_normal((n, 3)), "label": np.array([0, 1, 2, 3, 1][:n])}


# every public function that takes inputs, called with its own extra arguments
CALLS = {
    "predict": lambda m, p, i, **kw: m.predict(p, **i, **kw),
    "loss": lambda m, p, i, **kw: m.loss(p, **i, **kw),
    "value_and_grad": lambda m, p, i, **kw: m.value_and_grad(p, **i, **kw),
    "gradient": lambda m, p, i, **kw: m.gradient(p, **i, **kw),
    "sgd_step": lambda m, p, i, **kw: m.sgd_step(p, 0.1, **i, **kw),
    "momentum_step": lambda m, p, i, **kw: m.momentum_step(p, {}, 0.1, **i, **kw),
    "adam_step": lambda m, p, i, **kw: m.adam_step(p, {}, 0.1, **i, **kw),
}


def raises(m, where, params, inputs, message):
    with pytest.raises(ValueError, match="^" + re.escape(f"{where}: {message}") + "$"):
        CALLS[where](m, params, inputs)


# -- the cases of the report ---------------------------------------------------

def test_negative_label_is_refused_not_wrapped(m):
    params, inputs = good(m)
    inputs["label"] = np.array([0, -1, 2, 3, 1])
    raises(m, "value_and_grad", params, inputs, "label has values in [-1, 3]; expected class labels in [0, 4)")


def test_label_past_the_classes_is_refused(m):
    params, inputs = good(m)
    inputs["label"] = np.array([0, 4, 2, 3, 1])
    raises(m, "loss", params, inputs, "label has values in [0, 4]; expected class labels in [0, 4)")


def test_float_labels_are_refused_with_a_clear_error(m):
    params, inputs = good(m)
    inputs["label"] = np.array([0.0, 1.0, 2.0, 3.0, 1.0])
    raises(m, "value_and_grad", params, inputs,
           "label has dtype float64; expected an integer dtype (class labels in [0, 4))")


def test_bool_labels_are_refused(m):
    params, inputs = good(m)
    inputs["label"] = np.array([True, False, True, False, True])
    raises(m, "loss", params, inputs, "label has dtype bool; expected an integer dtype (class labels in [0, 4))")


def test_param_of_a_broadcastable_wrong_shape_is_refused(reg):
    params = {"w": np.ones(1)}   # (1,) for (3,): broadcasts into a finite, wrong gradient without the check
    inputs = {"x": np.ones((2, 3)), "y": np.ones(2)}
    raises(reg, "value_and_grad", params, inputs, "params['w'] has shape (1,); expected (3,)")


def test_input_of_the_wrong_per_example_shape(m):
    params, inputs = good(m)
    inputs["x"] = np.ones((5, 2))
    raises(m, "value_and_grad", params, inputs, "x has shape (5, 2); expected (N, 3)")


def test_input_without_the_batch_axis(m):
    params, inputs = good(m)
    inputs["x"] = np.ones(3)
    raises(m, "predict", params, inputs, "x has shape (3,); expected (N, 3)")


def test_scalar_target_with_a_trailing_axis_is_refused(reg):
    """y of shape (N, 1) for (N,) would broadcast the loss to (N, N)."""
    params = reg.init_params(0)
    raises(reg, "loss", params, {"x": np.ones((2, 3)), "y": np.ones((2, 1))}, "y has shape (2, 1); expected (N,)")


def test_labels_of_the_wrong_shape(m):
    params, inputs = good(m)
    inputs["label"] = inputs["label"][:, None]
    raises(m, "value_and_grad", params, inputs, "label has shape (5, 1); expected (N,)")


def test_batch_sizes_must_agree(m):
    params, inputs = good(m)
    inputs["label"] = inputs["label"][:3]
    raises(m, "value_and_grad", params, inputs, "label has batch size 3; expected 5, the batch size of x")


def test_missing_param(m):
    params, inputs = good(m)
    del params["W"]
    raises(m, "value_and_grad", params, inputs, "params has no 'W'; expected an array of shape (4, 3)")


def test_param_that_is_not_an_array(m):
    params, inputs = good(m)
    params["b"] = [0.0] * 4
    raises(m, "loss", params, inputs, "params['b'] is a list; expected an array of shape (4,)")


def test_integer_param(m):
    params, inputs = good(m)
    params["W"] = np.ones((4, 3), np.int64)
    raises(m, "value_and_grad", params, inputs, "params['W'] has dtype int64; expected a floating dtype (float64)")


def test_params_not_a_dict(m):
    _, inputs = good(m)
    raises(m, "predict", [1, 2], inputs, "params is a list; expected a dict of arrays")


@pytest.mark.parametrize("dtype", [np.complex128, object, "U3", "datetime64[s]"])
def test_float_input_of_a_non_real_dtype(m, dtype):
    params, inputs = good(m)
    inputs["x"] = np.zeros((5, 3), dtype)
    raises(m, "value_and_grad", params, inputs,
           f"x has dtype {np.dtype(dtype)}; expected a real numeric dtype (it is read as float64)")


def test_ragged_input(m):
    params, inputs = good(m)
    inputs["x"] = [[1.0, 2.0, 3.0], [1.0]]
    with pytest.raises(ValueError, match=r"^value_and_grad: x is not an array \("):
        m.value_and_grad(params, **inputs)


# -- every function checks, under its own name, and check=False skips it -------------

@pytest.mark.parametrize("where", sorted(CALLS))
def test_every_function_checks_under_its_own_name(m, where):
    params, inputs = good(m)
    before = {k: v.copy() for k, v in params.items()}
    inputs["label"] = np.array([0, -1, 2, 3, 1])
    raises(m, where, params, inputs, "label has values in [-1, 3]; expected class labels in [0, 4)")
    for k in params:   # a refused step changes nothing
        np.testing.assert_array_equal(params[k], before[k])


@pytest.mark.parametrize("where", sorted(CALLS))
def test_check_false_skips_the_checks(m, where):
    params, inputs = good(m)
    inputs["label"] = np.array([0, -1, 2, 3, 1])   # wraps to class 3 when nothing checks
    wrapped = dict(inputs, label=np.array([0, 3, 2, 3, 1]))
    p1 = {k: v.copy() for k, v in params.items()}
    p2 = {k: v.copy() for k, v in params.items()}
    r1 = CALLS[where](m, p1, inputs, check=False)
    r2 = CALLS[where](m, p2, wrapped)
    if isinstance(r1, tuple):
        r1, r2 = (r1[0], *r1[1].values()), (r2[0], *r2[1].values())
    elif isinstance(r1, dict):
        r1, r2 = tuple(r1.values()), tuple(r2.values())
    else:
        r1, r2 = (r1,), (r2,)
    for a, b in zip(r1, r2):
        np.testing.assert_array_equal(a, b)
    for k in params:
        np.testing.assert_array_equal(p1[k], p2[k])


@pytest.mark.parametrize("where", ["gradient", "sgd_step", "momentum_step", "adam_step"])
def test_wrappers_check_once(m, where, monkeypatch):
    params, inputs = good(m)
    calls = []
    real = m._check
    monkeypatch.setattr(m, "_check", lambda *a: calls.append(a[0]) or real(*a))
    CALLS[where](m, params, inputs)
    assert calls == [where]


def test_good_arguments_pass_in_every_accepted_form(m, reg):
    params, inputs = good(m)
    ref = m.value_and_grad(params, **inputs)
    for variant in (
        dict(inputs, x=inputs["x"].tolist(), label=inputs["label"].tolist()),   # lists
        dict(inputs, label=inputs["label"].astype(np.uint8)),                  # unsigned labels
        dict(inputs, label=inputs["label"].astype(np.int32)),
        dict(inputs, x=inputs["x"].astype(np.float32)),
    ):
        value, grads = m.value_and_grad(params, **variant)
        assert value == pytest.approx(ref[0], rel=1e-6)
    m.predict(params, x=inputs["x"])                      # label not given: not checked
    m.predict(params, x=inputs["x"], label=inputs["label"])
    assert m.value_and_grad(params, x=np.ones((3, 3), int), label=np.array([0, 1, 2]))[0] > 0
    assert reg.loss(reg.init_params(0), x=np.ones((2, 3), bool), y=np.ones(2, np.int8)) >= 0


def test_empty_batch_passes_the_checks(m):
    params, _ = good(m)
    assert m.predict(params, x=np.zeros((0, 3))).shape == (0, 4)


def test_float32_module_accepts_float32_params():
    m32 = bpcompile.compile(SPEC.replace("name: checked\n", "name: checked32\ndtype: float32\n")).load()
    params = m32.init_params(0)
    assert all(v.dtype == np.float32 for v in params.values())
    value, grads = m32.value_and_grad(params, x=np.ones((2, 3), np.float32), label=np.array([1, 2]))
    assert np.isfinite(value)
    with pytest.raises(ValueError, match=r"expected a floating dtype \(float32\)$"):
        m32.loss(dict(params, W=np.ones((4, 3), np.int32)), x=np.ones((2, 3)), label=np.array([1, 2]))


# -- the include is shared: it renders on its own for any module with the constants ---

def test_checks_include_renders_standalone_for_another_module():
    """templates/checks.py.j2 takes no template variables: the CUDA loader includes it
    after the same constants."""
    env = Environment(loader=PackageLoader("bpcompile", "targets/templates"), keep_trailing_newline=True,
                      trim_blocks=True)
    source = env.get_template("checks.py.j2").render()
    namespace = {"np": np, "DTYPE": np.float32, "PARAM_SHAPES": {"E": (10, 2)},
                 "INPUT_SHAPES": {"tokens": (5,)}, "LABEL_CLASSES": {"tokens": 10}}
    exec(compile(source, "checks.py", "exec"), namespace)
    check = namespace["_check"]
    check("f", {"E": np.zeros((10, 2), np.float32)}, {"tokens": np.zeros((7, 5), np.int64)})
    with pytest.raises(ValueError, match=re.escape("f: tokens has values in [10, 10]; expected class labels in [0, 10)")):
        check("f", {"E": np.zeros((10, 2))}, {"tokens": np.full((7, 5), 10)})
    with pytest.raises(ValueError, match=re.escape("f: tokens has shape (7,); expected (N, 5)")):
        check("f", {"E": np.zeros((10, 2))}, {"tokens": np.zeros(7, int)})


# -- the generated text --------------------------------------------------------------

def test_module_layout_two_blank_lines_and_no_unused_rng(m):
    src = bpcompile.compile(SPEC).source
    assert "\n\n\n\n" not in src
    assert "\n\n\ndef predict(" in src
    zeros = bpcompile.compile(SPEC.replace("W: [4, 3]", "W: {shape: [4, 3], init: zeros}")).source
    init = zeros[zeros.index("def init_params"):zeros.index("def predict")]
    assert "rng" not in init
    init = src[src.index("def init_params"):src.index("def predict")]
    assert "rng = np.random.default_rng(seed)" in init


def test_module_docstring_documents_check_false(m):
    assert "check=False" in m.__doc__
    for fn in ("predict", "loss", "value_and_grad", "gradient", "sgd_step", "momentum_step", "adam_step"):
        assert "check" in getattr(m, fn).__code__.co_varnames


def test_output_is_byte_deterministic():
    assert bpcompile.compile(SPEC).source == bpcompile.compile(SPEC).source


# -- ndarray subclasses: their operators mean something else ----------------------

def test_matrix_param_is_refused(m):
    """np.matrix passed the shape check, then ``w * x`` was a matrix product."""
    p, inputs = good(m)
    for where in sorted(CALLS):
        raises(m, where, dict(p, W=np.asmatrix(p["W"])), inputs,
               "params['W'] is a numpy.matrix; expected a numpy.ndarray")


def test_masked_array_param_and_input_are_refused(m):
    params, inputs = good(m)
    masked = np.ma.masked_array(params["b"], mask=[True, False, False, False])
    raises(m, "loss", dict(params, b=masked), inputs,
           "params['b'] is a numpy.ma.MaskedArray; expected a numpy.ndarray")
    raises(m, "value_and_grad", params, dict(inputs, x=np.ma.masked_invalid(inputs["x"])),
           "x is a numpy.ma.MaskedArray; expected a numpy.ndarray")
    raises(m, "predict", params, dict(inputs, x=np.asmatrix(inputs["x"])),
           "x is a numpy.matrix; expected a numpy.ndarray")
    # check=False skips this as every other check
    m.loss(params, **inputs, check=False)


def test_subclass_check_keeps_plain_arrays_lists_memmaps_and_array_likes(tmp_path):
    """The CUDA loader's copy of the checks (the same include) takes CuPy arrays, which
    are no ndarray subclass: anything with .shape and .dtype that is not one passes."""
    env = Environment(loader=PackageLoader("bpcompile", "targets/templates"), keep_trailing_newline=True,
                      trim_blocks=True)
    namespace = {"np": np, "DTYPE": np.float64, "PARAM_SHAPES": {"W": (2, 3)},
                 "INPUT_SHAPES": {"x": (3,)}, "LABEL_CLASSES": {}}
    exec(compile(env.get_template("checks.py.j2").render(), "checks.py", "exec"), namespace)
    check = namespace["_check"]

    class DeviceArray:   # what the checks read of a cupy.ndarray
        def __init__(self, a):
            self.shape, self.dtype = a.shape, a.dtype

    mm = np.memmap(tmp_path / "x.dat", dtype=np.float64, mode="w+", shape=(4, 3))
    for W, x in [(np.zeros((2, 3)), np.zeros((4, 3))), (np.zeros((2, 3)), [[1, 2, 3]]),
                 (DeviceArray(np.zeros((2, 3))), DeviceArray(np.zeros((4, 3)))), (np.zeros((2, 3)), mm)]:
        check("f", {"W": W}, {"x": x})
    with pytest.raises(ValueError, match=re.escape("f: params['W'] is a numpy.matrix; expected a numpy.ndarray")):
        check("f", {"W": np.asmatrix(np.zeros((2, 3)))}, {"x": np.zeros((4, 3))})
