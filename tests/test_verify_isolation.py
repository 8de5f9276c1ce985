"""``bpcompile verify`` runs the module under test in a child process and decides
from the numbers it sends back: a module that exits, hangs, crashes, prints,
reads stdin or patches the verifier cannot change the verdict; nothing is left
in the temp dir; a float32 module is checked in float32 too."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import yaml

import bpcompile
from conftest import ROOT
from test_verify import TANH, before_return, by_name, edited_module, negate_assignment

import bpcompile.tools.verify as verify_module  # noqa: E402


def run_cli(*args, env=None, stdin=subprocess.DEVNULL, timeout=120):
    return subprocess.run([sys.executable, "-m", "bpcompile", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, check=False,
                          env=env, stdin=stdin, timeout=timeout)


def module_with(tmp_path, prelude="", edit=None, spec=TANH, name="module.py"):
    """The spec's generated module with ``prelude`` run first at import (after
    its own imports) and ``edit`` (see test_verify) applied to value_and_grad."""
    source = edited_module(tmp_path, edit, spec).read_text() if edit else bpcompile.compile(spec).source
    anchor = "\nimport numpy as np\n"
    assert anchor in source
    source = source.replace(anchor, anchor + prelude + "\n", 1)
    path = tmp_path / name
    path.write_text(source)
    return path


def failure_lines(stdout):
    return [line for line in stdout.splitlines() if re.search(r"\sFAIL\b", line)]


# ---------------------------------------------------------------------------
# The module cannot end, hang or steer the verifier


def test_module_that_exits_at_import_fails_on_one_line(tmp_path):
    """In the verifier's own process this made ``bpcompile verify`` exit 0."""
    path = module_with(tmp_path, "import sys\nsys.exit(0)")
    r = run_cli("verify", TANH, "--module", path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    fails = failure_lines(r.stdout)
    assert len(fails) == 1 and "exited with code 0 before it answered" in fails[0], r.stdout
    assert r.stdout.splitlines()[-1] == "FAILED: module (run)"


@pytest.mark.parametrize("how", ["os._exit(0)", "raise SystemExit(0)", "os._exit(3)"])
def test_module_that_exits_at_import_in_other_ways_fails(tmp_path, how):
    path = module_with(tmp_path, f"import os\n{how}")
    report = bpcompile.verify(TANH, module=path)
    assert [(r.name, r.check, r.ok) for r in report.rows] == [("module", "run", False)]
    assert "before it answered" in report.rows[0].note


def test_module_that_exits_during_a_call_fails(tmp_path):
    path = module_with(tmp_path, edit=before_return("import sys; sys.exit(0)"))
    report = bpcompile.verify(TANH, module=path)
    assert not report.ok
    assert [(r.name, r.check) for r in report.rows] == [("module", "run")]


def test_module_that_patches_the_verifier_has_no_effect(tmp_path):
    """In the verifier's own process this made a wrong gradient pass (exit 0)."""
    patch = """
import bpcompile.tools.verify as _v
_v.Report.ok = property(lambda self: True)
_v.Report.table = lambda self: "ok: every check passed"
_v.TOLERANCE.update({k: (1e300, 1.0) for k in _v.TOLERANCE})
"""
    path = module_with(tmp_path, patch, negate_assignment("W_bar"))
    r = run_cli("verify", TANH, "--module", path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1].startswith("FAILED: W (fd), W (spec), W (sympy)")


def test_module_that_sleeps_forever_times_out(tmp_path):
    path = module_with(tmp_path, "import time\ntime.sleep(10_000)")
    started = time.monotonic()
    report = bpcompile.verify(TANH, module=path, timeout=3)
    assert time.monotonic() - started < 3 + 15
    assert not report.ok
    (row,) = report.rows
    assert (row.name, row.check) == ("module", "run")
    assert "did not answer within 3 s" in row.note and "killed" in row.note


def test_the_default_path_runs_in_a_child_process_too():
    """The freshly compiled module goes through the same child: with no time
    to answer, it cannot."""
    report = bpcompile.verify(TANH, timeout=0.001)
    assert [(r.name, r.check, r.ok) for r in report.rows] == [("module", "run", False)]
    assert "did not answer" in report.rows[0].note


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_a_timeout_kills_what_the_module_started(tmp_path):
    pidfile = tmp_path / "pid"
    prelude = f"""
import subprocess, time
_p = subprocess.Popen(["sleep", "10000"])
open({str(pidfile)!r}, "w").write(str(_p.pid))
time.sleep(10_000)
"""
    path = module_with(tmp_path, prelude)
    report = bpcompile.verify(TANH, module=path, timeout=5)
    assert not report.ok and report.rows[0].check == "run"
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            break
        if state in ("Z", "X"):   # dead; its new parent has not reaped it yet
            break
        time.sleep(0.1)
    else:
        os.kill(pid, 9)
        pytest.fail(f"the module's own child {pid} outlived the timeout")


@pytest.mark.parametrize("crash, signal", [("os.abort()", "SIGABRT"), ("os.kill(os.getpid(), 9)", "SIGKILL")])
def test_module_that_crashes_fails(tmp_path, crash, signal):
    path = module_with(tmp_path, edit=before_return(f"import os; {crash}"))
    report = bpcompile.verify(TANH, module=path)
    assert [(r.name, r.check, r.ok) for r in report.rows] == [("module", "run", False)]
    assert f"was killed by {signal} before it answered" in report.rows[0].note


def test_module_that_forges_the_answer_fails(tmp_path):
    """Whatever the module writes where the driver answers is read as data, and checked."""
    forge = ("import os, json; json.dump({'imports': {}, 'calls': []}, open('out.json', 'w')); "
             "os._exit(0)")
    path = module_with(tmp_path, edit=before_return(forge))
    report = bpcompile.verify(TANH, module=path)
    assert not report.ok
    assert [(r.name, r.check) for r in report.rows] == [("module", "run")]
    assert "malformed" in report.rows[0].note


def test_printing_and_reading_stdin_do_not_confuse_it(tmp_path):
    prelude = """
import sys
print("ok: every check passed")
print("W  [3, 3]  sympy  9.99e+99  9.99e+99  ok", file=sys.stderr)
sys.stdin.read()
"""
    good = module_with(tmp_path, prelude, name="good.py")
    # stdin left open: a child reading the verifier's stdin would wait forever
    r = run_cli("verify", TANH, "--module", good, stdin=subprocess.PIPE, timeout=100)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("ok: every check passed") == 1 and "9.99e+99" not in r.stdout
    wrong = module_with(tmp_path, prelude, negate_assignment("W_bar"), name="wrong.py")
    rows = by_name(bpcompile.verify(TANH, module=wrong))
    assert not rows["W"]["sympy"].ok and not rows["W"]["fd"].ok


def test_module_that_writes_a_marker_gets_the_right_verdict(tmp_path):
    """The module is the user's own code: it runs (the marker may be written),
    but what it does besides computing does not change the verdict."""
    marker = tmp_path / "marker"
    prelude = f"open({str(marker)!r}, 'a').write('imported\\n')"
    good = module_with(tmp_path, prelude, name="good.py")
    assert bpcompile.verify(TANH, module=good).ok
    assert marker.is_file()
    wrong = module_with(tmp_path, prelude, before_return("W_bar[0, 0] += 1e-3"), name="wrong.py")
    rows = by_name(bpcompile.verify(TANH, module=wrong))
    assert not rows["W"]["sympy"].ok and not rows["W"]["fd"].ok
    assert all(r.ok for name in ("b", "v", "L") for r in rows[name].values())


def test_module_file_is_left_as_it_was(tmp_path):
    path = bpcompile.compile(TANH).write(tmp_path / "out")
    before = sorted(p.name for p in path.parent.iterdir())
    assert bpcompile.verify(TANH, module=path).ok
    assert sorted(p.name for p in path.parent.iterdir()) == before   # no __pycache__


# ---------------------------------------------------------------------------
# Nothing left in the temp dir


def test_nothing_is_left_in_the_temp_dir(tmp_path, monkeypatch):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    hang = module_with(tmp_path, "import time\ntime.sleep(10_000)", name="hang.py")
    assert bpcompile.verify(ROOT / "examples" / "mlp_classifier.yaml").ok   # two modules: shrunk
    assert not bpcompile.verify(TANH, module=hang, timeout=2).ok
    assert list(tmp.iterdir()) == []
    good = bpcompile.compile(TANH).write(tmp_path / "out")
    r = run_cli("verify", TANH, "--module", good, env={**os.environ, "TMPDIR": str(tmp)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert list(tmp.iterdir()) == []


# ---------------------------------------------------------------------------
# float32 modules run in float32


def float32_tanh():
    data = yaml.safe_load(TANH.read_text())
    data["dtype"] = "float32"
    return data


def test_float32_module_is_called_with_float32_arrays(tmp_path):
    log = tmp_path / "dtypes"
    spec = float32_tanh()
    record = f"open({str(log)!r}, 'a').write(f\"{{np.dtype(DTYPE).name}} {{params['W'].dtype}} {{x.dtype}}\\n\")"
    after_docstring = re.compile(r'^(    """[^\n]*"""\n)', re.MULTILINE)
    path = edited_module(tmp_path, lambda body: after_docstring.sub(lambda m: m[1] + "    " + record + "\n",
                                                                    body, count=1), spec)
    report = bpcompile.verify(spec, module=path)
    assert report.ok, report.table()
    seen = set(log.read_text().splitlines())
    assert seen == {"float64 float64 float64", "float32 float32 float32"}


@pytest.mark.parametrize("defect", ["overflow", "cancellation"])
def test_broken_float32_path_is_caught(tmp_path, defect):
    """Exact enough in float64 (the old verify passed these), wrong in float32."""
    edit = {
        # an intermediate scaled up and back down: inf in float32 (max 3.4e38)
        "overflow": before_return("W_bar = W_bar * DTYPE(1e20) * DTYPE(1e20) / DTYPE(1e20) / DTYPE(1e20)"),
        # a large offset added and taken away: float32 keeps ~3 of the gradient's digits
        "cancellation": before_return("b_bar = (b_bar + DTYPE(3e4)) - DTYPE(3e4)"),
    }[defect]
    spec = float32_tanh()
    path = edited_module(tmp_path, edit, spec)
    report = bpcompile.verify(spec, module=path)
    rows = by_name(report)
    name = "W" if defect == "overflow" else "b"
    assert not report.ok
    assert not rows[name]["sympy/f32"].ok and not rows[name]["fd/f32"].ok, report.table()
    # the float64 run is right: only the float32 checks see it
    assert all(r.ok for nm in rows for check, r in rows[nm].items() if not check.endswith("/f32"))
    assert report.table().splitlines()[-1] == f"FAILED: {name} (fd/f32), {name} (sympy/f32)"


def test_float32_example_checks_both_precisions():
    report = bpcompile.verify(ROOT / "examples" / "digits_mlp_f32.yaml")
    assert report.ok, report.table()
    rows = by_name(report)
    for name in ("W1", "b1", "W2", "b2"):
        assert rows[name]["fd"].max_rel < 1e-6
        assert 0 < rows[name]["fd/f32"].max_rel < verify_module.TOLERANCE["fd/f32"][0]
    # the float32 run is really float32: its errors are float32's, not float64's
    assert max(rows[nm]["sympy/f32"].max_rel for nm in ("W1", "b1", "W2", "b2")) > 1e-8
    assert np.isfinite(rows["L"]["value/f32"].max_abs)
