"""Output is safe: escaping per output language, the terminal, files written whole.

The escaping functions are total (any string in, nothing out that ends the
construct it sits in); the command line prints nothing from a spec raw; an
unwritable or file-valued ``-o`` is the user's error; generated files are
ordinary files (the umask's mode), renamed into place, entry points last.
"""

from __future__ import annotations

import ast
import glob
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bpcompile import compile as bp_compile
from conftest import SMALL_SPEC
from bpcompile import escape
from bpcompile.cli import main
from bpcompile.errors import SpecError

HOSTILE = [
    '"""', "'''", '"', "'", "\\", "\\\\", "x\\", "\\N{BULLET}", "\\x41", "\\u0041", "\n", "\r", "\r\n",
    "\t", "\x00", "\x1b[2J\x1b[31m", "\x07", "\x7f", "\x85", "\u2028", "\u2029", "\u202e", "\u2066",
    "\u200b", "\ufeff", "é", "∂L/∂x", "\U0001F600", "*/", "/*", "//", "??/", "?\\", "#", "%", "$",
    "\\input{/etc/passwd}", "{", "}", "^", "_", "~", "&", "<", ">", "|",
    '"""+str(__import__("os").system("touch PWNED"))+"""',
    "\\\n#include </dev/zero>", "\n#define x y\n", "x\\\nint main(){}",
]
SAMPLES = HOSTILE + [a + b for a in HOSTILE[:20] for b in HOSTILE[:20]]


def test_python_docstring_round_trips():
    for text in SAMPLES:
        _test_python_docstring_round_trips(text)


def _test_python_docstring_round_trips(text):
    src = f'"""{escape.py_docstring(text)}"""\n'
    tree = ast.parse(src)
    assert len(tree.body) == 1
    assert ast.get_docstring(tree, clean=False) == text
    assert src.isascii()


def test_python_string_and_comment():
    for text in SAMPLES:
        _test_python_string_and_comment(text)


def _test_python_string_and_comment(text):
    assert ast.literal_eval(escape.py_str(text)) == text
    line = f"x = 1  # {escape.py_comment(text)}\ny = 2\n"
    tree = ast.parse(line)
    assert [type(s) for s in tree.body] == [ast.Assign, ast.Assign]
    assert len(line.splitlines()) == 2 and line.isascii()


def test_c_comment_is_one_line_and_splices_nothing():
    for text in SAMPLES:
        _test_c_comment_is_one_line_and_splices_nothing(text)


def _test_c_comment_is_one_line_and_splices_nothing(text):
    c = escape.c_comment(text)
    assert c.isascii() and c.isprintable()
    assert not c.rstrip().endswith("\\")
    assert "??" not in c.replace("? ?", "")   # no trigraph can form
    assert "\n" not in c and "\r" not in c


def test_c_string_round_trips():
    for text in SAMPLES:
        _test_c_string_round_trips(text)


def _test_c_string_round_trips(text):
    lit = escape.c_str(text)
    assert lit.isascii() and lit.isprintable() and "??" not in lit
    # decode the C literal (octal and simple escapes only)
    body, out, i = lit[1:-1], bytearray(), 0
    while i < len(body):
        if body[i] == "\\":
            if body[i + 1] in "01234567":
                out.append(int(body[i + 1:i + 4], 8))
                i += 4
            else:
                out += body[i + 1].encode()
                i += 2
        else:
            out += body[i].encode()
            i += 1
    assert out.decode("utf-8") == text


def test_latex_text_has_no_commands_of_its_own():
    for text in SAMPLES:
        _test_latex_text_has_no_commands_of_its_own(text)


def _test_latex_text_has_no_commands_of_its_own(text):
    t = escape.latex_text(text)
    assert t.isascii() and "\n" not in t
    # every backslash starts one of the escapes latex_text writes
    allowed = ("\\textbackslash{}", "\\{", "\\}", "\\$", "\\&", "\\#", "\\textasciicircum{}", "\\_",
               "\\%", "\\textasciitilde{}", "\\textless{}", "\\textgreater{}", "\\textbar{}",
               "\\textquotedbl{}")
    rest = t
    for a in allowed:
        rest = rest.replace(a, "")
    assert "\\" not in rest and "{" not in rest and "}" not in rest and "%" not in rest


