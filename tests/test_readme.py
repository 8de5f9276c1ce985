"""The README quotes what the compiler writes today."""

from __future__ import annotations

import re

import numpy as np
import pytest

from conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_the_tour_quotes_the_generated_backward_pass():
    block = re.search(r"```python\n(    # backward pass: adjoints.*?)```", README, re.S).group(1)
    generated = (ROOT / "generated" / "tanh_regression.py").read_text()
    assert block in generated, "the README's backward-pass excerpt is stale: copy it from generated/"


def test_the_tour_quotes_the_argument_check_message():
    import types
    path = ROOT / "generated" / "tanh_regression.py"
    m = types.ModuleType("tanh_regression_readme")   # no __pycache__ beside the golden files
    exec(compile(path.read_text(), str(path), "exec"), m.__dict__)
    quoted = re.search(r"# ValueError: (.*)\n", README).group(1)
    params = m.init_params(seed=0)
    x, y = np.random.randn(32, 3), np.random.randn(32)
    with pytest.raises(ValueError) as e:
        m.value_and_grad(params, x=x[:, :2], y=y)
    assert str(e.value) == quoted
    assert np.isfinite(m.sgd_step(params, 0.1, x=x, y=y, check=False))


def test_the_readme_two_commands_are_the_ones_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -e ".[test]" && bpcompile compile examples/*.yaml -o generated' in README
    assert "python3 -m pytest -q" in README and "python3 -m pytest -q" in ci


def test_the_tour_quotes_inspect_as_it_prints():
    import subprocess
    import sys
    block = re.search(r"```\n(tanh_regression\n\nForward program.*?)```", README, re.S).group(1)
    r = subprocess.run([sys.executable, "-m", "bpcompile", "inspect", "examples/tanh_regression.yaml"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == block, "the README's inspect output is stale: paste bpcompile inspect's output"
