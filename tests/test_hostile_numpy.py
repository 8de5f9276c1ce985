"""Spec text is data in the generated NumPy module: hostile text in the spec, its
file path and its expressions never runs, never breaks the module, and reaches
the module's docstring verbatim (issue 10).

The spec reader refuses control and bidi characters, but the printer must be safe
on its own: most tests here set a Spec's ``text``, ``file`` and expression texts
directly, past the reader.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
import textwrap
import tokenize
from io import StringIO

import pytest

import bpcompile
from bpcompile.targets.numpy import printer as codegen_numpy
from bpcompile.ir.equations import Namer, docstring_lines

BASE = """\
name: hostile
inputs:
  x: [3]
  label: {classes: 3}
params:
  W: [3, 3]
  b: {shape: [3], init: zeros}
graph:
  z: W @ x + b
  h: tanh(z)
loss: softmax_cross_entropy(h, label)
"""

MARKER = "pwned_marker"   # a file the payloads try to create in the working directory
PAYLOAD = f'"""+str(__import__("os").system("touch {MARKER}"))+"""'

HOSTILE = {
    "triple_quotes": PAYLOAD,
    "single_triple_quotes": f"'''+str(__import__('os').system('touch {MARKER}'))+'''",
    "quote_at_end": 'ends in a quote"',
    "quotes_at_end": 'ends in quotes""',
    "backslash_at_end": "ends in a backslash\\",
    "backslashes": "C:\\new\\table \\\\ \\",
    "named_escape": "\\N{BULLET} and \\N",
    "hex_escape": "\\x41 \\x and \\u12 \\U0001",
    "newline_payload": f'x"""\nimport os; os.system("touch {MARKER}")\n"""',
    "newline_code": f"\nimport os; os.system('touch {MARKER}')\n",
    "cr": f"carriage\rreturn\r\nimport os; os.system('touch {MARKER}')",
    "controls": "nul\x00 bell\x07 esc\x1b[31m red del\x7f c1\x85 vt\x0b ff\x0c",
    "non_ascii": "caf\u00e9 \u03b1\u03b2 \u4e2d\u6587 \U0001f600",
    "bidi": "admin\u202e \u2066isolate\u2069 \u200bzero width \ufeffbom",
    "separators": "line\u2028sep para\u2029sep",
    "surrogate": "lone \ud800 surrogate",
    "comment_then_code": f"# \n{PAYLOAD}",
    "fstring_like": "{__import__('os').system('touch pwned_marker')} %s %(x)s",
    "jinja_like": "{{ 7*7 }} {% raw %} {# c #}",
}


def hostile_spec(h: str):
    """The base spec with ``h`` in its text, its file path and every expression's text
    (after the expression, as a comment would be: the parsed trees are untouched)."""
    spec = bpcompile.parse_spec(BASE)
    spec.text = f"# {h}\n{BASE}# {h}\n{h}"
    spec.file = f"specs/{h}/{h}.yaml"
    spec.graph = [(nm, dataclasses.replace(e, text=f"{e.text}  # {h}")) for nm, e in spec.graph]
    spec.loss = dataclasses.replace(spec.loss, text=f"{spec.loss.text}  # {h}")
    return spec


def intended_docstring(compiled) -> str:
    low, adj = compiled.lowered, compiled.adjoints
    return codegen_numpy.module_docstring(low.spec, bpcompile.__version__,
                                          *docstring_lines(low, adj, Namer(low)))


@pytest.fixture(scope="module")
def hostile_modules(tmp_path_factory):
    """Every hostile case compiled, written, and imported in one child process (in a
    directory of its own, where a payload would leave its marker); returns
    {case: (compiled, what the child saw)}."""
    root = tmp_path_factory.mktemp("hostile")
    compiled = {}
    for case, h in HOSTILE.items():
        c = bpcompile.compile(hostile_spec(h))
        (root / f"mod_{case}.py").write_text(c.source, encoding="utf-8")
        compiled[case] = c
    child = textwrap.dedent("""
        import importlib, json, sys
        import numpy as np
        out = {}
        for case in sys.argv[1:]:
            m = importlib.import_module("mod_" + case)
            params = m.init_params(0)
            x = np.linspace(-1, 1, 12).reshape(4, 3)
            value, grads = m.value_and_grad(params, x=x, label=np.array([0, 1, 2, 1]))
            out[case] = {"doc": m.__doc__, "value": value,
                         "grads": sorted(grads), "names": sorted(k for k in vars(m) if not k.startswith("__"))}
        print(json.dumps(out))
    """)
    run = subprocess.run([sys.executable, "-c", child, *HOSTILE], cwd=root, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert not list(root.glob(f"*{MARKER}*")), "a payload ran on import"
    return {case: (compiled[case], seen[case]) for case in HOSTILE}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_text_compiles_imports_and_runs_nothing(hostile_modules, case):
    compiled, seen = hostile_modules[case]
    compile(compiled.source, f"mod_{case}.py", "exec")   # a SyntaxError would fail here
    assert compiled.source.isascii()
    assert seen["grads"] == ["W", "b"]
    assert seen["value"] > 0
    # the module defines what every module defines, and nothing a payload added
    plain = bpcompile.compile(bpcompile.parse_spec(BASE)).load()
    assert seen["names"] == sorted(k for k in vars(plain) if not k.startswith("__"))


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_text_reaches_the_docstring_verbatim(hostile_modules, case):
    compiled, seen = hostile_modules[case]
    h = HOSTILE[case]
    doc = seen["doc"]
    assert doc == intended_docstring(compiled)
    spec = compiled.spec
    assert f"from {spec.file}." in doc
    assert "\n".join("    " + line if line else "" for line in spec.text.split("\n")) in doc
    assert f"z = W @ x + b  # {h}" in doc
    # the docstring is the module's only string at the top before `import numpy`
    tree = ast.parse(compiled.source)
    assert isinstance(tree.body[0], ast.Expr) and ast.get_docstring(tree, clean=False) == doc
    assert isinstance(tree.body[1], ast.Import)


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_text_stays_inside_comments(hostile_modules, case):
    """Outside the docstring, expression text appears only in comments, each on one line."""
    compiled, _ = hostile_modules[case]
    tokens = list(tokenize.generate_tokens(StringIO(compiled.source).readline))
    strings = [t for t in tokens if t.type == tokenize.STRING]
    comments = [t.string for t in tokens if t.type == tokenize.COMMENT]
    notes = [c for c in comments if c.startswith("# z = ") or c.startswith("# L_n = ")]
    assert notes, "the per-kernel comments name their equations"
    for c in notes:
        assert c.endswith("# " + codegen_numpy.py_comment(HOSTILE[case]))
    # no string literal outside the docstrings carries spec text
    for t in strings[1:]:
        assert HOSTILE[case] not in t.string and MARKER not in t.string and "specs/" not in t.string


def test_the_old_exploit_through_a_spec_file(tmp_path):
    """The report's reproduction: a YAML comment and an expression comment that close
    the docstring, a path with quotes and backslashes; read through load_spec."""
    folder = tmp_path / 'q"""\'\\N{x}\\'
    folder.mkdir()
    path = folder / "evil.yaml"
    path.write_text(f"# {PAYLOAD}\n" + BASE.replace("  h: tanh(z)\n", f"  h: |-\n    tanh(z)  # {PAYLOAD} \\N\n"),
                    encoding="utf-8")
    c = bpcompile.compile(bpcompile.load_spec(path))
    out = tmp_path / "out"
    module = c.write(out)
    run = subprocess.run([sys.executable, "-c", "import hostile, json; print(json.dumps(hostile.__doc__))"],
                         cwd=out, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert not list(tmp_path.rglob(f"*{MARKER}*")) and not (out / MARKER).exists()
    doc = json.loads(run.stdout)
    assert doc == intended_docstring(c)
    assert str(path) in doc and f"# {PAYLOAD}" in doc and f"tanh(z)  # {PAYLOAD} \\N" in doc
    assert module.name == "hostile.py"


# ---------------------------------------------------------------------------
# By construction: the template takes no field that no escaping filter has seen


def test_template_refuses_an_unescaped_field():
    env = codegen_numpy.environment()
    with pytest.raises(TypeError, match="unescaped"):
        env.from_string("x = 1  # {{ note }}\n").render(note="hostile text")
    assert env.from_string("# {{ note | comment }}\n").render(note="a\nb") == "# a b\n"
    assert env.from_string('"""{{ d | docstring }}"""').render(d='"""') == '"""\\"\\"\\""""'
    assert env.from_string("{{ v | literal }}").render(v={"a": (1,), "b": ()}) == "{'a': (1,), 'b': ()}"


def test_literal_escapes_strings_and_refuses_what_has_no_literal():
    assert codegen_numpy.literal('a"\'\n\\') == ascii('a"\'\n\\')
    assert eval(codegen_numpy.literal(("\u202e", 1, 2.5, None, [True]))) == ("\u202e", 1, 2.5, None, [True])
    with pytest.raises(ValueError):
        codegen_numpy.literal(float("inf"))
    with pytest.raises(TypeError):
        codegen_numpy.literal(object())


def test_every_template_field_with_hostile_values():
    """Render the module template with a hostile string in every field that takes text:
    the module compiles, and its docstrings read back exactly."""
    h = PAYLOAD + "\\N\n\r\x00\u202e\\"
    env = codegen_numpy.environment()
    Code = codegen_numpy.Code
    fn = {"name": Code("predict"), "signature": Code("params, *, x, check=True"),
          "check": Code("_check('predict', params, {'x': x})"), "doc": h,
          "prologue": [Code("x = np.asarray(x, DTYPE)")],
          "blocks": [{"header": Code("forward pass"), "notes": [h, h], "lines": [Code("y = x * 2")]}],
          "epilogue": [], "arrays": [], "returns": Code("y")}
    source = env.get_template("module.py.j2").render(
        docstring=h, name="n", dtype=Code("float64"), reduction="mean",
        param_shapes=Code("{}"), input_shapes=Code("{'x': ()}"), label_classes=Code("{}"),
        wrt=Code("()"), trained=Code("()"), init_summary=h, init_lines=[], uses_rng=False,
        functions=[fn], step_signature=Code("*, x, check=True"), check_inputs=Code("{'x': x}"),
        pass_inputs=Code("x=x, check=False"), step_pass_inputs=Code("x=x, check=False"), step_done=Code(""),
        grad_arrays=[], kept_grads=Code("()"), helpers=[])
    namespace = {}
    exec(compile(source, "rendered.py", "exec"), namespace)
    assert namespace["__doc__"] == h
    assert namespace["predict"].__doc__ == h
    assert namespace["init_params"].__doc__ == f"Fresh parameters: {h}."
