"""Bad input gets one clear line naming the file, key or line, and the problem;
exit code 2; no traceback; nothing written."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest



GOOD = """\
name: m
inputs:
  x: [3]
  y: []
  c: {classes: 3}
params:
  W: [2, 3]
  v: [2]
graph:
  h: tanh(W @ x)
  g: v @ h
loss: (y - g)**2
"""

CASES = {
    # label: (spec text, words the message must contain)
    "unknown function": (GOOD.replace("tanh(W @ x)", "tanhh(W @ x)"), ["graph.h", "tanhh", "tanh"]),
    "unknown name": (GOOD.replace("v @ h", "v @ hh"), ["graph.g", "'hh'"]),
    "shape mismatch": (GOOD.replace("W: [2, 3]", "W: [2, 4]"), ["graph.h", "W", "[2, 4]", "[3]"]),
    "loss not scalar": (GOOD.replace("loss: (y - g)**2", "loss: h"), ["loss", "scalar", "[2]"]),
    "use before definition": (GOOD.replace("h: tanh(W @ x)", "h: tanh(W @ x) + g"), ["graph.h", "'g'"]),
    "cycle": (GOOD.replace("h: tanh(W @ x)", "h: tanh(W @ x) + h"), ["graph.h", "'h'", "cycle"]),
    "python keyword": (GOOD.replace("  h:", "  lambda:").replace("v @ h", "v @ lambda"), ["lambda", "keyword"]),
    "c keyword": (GOOD.replace("  h:", "  float:").replace("v @ h", "v @ float"), ["float", "keyword"]),
    "cuda keyword": (GOOD.replace("  h:", "  __global__:").replace("v @ h", "v @ __global__"),
                     ["__global__"]),
    "generated name": (GOOD.replace("g:", "N:").replace("(y - g)", "(y - N)"), ["'N'", "generated"]),
    "bar name": (GOOD.replace("g:", "g_bar:").replace("(y - g)", "(y - g_bar)"), ["g_bar"]),
    "wrt an integer label": (GOOD + "wrt: [W, c]\n", ["wrt", "'c'", "label"]),
    "wrt unknown": (GOOD + "wrt: [Q]\n", ["wrt", "'Q'"]),
    "yaml syntax": (GOOD.replace("  x: [3]", "  x: [3"), ["bad.yaml:4:", "YAML"]),
    "expression syntax": (GOOD.replace("v @ h", "v @@ h"), ["graph.g", "syntax"]),
    "forbidden syntax": (GOOD.replace("v @ h", "__import__('os')"), ["graph.g"]),
    "lambda expression": (GOOD.replace("v @ h", "'(lambda q: q)(h)'"), ["graph.g"]),
    "attribute": (GOOD.replace("v @ h", "h.sum()"), ["graph.g"]),
    "empty file": ("", ["empty"]),
    "missing key": (GOOD.replace("loss: (y - g)**2\n", ""), ["loss", "missing"]),
    "unknown key": (GOOD + "los: 1\n", ["los", "loss"]),
    "duplicate key": (GOOD.replace("  v: [2]", "  v: [2]\n  v: [2]"), ["'v'", "duplicate"]),
    "bad shape": (GOOD.replace("W: [2, 3]", "W: [2, -3]"), ["params.W"]),
    "bad init": (GOOD.replace("v: [2]", "v: {shape: [2], init: gaussian}"), ["params.v", "gaussian"]),
    "bad dtype": (GOOD + "dtype: float16\n", ["dtype", "float16"]),
    "bad reduction": (GOOD + "reduction: max\n", ["reduction", "max"]),
    "not a mapping": ("- 1\n- 2\n", ["mapping"]),
    "bad name": (GOOD.replace("name: m", "name: 3m"), ["name"]),
    "module name": (GOOD.replace("name: m", "name: pickle"), ["name", "pickle", "shadow"]),
    "package name": (GOOD.replace("name: m", "name: torch"), ["name", "torch", "shadow"]),
    "index out of range": (GOOD.replace("v @ h", "h[5]"), ["graph.g", "5"]),
    "label used as float": (GOOD.replace("v @ h", "v @ h + c"), ["graph.g", "'c'", "label"]),
    "output unknown": (GOOD + "output: zz\n", ["output", "zz"]),
    "infinite constant": (GOOD.replace("v @ h", "v @ h + 1e999"), ["graph.g", "finite"]),
    "division by zero": (GOOD.replace("v @ h", "v @ h / 0"), ["graph.g", "division by zero"]),
    "log of zero": (GOOD.replace("v @ h", "v @ h + log(0)"), ["graph.g", "undefined"]),
    "bad layers": ("name: m\ninputs: {x: [3], y: []}\nlayers: [{dense: 0}]\nloss: sum(z1)\n",
                   ["layers"]),
    "conv layer on a vector": ("name: m\ninputs: {x: [3], c: {classes: 2}}\nlayers:\n  - {conv2d: 4, kernel: 3}\n"
                               "loss: sum(z1)\n", ["bad.yaml:4: layers[0]", "conv2d needs a [C, H, W] input"]),
    "dense layer on an image": ("name: m\ninputs: {x: [1, 6, 6], c: {classes: 2}}\nlayers:\n  - {max_pool2d: 2}\n"
                                "  - {dense: 3}\nloss: sum(z2)\n", ["bad.yaml:5: layers[1]", "{flatten: true}"]),
}


def run(*args, cwd):
    """The real command, in a fresh process: exit code, stdout, stderr as a user sees them."""
    return subprocess.run([sys.executable, "-m", "bpcompile", *args], cwd=cwd,
                          capture_output=True, text=True)


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run_here(*args, cwd, capsys, monkeypatch):
    """The same command in this process (much faster than a fresh interpreter per case)."""
    from bpcompile.cli import main
    monkeypatch.chdir(cwd)
    try:
        code = main(list(args))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return Result(code, out, err)


@pytest.mark.parametrize("label", list(CASES))
def test_bad_spec_is_one_clear_line(label, tmp_path, capsys, monkeypatch):
    text, words = CASES[label]
    spec = tmp_path / "bad.yaml"
    spec.write_text(text)
    out = tmp_path / "out"
    r = run_here("compile", "bad.yaml", "-o", "out", cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert r.returncode == 2, (label, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2, r.stderr
    assert "bad.yaml" in lines[0]
    for w in words:
        assert w in r.stderr, (label, w, r.stderr)
    assert not out.exists() or not any(out.iterdir())
    assert r.stdout == ""


def test_one_bad_spec_means_nothing_is_written(tmp_path):
    (tmp_path / "good.yaml").write_text(GOOD)
    (tmp_path / "bad.yaml").write_text(GOOD.replace("tanh(", "tanhh("))
    r = run("compile", "good.yaml", "bad.yaml", "-o", "out", cwd=tmp_path)
    assert r.returncode == 2
    assert not (tmp_path / "out").exists()


def test_missing_file_and_usage_errors(tmp_path):
    r = run("compile", "nope.yaml", cwd=tmp_path)
    assert r.returncode == 2 and "nope.yaml" in r.stderr and "Traceback" not in r.stderr
    r = run("compile", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = run("frobnicate", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_yaml_error_names_the_line(tmp_path):
    (tmp_path / "bad.yaml").write_text(GOOD.replace("  v: [2]", "  v: [2"))
    r = run("compile", "bad.yaml", cwd=tmp_path)
    assert r.returncode == 2
    assert re.search(r"bad\.yaml:9: ", r.stderr), r.stderr


def test_good_spec_compiles(tmp_path):
    (tmp_path / "good.yaml").write_text(GOOD)
    r = run("compile", "good.yaml", "-o", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "m.py").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["m.py"]  # no temporary left


def test_spec_is_never_evaluated(tmp_path):
    """An expression that would have a side effect if evaluated is rejected, and the side
    effect does not happen."""
    marker = tmp_path / "pwned"
    text = GOOD.replace("v @ h", f"open({str(marker)!r}, 'w')")
    (tmp_path / "bad.yaml").write_text(text)
    r = run("compile", "bad.yaml", cwd=tmp_path)
    assert r.returncode == 2 and not marker.exists()


@pytest.mark.parametrize("label", ["shape mismatch", "yaml syntax", "empty file", "python keyword"])
def test_bad_spec_in_a_fresh_process(label, tmp_path):
    text, words = CASES[label]
    (tmp_path / "bad.yaml").write_text(text)
    r = run("compile", "bad.yaml", "-o", "out", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "bad.yaml" in r.stderr
    assert not (tmp_path / "out").exists()
