"""``bpcompile verify``: the SymPy expansion and finite differences, on good
modules (every example) and on edited ones (one rule or one entry wrong)."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import yaml

import bpcompile
from bpcompile.tools.verify import _shrink
from conftest import EXAMPLES, ROOT

TANH = ROOT / "examples" / "tanh_regression.yaml"


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "bpcompile", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, check=False)


def edited_module(tmp_path, edit, spec=TANH):
    """The spec's generated module with ``edit`` applied to the body of
    value_and_grad, written to tmp_path; returns its path."""
    source = bpcompile.compile(spec).source
    start = source.index("\ndef value_and_grad(")
    end = source.index("\ndef ", start + 1)
    body = edit(source[start:end])
    assert body != source[start:end], "the edit did not apply"
    path = tmp_path / "edited.py"
    path.write_text(source[:start] + body + source[end:])
    return path


def negate_assignment(name):
    """Flip the sign of the line computing ``name``: ``W_bar = X`` -> ``W_bar = -(X)``."""
    return lambda body: re.sub(rf"^(    {name} = )(.+)$", r"\1-(\2)", body, count=1, flags=re.MULTILINE)


def before_return(line):
    return lambda body: re.sub(r"^(    return float\(L\), )", f"    {line}\n" + r"\1", body,
                               count=1, flags=re.MULTILINE)


def by_name(report):
    rows = {}
    for r in report.rows:
        rows.setdefault(r.name, {})[r.check] = r
    return rows


# ---------------------------------------------------------------------------
# Good gradients pass


# Examples whose shrunken graph is still too large for verify's SymPy expansion
# (digits_cnn: 144 entries at N=2 with every dimension and channel count shrunk to 3;
# expanding them takes SymPy more than its 30 s).
SYMPY_TOO_LARGE = {"digits_cnn"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_verifies(path):
    report = bpcompile.verify(path)
    assert report.ok, report.table()
    rows = by_name(report)
    spec = bpcompile.load_spec(path)
    checks = {"sympy", "fd"} | ({"sympy/f32", "fd/f32"} if spec.dtype == "float32" else set())
    if path.stem in SYMPY_TOO_LARGE:
        # the shrunken CNN still has thousands of weight entries: verify says so and
        # leaves it to finite differences
        assert any(n.startswith("sympy: skipped:") and "more than 100 to expand" in n
                   for n in report.notes), report.notes
        checks = checks - {"sympy", "sympy/f32"}
    for name in spec.wrt:
        assert set(rows[name]) == checks, name
    if path.stem not in SYMPY_TOO_LARGE:   # the loss value row comes from the expansion
        assert rows["L"]["value"].ok


def test_cli_prints_a_table_and_exits_0():
    r = run_cli("verify", TANH)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "verify tanh_regression"
    for name, shape in (("W", "[3, 3]"), ("b", "[3]"), ("v", "[3]")):
        for check in ("sympy", "fd"):
            assert any(re.match(rf"{name}\s+{re.escape(shape)}\s+{check}\s+\S+\s+\S+\s+ok$", line)
                       for line in lines), (name, check, r.stdout)
    assert lines[-1] == "ok: every check passed"


def test_unedited_module_file_passes(tmp_path):
    path = bpcompile.compile(TANH).write(tmp_path)
    r = run_cli("verify", TANH, "--module", path)
    assert r.returncode == 0, r.stdout + r.stderr


# Each check on its own: the ops of the spec language, a few at a time
OPS = {
    "elementwise": """
        inputs: {x: [3], y: []}
        params: {u: [3], c: []}
        graph:
          a: tanh(u * x) + sigmoid(x - u) + relu(u) + exp(-square(u)) / (1 + softplus(x))
          b: sin(a) * cos(c) + abs(a - c) + sqrt(1 + a**2) + log(x) - u / (2 + x**2)
        loss: sum(b) * y
    """,
    "structural": """
        inputs: {x: [3], M: [2, 3]}
        params: {W: [3, 3], v: [3]}
        graph:
          a: W @ x + x @ W.T + (M @ W)[1]
          m: W.T @ W
          s: sum(m, axis=0) * mean(m, axis=-1) + max(M @ W, axis=0) + m[0][2]
        loss: dot(a, s) + v @ x * sum(M) + max(s) - mean(x * v) + v[-1]**3
        reduction: sum
        wrt: [W, v, x]
    """,
    "softmax_family": """
        inputs: {z: [4], label: {classes: 4}}
        params: {W: [4, 4]}
        graph:
          h: W @ z
          p: softmax(h)
        loss: cross_entropy(p, label) + softmax_cross_entropy(h * 2, label)
              - sum(log_softmax(h) * onehot(label)) + logsumexp(-h)
    """,
}


@pytest.mark.parametrize("ops", OPS, ids=str)
def test_every_op_of_the_language(ops):
    report = bpcompile.verify(f"name: ops_{ops}\n" + OPS[ops].replace("\n        ", "\n"))
    assert report.ok, report.table()


# ---------------------------------------------------------------------------
# Wrong gradients fail


def test_sign_flipped_in_one_rule_fails(tmp_path):
    path = edited_module(tmp_path, negate_assignment("W_bar"))
    r = run_cli("verify", TANH, "--module", path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1].startswith("FAILED: W (fd), W (spec), W (sympy)")
    rows = by_name(bpcompile.verify(TANH, module=path))
    assert not rows["W"]["sympy"].ok and not rows["W"]["fd"].ok and not rows["W"]["spec"].ok
    assert all(r.ok for name in ("b", "v", "L") for r in rows[name].values())


def test_one_entry_off_fails(tmp_path):
    path = edited_module(tmp_path, before_return("W_bar[0, 0] += 1e-3"))
    r = run_cli("verify", TANH, "--module", path)
    assert r.returncode == 1, r.stdout + r.stderr
    rows = by_name(bpcompile.verify(TANH, module=path))
    assert not rows["W"]["sympy"].ok and not rows["W"]["fd"].ok
    assert rows["W"]["sympy"].max_abs == pytest.approx(1e-3, rel=1e-6)


def test_sympy_sees_an_error_below_finite_difference_precision(tmp_path):
    path = edited_module(tmp_path, before_return("b_bar[1] += 1e-7"))
    rows = by_name(bpcompile.verify(TANH, module=path))
    assert not rows["b"]["sympy"].ok


def test_entry_off_in_a_large_module_fails(tmp_path):
    """Too large to expand: the random direction through every entry catches it."""
    spec = ROOT / "examples" / "digits_mlp.yaml"
    path = edited_module(tmp_path, before_return("W1_bar[37, 5] += 1e-3"), spec)
    report = bpcompile.verify(spec, module=path)
    assert not report.ok
    assert [(r.name, r.check) for r in report.rows if not r.ok] == [("W1", "fd"), ("W1", "spec")]
    assert any(n.startswith("sympy: skipped") for n in report.notes)


def test_module_that_raises_fails_with_the_reason(tmp_path):
    path = edited_module(tmp_path, before_return("raise ValueError('edited')"))
    r = run_cli("verify", TANH, "--module", path)
    assert r.returncode == 1
    assert "value_and_grad raised ValueError: edited" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr


def test_missing_gradient_fails(tmp_path):
    path = edited_module(tmp_path, lambda body: body.replace("'b': b_bar, ", ""))
    report = bpcompile.verify(TANH, module=path)
    assert not report.ok
    assert all("no gradient" in r.note for r in report.rows)


def scaled_module(tmp_path, spec, value, grads):
    """The spec's generated module with loss and value_and_grad wrapped so that
    they return ``value`` * L and ``grads`` * each gradient (consistent with each
    other when both are 2: finite differences of its own loss() cannot see it)."""
    source = bpcompile.compile(spec).source + f"""

