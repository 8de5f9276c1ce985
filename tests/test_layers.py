"""The layers: shorthand with conv2d, conv1d, pooling and flatten items (issue 12).

Three kinds of test:

* the errors: every way an item can be wrong is one SpecError naming the file,
  ``layers[i]`` (or ``layers[i].KEY``) and its line; the shorthand checks every
  item before it reads a line it writes, so these run whatever ops the spec
  language has;
* the expansion at the parse level (``parse_spec``): the graph lines, the params'
  shapes and init rules; they need the functions the lines call (conv2d, pooling,
  flatten, reshape) to be in the spec language, and are skipped until they are;
* end to end: the shorthand LeNet against the explicit one of the benchmark, and
  gradients against finite differences; skipped until the ops exist.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

import bpcompile
from bpcompile import SpecError
from bpcompile.ops import FUNCTIONS
from conftest import ROOT, finite_differences, random_point, rel_error


def needs(*functions):
    missing = [f for f in functions if f not in FUNCTIONS]
    return pytest.mark.skipif(bool(missing), reason=f"not in the spec language yet: {', '.join(missing)}")


CNN_OPS = ("conv2d", "max_pool2d", "flatten", "reshape")


def spec_text(layers, inputs="x: [1, 8, 8]\n  label: {classes: 3}", loss="softmax_cross_entropy(z_last, label)"):
    """A spec around a layers: list (one item a line); z_last: the last node the list makes."""
    return f"name: m\ninputs:\n  {inputs}\nlayers:\n" + "".join(f"  - {item}\n" for item in layers) + \
        f"loss: {loss}\n"


def refused(source, *words):
    """The one-line SpecError of ``source``, its message holding ``words``."""
    with pytest.raises(SpecError) as info:
        bpcompile.parse_spec(source, file="net.yaml")
    text = str(info.value)
    assert "\n" not in text and len(text) < 400, text
    for w in words:
        assert w in text, (w, text)
    return info.value


# ---------------------------------------------------------------------------
# Errors: each names the file, the item and its line


# (layers, inputs or None for a [1, 8, 8] image, key, words of the message)
BAD = {
    "dense on an image": (["{dense: 10}"], None, "layers[0]",
                          ["dense needs a vector", "'x' has shape [1, 8, 8]", "put {flatten: true} before it"]),
    "dense after a conv": (["{conv2d: 4, kernel: 3, activation: relu}", "{dense: 10}"], None, "layers[1]",
                           ["dense needs a vector", "'h1' has shape [4, 6, 6]", "{flatten: true}"]),
    "dense after a pool": (["{conv2d: 4, kernel: 3}", "{max_pool2d: 2}", "{dense: 3}"], None, "layers[2]",
                           ["'h2' has shape [4, 3, 3]"]),
    "conv on a vector": (["{conv2d: 4, kernel: 3}"], "x: [64]", "layers[0]",
                         ["conv2d needs a [C, H, W] input", "'x' has shape [64]"]),
    "conv after flatten": (["{flatten: true}", "{conv2d: 4, kernel: 3}"], None, "layers[1]",
                           ["conv2d needs a [C, H, W] input", "'h1' has shape [64]"]),
    "conv1d on an image": (["{conv1d: 4, kernel: 3}"], None, "layers[0]", ["conv1d needs a [C, L] input"]),
    "pool on a vector": (["{max_pool2d: 2}"], "x: [64]", "layers[0]", ["max_pool2d needs a [C, H, W] input"]),
    "avg pool on a sequence": (["{avg_pool2d: 2}"], "x: [3, 10]", "layers[0]", ["avg_pool2d needs a [C, H, W]"]),
    "kernel larger than the input": (["{conv2d: 4, kernel: 9}"], None, "layers[0]",
                                     ["the kernel (9) is larger than its input 'x' of shape [1, 8, 8]"]),
    "kernel larger than the padded input": (["{conv2d: 4, kernel: 11, padding: 1}"], None, "layers[0]",
                                            ["kernel (11) is larger", "padded by 1 on each side"]),
    "kernel larger than a later input": (["{conv2d: 4, kernel: 5}", "{conv2d: 4, kernel: 5}"], None,
                                         "layers[1]", ["the kernel (5) is larger than its input 'z1' of shape "
                                                       "[4, 4, 4]"]),
    "kernel larger than a sequence": (["{conv1d: 4, kernel: 11}"], "x: [3, 10]", "layers[0]",
                                      ["kernel (11) is larger", "[3, 10]"]),
    "pool window larger than its input": (["{conv2d: 4, kernel: 7}", "{max_pool2d: 3}"], None, "layers[1]",
                                          ["the pooling window (3) is larger than its input 'z1' of shape "
                                           "[4, 2, 2]"]),
    "unknown key, close to a known one": (["{conv2d: 4, kernel: 3, activaton: relu}"], None, "layers[0]",
                                          ["unknown key 'activaton' in a conv2d layer; did you mean 'activation'?"]),
    "unknown key": (["{max_pool2d: 2, foo: 1}"], None, "layers[0]",
                    ["unknown key 'foo' in a max_pool2d layer (it takes max_pool2d, stride)"]),
    "another kind's key": (["{flatten: true}", "{dense: 3, kernel: 3}"], None, "layers[1]",
                           ["unknown key 'kernel' in a dense layer"]),
    "two kinds": (["{dense: 3, conv2d: 4}"], None, "layers[0]",
                  ["a layer is one kind of layer, this one has dense and conv2d"]),
    "no kind": (["{activation: relu}"], None, "layers[0]", ["a layer is one of {dense: UNITS}", "{flatten: true}"]),
    "not a mapping": (["conv2d"], None, "layers[0]", ["a layer is one of", "got 'conv2d'"]),
    "input not first": (["{flatten: true}", "{input: x}"], None, "layers[1]",
                        ["{input: NAME} is the first item of layers"]),
    "no kernel": (["{conv2d: 4, activation: relu}"], None, "layers[0]",
                  ["this layer needs kernel: the kernel size, a positive integer"]),
    "no channels": (["{conv2d: 0, kernel: 3}"], None, "layers[0].conv2d",
                    ["conv2d (the number of output channels) must be a positive integer, got 0"]),
    "kernel not an integer": (["{conv2d: 4, kernel: 2.5}"], None, "layers[0].kernel",
                              ["kernel (the kernel size) must be a positive integer, got 2.5"]),
    "kernel a boolean": (["{conv2d: 4, kernel: true}"], None, "layers[0].kernel", ["got True"]),
    "kernel a list": (["{conv2d: 4, kernel: [3, 3]}"], None, "layers[0].kernel", ["got [3, 3]"]),
    "stride 0": (["{conv2d: 4, kernel: 3, stride: 0}"], None, "layers[0].stride",
                 ["stride (the step between windows) must be a positive integer, got 0"]),
    "pool stride 0": (["{max_pool2d: 2, stride: 0}"], None, "layers[0].stride", ["must be a positive integer"]),
    "negative padding": (["{conv2d: 4, kernel: 3, padding: -1}"], None, "layers[0].padding",
                         ["padding (the zeros added on each side) must be an integer >= 0, got -1"]),
    "unknown padding mode": (["{conv2d: 4, kernel: 3, padding: full}"], None, "layers[0].padding",
                             ["padding must be an integer >= 0 or one of 'same', 'valid', got 'full'"]),
    "same padding with a stride": (["{conv2d: 4, kernel: 3, padding: same, stride: 2}"], None,
                                   "layers[0].padding", ["padding 'same' needs stride 1", "stride 2"]),
    "no window": (["{max_pool2d: 0}"], None, "layers[0].max_pool2d",
                  ["max_pool2d (the window size) must be a positive integer, got 0"]),
    "flatten false": (["{flatten: false}"], None, "layers[0].flatten", ["flatten takes the value true, got False"]),
    "flatten 1": (["{flatten: 1}"], None, "layers[0].flatten", ["got 1"]),
    "conv activation": (["{conv2d: 4, kernel: 3, activation: softmax}"], None, "layers[0].activation",
                        ["unknown activation 'softmax'"]),
    "conv init": (["{conv2d: 4, kernel: 3, init: kaiming}"], None, "layers[0].init", ["unknown init 'kaiming'"]),
    "scalar input": (["{dense: 3}"], "x: []", "layers", ["layers input 'x' is a scalar"]),
    "huge padding": (["{conv2d: 4, kernel: 3, padding: 3000000000}"], None, "layers[0].padding",
                     ["MAX_SHAPE_ELEMENTS"]),
    "huge output": (["{conv2d: 100000, kernel: 1}"], "x: [1, 200, 200]", "layers[0]", ["MAX_SHAPE_ELEMENTS"]),
    "huge kernel weights": (["{conv2d: 60000, kernel: 200}"], "x: [1, 200, 200]", "layers[0]",
                            ["MAX_SHAPE_ELEMENTS"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_wrong_item_is_one_error_naming_it(case):
    layers, inputs, key, words = BAD[case]
    source = spec_text(layers, inputs=(inputs or "x: [1, 8, 8]") + "\n  label: {classes: 3}",
                       loss="sum(h1)")
    e = refused(source, f"net.yaml:{_line_of(source, key)}: {key}: ", *words)
    assert e.key == key


def _line_of(source, key):
    """The line of ``key`` (layers, layers[i] or layers[i].KEY) in a spec_text source."""
    lines = source.splitlines()
    start = lines.index("layers:") + 1
    if key == "layers":
        return start
    i = int(key[len("layers["):key.index("]")])
    return start + 1 + i


def test_an_error_in_a_later_item_comes_before_any_line_is_read():
    """All items are checked first: a spec whose first items are fine but whose last
    one is wrong gets the last one's error, whatever functions the language has."""
    refused(spec_text(["{conv2d: 4, kernel: 3, activation: relu}", "{max_pool2d: 2}", "{dense: 10}"],
                      loss="sum(z3)"), "layers[2]", "dense needs a vector", "'h2' has shape [4, 3, 3]")


