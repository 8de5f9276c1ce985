"""CI's slice of the hostile-input fuzz (issue 10).

The issue's attacks (``hostile_specs.CURATED``) and a couple of hundred cases of
the deterministic hostile stream run through compile (numpy, cuda), inspect
(text, latex, json), graph and verify, in forked workers with a memory limit and a
timeout per command; every generated module is imported in a fresh subprocess.
Each case must end in exit 0 with modules that import and run no spec-supplied
code, or in exit 2 with one ``error:`` line and nothing written: never a
traceback, an internal compiler error, a timeout or a dead worker.  About two
minutes on 2 cores.

The full run (>= 10,000 cases, about 45 minutes on 2 cores):

    python scripts/fuzz_specs.py --hostile 10000 --repros /tmp/hostile_repros

and one case again: ``python scripts/fuzz_specs.py --cases 123``.
"""

from __future__ import annotations

import os
import shutil

import pytest

import hostile_specs as hs

SLICE_RANDOM = 200          # cases of the random stream after the curated ones


def test_generator_is_deterministic_and_varied():
    a = hs.hostile_cases(300)
    b = hs.hostile_cases(300)
    assert [c.key() for c in a] == [c.key() for c in b]
    assert len({c.key() for c in a}) >= 290
    assert [c.family for c in a[:len(hs.CURATED)]] == [f for f, *_ in hs.CURATED]
    # every field and trick is reached
    families = " ".join(c.family for c in hs.hostile_cases(1000, seed=1))
    for site in ("name:", "rename_inputs:", "rename_params:", "rename_graph:", "shape:", "init:", "expr:",
                 "loss:", "wrt:", "output:", "dtype:", "reduction:", "layers:", "description:", "key_",
                 "yaml_comment:", "alias_bomb", "tag:", "dup_key", "nonstr_key", "deep_yaml", "encoding:",
                 "filename", "dirname", "outdir", "as_json"):
        assert site in families, site


def test_checks_catch_what_they_should():
    assert hs.bad_char("ok\tfine\n") is None
    for ch in ("\x1b", "\r", "\x00", "\u202e", "\u2066", "\u2028", "\x9b", "\ufeff"):
        assert hs.bad_char(f"a{ch}b"), repr(ch)
    assert hs.check_cu("// fine: system(\"touch PWNED\")\nint x;\n") == []
    assert [k for k, _ in hs.check_cu("// x\nstatic int p = system(\"touch PWNED\");\n")] == ["cuda_injection"]
    assert "cuda_line_splice" in [k for k, _ in hs.check_cu("// a comment \\\nlaunch();\n")]
    assert "cuda_control_char" in [k for k, _ in hs.check_cu("// a\rb\n")]
    assert hs._LATEX_DANGER.search("a \\input{x}") and hs._LATEX_DANGER.search("\\\\\\input{x}")
    assert not hs._LATEX_DANGER.search("\\textbackslash{}input") and not hs._LATEX_DANGER.search("\\\\input")


@pytest.mark.skipif(shutil.which("g++") is None, reason="the .cu syntax check needs g++")
def test_hostile_slice():
    indices = list(range(len(hs.CURATED) + SLICE_RANDOM))
    summary = hs.run_cases(indices, seed=0, opts=hs.Options(timeout=20, verify_every=10, gxx_every=5),
                           workers=min(2, os.cpu_count() or 2))
    text = hs.report(summary, seed=0, examples=3)
    print(text)
    assert len(summary.results) == len(indices)
    assert not summary.failing_cases, text