_loss0, _vag0 = loss, value_and_grad


def loss(params, **kw):
    return {value} * _loss0(params, **kw)


def value_and_grad(params, **kw):
    v, g = _vag0(params, **kw)
    return {value} * v, {{k: {grads} * a for k, a in g.items()}}
"""
    path = tmp_path / "scaled.py"
    path.write_text(source)
    return path


@pytest.mark.parametrize("example", ["mlp_classifier", "digits_mlp"])
@pytest.mark.parametrize("scale", [(2, 2), (1, 2), (1, 1)], ids=["loss-and-grads", "grads", "unedited"])
def test_module_is_compared_with_the_spec_when_sympy_is_skipped(tmp_path, example, scale):
    """Past SYMBOLIC_LIMIT the SymPy check is skipped; the module's loss and
    gradient are still compared with the spec (the ``spec`` rows), so a module
    whose loss and gradient are both doubled fails."""
    spec = ROOT / "examples" / f"{example}.yaml"
    report = bpcompile.verify(spec, module=scaled_module(tmp_path, spec, *scale))
    assert any("sympy: skipped" in n for n in report.notes), report.notes
    rows = by_name(report)
    assert {"spec", "fd"} <= set(rows["W1"]) and "spec" in rows["L"]
    if scale == (1, 1):
        assert report.ok, report.table()
    else:
        assert not report.ok
        assert not rows["W1"]["spec"].ok and not rows["W2"]["spec"].ok
        assert rows["L"]["spec"].ok == (scale[0] == 1)


def test_doubled_module_fails_on_the_command_line(tmp_path):
    spec = ROOT / "examples" / "mlp_classifier.yaml"
    r = run_cli("verify", spec, "--module", scaled_module(tmp_path, spec, 2, 2))
    assert r.returncode == 1, r.stdout + r.stderr
    assert re.search(r"^L\s+\[\]\s+spec\s+\S+\s+\S+\s+FAIL$", r.stdout, re.MULTILINE), r.stdout
    assert r.stdout.splitlines()[-1].startswith("FAILED: ")


def test_default_path_has_no_spec_rows():
    assert "spec" not in {r.check for r in bpcompile.verify(TANH).rows}


# ---------------------------------------------------------------------------
# Large instances: memory in proportion to the sample, and a cap on the work


def test_fd_directions_are_indices_and_one_random_array(monkeypatch):
    """The sampled directions are sent as flat indices: per name, one full-size
    array (the random direction) whatever SAMPLE is."""
    import bpcompile.tools.verify as v
    seen = []
    evaluate = v._Child.evaluate

    def spy(self, calls):
        seen.extend(c.move[1] for c in calls if c.move is not None)
        return evaluate(self, calls)

    monkeypatch.setattr(v._Child, "evaluate", spy)
    report = v.verify("name: wide\ninputs: {x: [5000]}\nparams: {w: [5000]}\nloss: sum(tanh(w * x))\n")
    assert report.ok, report.table()
    arrays = {id(d) for d in seen if isinstance(d, np.ndarray)}
    assert len(arrays) == 1                          # one random direction (w)
    assert sum(isinstance(d, int) for d in seen) >= v.SAMPLE * 4


def test_instance_over_the_work_cap_is_checked_shrunk(monkeypatch, tmp_path):
    import bpcompile.tools.verify as v
    monkeypatch.setattr(v, "FD_ELEMENTS", 1000)
    text = "name: big\ninputs: {x: [4000]}\nparams: {w: [4000]}\nloss: sum(w * x * x)\n"
    report = v.verify(text)
    assert report.ok, report.table()
    assert any("FD_ELEMENTS" in n and "capped at 250" in n for n in report.notes), report.notes
    assert by_name(report)["w"]["fd"].shape == (250,)
    path = bpcompile.compile(text).write(tmp_path)
    with pytest.raises(bpcompile.SpecError, match="FD_ELEMENTS"):
        v.verify(text, module=path)


# ---------------------------------------------------------------------------
# Bad specs and usage: exit 2, one line


def test_bad_spec_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ninputs: {x: [3]}\nparams: {W: [2, 2]}\nloss: sum(W @ x)\n")
    r = run_cli("verify", bad)
    assert r.returncode == 2
    assert r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1
    assert str(bad) in r.stderr and "loss" in r.stderr and "Traceback" not in r.stderr


def test_module_of_another_spec_exits_2(tmp_path):
    path = bpcompile.compile(ROOT / "examples" / "mlp_classifier.yaml").write(tmp_path)
    r = run_cli("verify", TANH, "--module", path)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1
    assert "does not match the spec" in r.stderr


@pytest.mark.parametrize("content", [None, "def broken(:\n"], ids=["missing", "syntax-error"])
def test_unusable_module_file_exits_2(tmp_path, content):
    path = tmp_path / "module.py"
    if content is not None:
        path.write_text(content)
    r = run_cli("verify", TANH, "--module", path)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and str(path) in r.stderr


# ---------------------------------------------------------------------------
# The Python API


def test_api_takes_any_form_of_spec_and_module():
    text = TANH.read_text()
    spec = bpcompile.load_spec(TANH)
    module = bpcompile.compile(spec).load()
    for report in (bpcompile.verify(text), bpcompile.verify(yaml.safe_load(text)),
                   bpcompile.verify(spec, module=module)):
        assert report.ok
        assert {r.name for r in report.rows} == {"L", *spec.wrt}
        row = next(r for r in report.rows if r.name == "W")
        assert (row.shape, row.check) == ((3, 3), "sympy")
        assert 0 <= row.max_abs < 1e-12 and 0 <= row.max_rel < 1e-9


def test_float32_module_is_checked_in_float64_and_in_float32_and_left_as_it_was(tmp_path):
    data = yaml.safe_load(TANH.read_text())
    data["dtype"] = "float32"
    module = bpcompile.compile(data).load()
    report = bpcompile.verify(data, module=module)
    assert report.ok, report.table()
    assert any("float32" in n for n in report.notes)
    rows = by_name(report)
    for name in ("W", "b", "v"):
        assert set(rows[name]) == {"sympy", "sympy/f32", "fd", "fd/f32", "spec"}
        assert rows[name]["sympy"].max_rel < 1e-9      # the float64 run: float64 precision
        assert 1e-9 < rows[name]["sympy/f32"].max_rel < 1e-4   # the float32 run: float32's
    assert rows["L"]["value"].max_rel < 1e-9 and 1e-9 < rows["L"]["value/f32"].max_rel < 1e-4
    assert module.DTYPE is np.float32


# ---------------------------------------------------------------------------
# The small instance


def test_shrink_keeps_equal_dimensions_equal():
    data = yaml.safe_load((ROOT / "examples" / "mlp_classifier.yaml").read_text())
    small = _shrink(data)
    assert small["inputs"] == {"x": [3], "label": {"classes": 3}}
    assert [layer["dense"] for layer in small["layers"]] == [3, 3]
    assert data["inputs"]["x"] == [8]   # the original is left alone
    report = bpcompile.verify(data)
    rows = by_name(report)
    assert rows["W2"]["sympy"].shape == (3, 3) and rows["W2"]["fd"].shape == (4, 16)


def test_spec_that_does_not_shrink_is_expanded_at_its_own_sizes():
    text = "name: pick\ninputs: {x: [5]}\nparams: {v: [5]}\nloss: tanh(v * x)[4]\n"
    rows = by_name(bpcompile.verify(text))
    assert rows["v"]["sympy"].shape == (5,) and rows["v"]["sympy"].ok


def test_sympy_expansion_has_a_time_budget(monkeypatch):
    """A loss SymPy is slow to differentiate (deep nesting) skips the SymPy check
    with a note once over budget; finite differences still decide."""
    import bpcompile.tools.verify as v
    inner = "f"
    for _ in range(30):
        inner = f"tanh({inner})"
    spec = bpcompile.parse_spec(f"""
name: deep_tanh
inputs: {{x: [3], y: []}}
params: {{W: [3, 3], v: [3]}}
graph:
  f: v * (W @ x)
  g: sum({inner})
loss: (y - g)**2
""")
    monkeypatch.setattr(v, "SYMPY_SECONDS", 0.001)
    report = v.verify(spec)
    assert report.ok
    assert any("took more than" in note for note in report.notes), report.notes
    checks = {r.check for r in report.rows}
    assert "fd" in checks and "sympy" not in checks