def test_errors_name_the_item_as_written_after_an_input_item():
    source = spec_text(["{input: img}", "{conv2d: 2, kernel: 3}", "{dense: 4}"],
                       inputs="img: [2, 5, 5]\n  other: [3]", loss="sum(z2)")
    e = refused(source, "layers[2]", "'z1' has shape [2, 3, 3]")
    assert e.line == _line_of(source, "layers[2]")


def test_dense_stacks_read_as_before():
    """A dense-only stack (the shorthand before conv items) expands as it did."""
    spec = bpcompile.parse_spec(spec_text(["{dense: 7, activation: tanh}", "{dense: 3}"],
                                          inputs="x: [5]\n  label: {classes: 3}", loss="sum(z2)"))
    assert [(n, e.text) for n, e in spec.graph] == [("z1", "W1 @ x + b1"), ("h1", "tanh(z1)"),
                                                    ("z2", "W2 @ h1 + b2")]
    assert {k: (p.shape, p.init) for k, p in spec.params.items()} == {
        "W1": ((7, 5), ("glorot",)), "b1": ((7,), ("zeros",)), "W2": ((3, 7), ("glorot",)), "b2": ((3,), ("zeros",))}


# ---------------------------------------------------------------------------
# The expansion, at the parse level

LENET = ["{conv2d: 6, kernel: 5, activation: relu}", "{max_pool2d: 2}",
         "{conv2d: 16, kernel: 5, activation: relu}", "{max_pool2d: 2}", "{flatten: true}",
         "{dense: 120, activation: relu}", "{dense: 84, activation: relu}", "{dense: 10}"]


