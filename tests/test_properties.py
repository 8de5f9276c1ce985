"""Property-based checks of the compiler itself: every random well-formed spec
compiles and passes verify; every malformed one gets exit code 2 and one clear
line, never a traceback.  scripts/fuzz_specs.py runs many more cases."""

from __future__ import annotations

import contextlib
import io

from hypothesis import HealthCheck, given, settings

import bpcompile
from bpcompile.cli import main
from spec_strategies import malformed, specs, to_yaml

SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@settings(max_examples=25, **SETTINGS)
@given(specs())
def test_random_specs_compile_and_verify(spec):
    report = bpcompile.verify(spec)
    assert report.ok, (to_yaml(spec), report.table())


def run_cli(tmp, text):
    path = tmp / "spec.yaml"
    path.write_text(text)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(["compile", str(path), "-o", str(tmp / "out")])
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


@settings(max_examples=60, **SETTINGS)
@given(malformed())
def test_malformed_specs_get_one_clear_line(tmp_path_factory, case):
    label, text = case
    tmp = tmp_path_factory.mktemp("bad")
    code, err = run_cli(tmp, text)   # any exception other than SystemExit fails the test
    if code == 0:
        # a mutation can leave the spec well-formed (junk text that is valid YAML never is)
        assert label != "junk" and (tmp / "out").exists()
        return
    assert code == 2, (label, text, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "spec.yaml" in lines[0], (label, err)
    assert not (tmp / "out").exists()