def test_terminal_and_dot():
    for text in SAMPLES:
        _test_terminal_and_dot(text)


def _test_terminal_and_dot(text):
    t = escape.terminal(text)
    assert "\x1b" not in t and "\n" not in t and "\r" not in t
    assert escape.forbidden_char(t) is None
    d = escape.dot_str(text)
    assert d.startswith('"') and d.endswith('"') and d.isascii() and "\n" not in d
    inner = d[1:-1].replace('\\\\', "").replace('\\"', "")
    assert '"' not in inner


def test_forbidden_char_finds_controls_and_bidi():
    assert escape.forbidden_char("a\nb\tc é ∂") is None
    for bad in ("\x00", "\x1b", "\r", "\u202e", "\u2066", "\u200b", "\u2028", "\x85"):
        i, ch = escape.forbidden_char("ok" + bad)
        assert (i, ch) == (2, bad)
        assert escape.char_name(ch).startswith("U+")


def test_spec_error_is_one_safe_line():
    e = SpecError("bad\x1b[2J\nthing \u202e", file="a\nb\u202e.yaml", key="graph.h", line=3)
    s = str(e)
    assert "\n" not in s and "\x1b" not in s and "\u202e" not in s
    assert s.startswith("a b\\u202e.yaml:3: graph.h: bad\\x1b[2J thing")


GOOD = SMALL_SPEC


def _run(args, cwd):
    return subprocess.run([sys.executable, "-m", "bpcompile", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_output_directory_that_is_a_file_or_under_one(tmp_path):
    spec = tmp_path / "m.yaml"
    spec.write_text(GOOD)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker, blocker / "sub"):
        r = _run(["compile", str(spec), "-o", str(out)], tmp_path)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
        assert "internal compiler error" not in r.stderr and "Traceback" not in r.stderr
    assert blocker.read_text() == "x"


def test_unwritable_output_directory_is_a_user_error(tmp_path, monkeypatch, capsys):
    spec = tmp_path / "m.yaml"
    spec.write_text(GOOD)
    out = tmp_path / "out"
    out.mkdir()

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied", str(out / "m.py"))
    monkeypatch.setattr("bpcompile.compiler.write_atomic", refuse)
    assert main(["compile", str(spec), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Permission denied" in err and "bug" not in err


def test_stderr_and_stdout_carry_no_escape_sequences(tmp_path, capsys):
    spec = tmp_path / "m\x1b[2J\u202e.yaml"
    spec.write_text(GOOD.replace("v @ h", "v @ hh"))
    assert main(["compile", str(spec), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\u202e" not in err and err.count("\n") == 1
    spec.write_text(GOOD)
    assert main(["compile", str(spec), "-o", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out and "\\x1b" in out


def test_generated_files_have_the_umask_mode_and_no_leftovers(tmp_path):
    c = bp_compile(GOOD)
    old = os.umask(0o022)
    try:
        path = c.write(tmp_path)
    finally:
        os.umask(old)
    mode = path.stat().st_mode & 0o777
    assert mode == 0o666 & ~old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.py"]   # no temporaries left behind


def test_cuda_pair_is_written_source_first_then_loader(tmp_path, monkeypatch):
    c = bp_compile(GOOD, target="cuda")
    order = []
    import bpcompile.compiler as compiler
    real = compiler.write_atomic
    monkeypatch.setattr(compiler, "write_atomic", lambda p, t: (order.append(p.name), real(p, t)))
    c.write(tmp_path)
    assert order[-1] == "m_cuda.py" and "m.cu" in order
    assert order.index("m.cu") < order.index("m_cuda.py")


def test_load_leaves_no_temporary_directory():
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "bpcompile_*")))
    m = bp_compile(GOOD).load()
    assert m.NAME == "m"
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "bpcompile_*"))) == before


def test_a_write_interrupted_midway_leaves_the_old_file(tmp_path, monkeypatch):
    c = bp_compile(GOOD)
    path = c.write(tmp_path)
    old = path.read_text()
    import bpcompile.compiler as compiler

    def boom(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(compiler.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        bp_compile(GOOD.replace("tanh", "sigmoid")).write(tmp_path)
    assert path.read_text() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.py"]
    assert Path(path).stat().st_size > 0