@needs(*CNN_OPS)
def test_lenet_in_eight_lines():
    source = spec_text(LENET, inputs="x: [1, 28, 28]\n  label: {classes: 10}",
                       loss="softmax_cross_entropy(z8, label)")
    spec = bpcompile.parse_spec(source)
    assert [(n, e.text) for n, e in spec.graph] == [
        ("z1", "conv2d(x, W1) + reshape(b1, [6, 1, 1])"), ("h1", "relu(z1)"),
        ("h2", "max_pool2d(h1, 2)"),
        ("z3", "conv2d(h2, W3) + reshape(b3, [16, 1, 1])"), ("h3", "relu(z3)"),
        ("h4", "max_pool2d(h3, 2)"),
        ("h5", "flatten(h4)"),
        ("z6", "W6 @ h5 + b6"), ("h6", "relu(z6)"),
        ("z7", "W7 @ h6 + b7"), ("h7", "relu(z7)"),
        ("z8", "W8 @ h7 + b8")]
    assert {k: p.shape for k, p in spec.params.items()} == {
        "W1": (6, 1, 5, 5), "b1": (6,), "W3": (16, 6, 5, 5), "b3": (16,),
        "W6": (120, 256), "b6": (120,), "W7": (84, 120), "b7": (84,), "W8": (10, 84), "b8": (10,)}
    assert all(p.init == (("glorot",) if k[0] == "W" else ("zeros",)) for k, p in spec.params.items())
    # every line carries its item's key and line
    assert [e.key for _, e in spec.graph][:4] == ["layers[0]", "layers[0]", "layers[1]", "layers[2]"]
    assert spec.graph[3][1].line == _line_of(source, "layers[2]")


