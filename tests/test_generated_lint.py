"""Every generated Python module passes pyflakes: no unused variable, no
redefinition, no undefined name (issue 11).

Checked: the checked-in modules (generated/*.py, generated/cuda/*_cuda.py), and
fresh compiles, for the NumPy and the CUDA targets, of every example, every
benchmark spec and a few specs that reach the corners of the printers (an output
of the params alone, a loss that reads no float input, a WRT input, float32).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import EXAMPLES, ROOT

import bpcompile
from bpcompile.ops import FUNCTIONS

pyflakes_api = pytest.importorskip("pyflakes.api", reason="pyflakes (the test extra) lints generated code")
from pyflakes.reporter import Reporter  # noqa: E402

CHECKED_IN = sorted((ROOT / "generated").glob("*.py")) + sorted((ROOT / "generated" / "cuda").glob("*_cuda.py"))
BENCH_SPECS = sorted((ROOT / "benchmarks" / "specs").glob("*.yaml"))

CORNER_SPECS = {
    "param_output": """
name: param_output
inputs:
  x: [3]
  y: []
params:
  W: [3, 3]
  v: {shape: [3], init: normal(0.5)}
graph:
  p: tanh(v) * 2
  g: sum(p * (W @ x))
loss: (y - g)**2
output: p
""",
    "scalar_param_output": """
name: scalar_param_output
dtype: float32
reduction: sum
inputs:
  label: {classes: 3}
params:
  z: {shape: [3], init: normal(1.0)}
graph:
  s: sum(z * z)
loss: softmax_cross_entropy(z, label) + s / 10
output: s
""",
    "wrt_input": """
name: wrt_input
inputs:
  x: [4]
  t: []
params:
  w: {shape: [4], init: ones}
  c: {shape: [], init: constant(0.5)}
graph:
  h: sigmoid(dot(w, x) + c)
loss: (h - t)**2 / 2
wrt: [w, c, x]
""",
}


class _Collect(Reporter):
    def __init__(self):
        self.messages = []

    def unexpectedError(self, filename, msg):
        self.messages.append(f"{filename}: {msg}")

    def syntaxError(self, filename, msg, lineno, offset, text):
        self.messages.append(f"{filename}:{lineno}: syntax error: {msg}")

    def flake(self, message):
        self.messages.append(str(message))


def lint(source: str, filename: str) -> list:
    reporter = _Collect()
    pyflakes_api.check(source, filename, reporter)
    return reporter.messages


@pytest.mark.parametrize("path", CHECKED_IN, ids=lambda p: str(p.relative_to(ROOT)))
def test_checked_in_modules_pass_pyflakes(path):
    assert lint(path.read_text(), str(path.relative_to(ROOT))) == []


# benchmark specs written ahead of the functions they call -> those functions
AHEAD = {"lenet_bench": ("conv2d", "max_pool2d", "flatten")}


def _specs():
    out = []
    for p in EXAMPLES + BENCH_SPECS:
        missing = [f for f in AHEAD.get(p.stem, ()) if f not in FUNCTIONS]
        out.append(pytest.param(p, id=f"{p.parent.name}/{p.stem}", marks=pytest.mark.skipif(
            bool(missing), reason=f"not in the spec language yet: {', '.join(missing)}")))
    out += [pytest.param(text, id=key) for key, text in CORNER_SPECS.items()]
    return out


@pytest.mark.parametrize("target", ["numpy", "cuda"])
@pytest.mark.parametrize("spec", _specs())
def test_fresh_compiles_pass_pyflakes(spec, target):
    spec = bpcompile.load_spec(spec) if isinstance(spec, Path) else bpcompile.parse_spec(spec)
    compiled = bpcompile.compile(spec, target=target)
    files = compiled.files or {compiled.filename: compiled.source}
    python = {name: text for name, text in files.items() if name.endswith(".py")}
    assert python, "every target writes a Python module or loader"
    for name, text in python.items():
        assert lint(text, name) == [], name


def test_the_linter_sees_what_it_should():
    """The check is live: an unused local and a redefinition are reported."""
    messages = lint("import numpy as np\nimport numpy as np\n\n\ndef f():\n    rng = 1\n", "x.py")
    assert any("redefinition" in m for m in messages)
    assert any("rng" in m and "never used" in m for m in messages)