@needs(*CNN_OPS)
@pytest.mark.parametrize("item, size, text", [
    ("{conv2d: 3, kernel: 3}", 9, "conv2d(x, W1)"),                                  # (11 - 3) + 1
    ("{conv2d: 3, kernel: 3, padding: 1}", 11, "conv2d(x, W1, padding=1)"),          # 11 + 2 - 3 + 1
    ("{conv2d: 3, kernel: 4, padding: same}", 11, "conv2d(x, W1, padding='same')"),  # even kernel too
    ("{conv2d: 3, kernel: 3, padding: valid}", 9, "conv2d(x, W1, padding='valid')"),
    ("{conv2d: 3, kernel: 3, stride: 2}", 5, "conv2d(x, W1, stride=2)"),            # (11 - 3) // 2 + 1
    ("{conv2d: 3, kernel: 4, stride: 3, padding: 2}", 4, "conv2d(x, W1, stride=3, padding=2)"),  # 11 // 3 + 1
    ("{conv2d: 3, kernel: 11}", 1, "conv2d(x, W1)"),                                 # the whole image
    ("{max_pool2d: 2}", 5, "max_pool2d(x, 2)"),                                      # floor(11 / 2)
    ("{max_pool2d: 3, stride: 2}", 5, "max_pool2d(x, 3, stride=2)"),                # (11 - 3) // 2 + 1
    ("{avg_pool2d: 4}", 2, "avg_pool2d(x, 4)"),
    ("{max_pool2d: 11}", 1, "max_pool2d(x, 11)"),
])
def test_output_sizes_follow_stride_padding_and_floor_pooling(item, size, text):
    """The shorthand's own shape tracking: the dense layer after a flatten is declared
    with the number of values the item makes."""
    spec = bpcompile.parse_spec(spec_text([item, "{flatten: true}", "{dense: 2}"],
                                          inputs="x: [2, 11, 11]\n  label: {classes: 2}", loss="sum(z3)"))
    graph = dict((n, e.text) for n, e in spec.graph)
    first = "z1" if "conv2d" in item else "h1"
    assert graph[first].startswith(text)
    channels = 3 if "conv2d" in item else 2
    assert spec.params["W3"].shape == (2, channels * size * size)


@needs("conv1d", "flatten", "reshape")
def test_conv1d_items_on_a_sequence():
    spec = bpcompile.parse_spec(spec_text(
        ["{input: seq}", "{conv1d: 8, kernel: 3, activation: tanh, padding: 1}", "{conv1d: 4, kernel: 5}",
         "{flatten: true}", "{dense: 2}"],
        inputs="seq: [3, 20]\n  other: [2]\n  label: {classes: 2}", loss="softmax_cross_entropy(z4, label)"))
    assert [(n, e.text) for n, e in spec.graph] == [
        ("z1", "conv1d(seq, W1, padding=1) + reshape(b1, [8, 1])"), ("h1", "tanh(z1)"),
        ("z2", "conv1d(h1, W2) + reshape(b2, [4, 1])"),     # linear: no h2
        ("h3", "flatten(z2)"), ("z4", "W4 @ h3 + b4")]
    assert {k: p.shape for k, p in spec.params.items()} == {
        "W1": (8, 3, 3), "b1": (8,), "W2": (4, 8, 5), "b2": (4,), "W4": (2, 64), "b4": (2,)}


@needs(*CNN_OPS)
def test_conv_init_is_glorot_unless_given():
    spec = bpcompile.parse_spec(spec_text(["{conv2d: 2, kernel: 3, init: he}", "{conv2d: 2, kernel: 3}",
                                           "{flatten: true}"], loss="sum(h3)"))
    assert spec.params["W1"].init == ("he",) and spec.params["W2"].init == ("glorot",)


# ---------------------------------------------------------------------------
# End to end: once conv2d, pooling, flatten and reshape compile


@needs(*CNN_OPS)
def test_shorthand_lenet_is_the_explicit_lenet():
    """The shorthand LeNet computes what the benchmark's explicit graph does (its
    biases [O] are the explicit graph's [O, 1, 1])."""
    explicit = bpcompile.compile(ROOT / "benchmarks" / "specs" / "lenet_bench.yaml").load()
    short = bpcompile.compile(spec_text(LENET, inputs="x: [1, 28, 28]\n  label: {classes: 10}",
                                        loss="softmax_cross_entropy(z8, label)")).load()
    names = {"W1": "W1", "b1": "b1", "W3": "W2", "b3": "b2", "W6": "W3", "b6": "b3", "W7": "W4", "b7": "b4",
             "W8": "W5", "b8": "b5"}
    params = short.init_params(0)
    for k in ("b1", "b3", "b6", "b7", "b8"):
        params[k] = np.random.default_rng(len(k)).standard_normal(params[k].shape) * 0.1
    mapped = {names[k]: v.reshape(explicit.PARAM_SHAPES[names[k]]) for k, v in params.items()}
    rng = np.random.default_rng(1)
    x, label = rng.standard_normal((3, 1, 28, 28)), rng.integers(0, 10, 3)
    va, ga = short.value_and_grad(params, x=x, label=label)
    vb, gb = explicit.value_and_grad(mapped, x=x, label=label)
    assert np.isclose(va, vb, rtol=1e-12)
    for k, g in ga.items():
        np.testing.assert_allclose(g.reshape(gb[names[k]].shape), gb[names[k]], rtol=1e-10, atol=1e-12, err_msg=k)


@needs(*CNN_OPS, "avg_pool2d")
def test_strided_padded_shorthand_gradients_match_finite_differences():
    source = spec_text(["{conv2d: 2, kernel: 3, stride: 2, padding: 1, activation: tanh}", "{avg_pool2d: 2}",
                        "{conv2d: 3, kernel: 3, padding: same, activation: sigmoid}", "{max_pool2d: 2, stride: 1}",
                        "{flatten: true}", "{dense: 3}"],
                       inputs="x: [2, 7, 7]\n  label: {classes: 3}", loss="softmax_cross_entropy(z6, label)")
    module = bpcompile.compile(source).load()
    # 7 -> conv (7 + 2 - 3) // 2 + 1 = 4 -> pool 2 -> conv same 2 -> pool 2 stride 1 -> 1
    assert module.PARAM_SHAPES["W6"] == (3, 3)
    params, inputs = random_point(module, n=3, seed=4)
    _, grads = module.value_and_grad(params, **inputs)
    for k in params:
        assert rel_error(grads[k], finite_differences(module, params, inputs, k)) < 1e-6, k


@needs(*CNN_OPS)
def test_conv_weights_get_glorot_over_their_fans():
    """glorot for a [O, C, K, K] weight: uniform in +-sqrt(6 / (C*K*K + O*K*K))."""
    module = bpcompile.compile(spec_text(["{conv2d: 6, kernel: 5}", "{flatten: true}"], loss="sum(h2)")).load()
    W = module.init_params(0)["W1"]
    limit = math.sqrt(6 / (1 * 25 + 6 * 25))
    assert W.shape == (6, 1, 5, 5) and np.abs(W).max() <= limit and np.abs(W).max() > 0.9 * limit
    assert not module.init_params(0)["b1"].any()


def test_yaml_of_the_readme_lenet_is_the_one_tested():
    """The README's LeNet shorthand is LENET above, item for item."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("name: lenet\n")
    block = yaml.safe_load(readme[start:readme.index("```", start)])
    assert block["layers"] == [yaml.safe_load(item) for item in LENET]
