"""Hostile model specs (issue 10): a deterministic generator, and the harness that
throws them at the command line.

``hostile_case(i, seed)`` is case ``i`` of the stream for ``seed``: the same
arguments always give the same case.  The first ``len(CURATED)`` indices of every
seed are the attacks listed in issue 10 (so any slice that starts at 0 covers
them); every later index draws a base spec, one to three injection sites (the
spec's name, input/param/node names, shapes, classes, inits, expressions, their
``# comments``, wrt, output, dtype, reduction, layers, description, top-level keys,
YAML comments, the YAML itself) and a payload for each (quotes, triple quotes,
backslashes, ``\\N{...}``, newlines, CR, control characters, ESC sequences, bidi
controls, U+2028, NUL, reserved names of Python/C/C++/CUDA/libc, very long
names, deep nesting, huge numbers, YAML aliases/anchors/tags/merge keys), and a
spec *file path* that may itself be hostile (newlines, quotes, ``\"\"\"``,
backslashes, ``*/``, ``\\input{x}``, spaces, ESC, bidi).

Every payload that could run code tries to create a marker file ``PWNED*`` in
the case's directory (``@M@`` in a payload is that absolute path; payloads in
file names, which cannot hold ``/``, use the relative ``PWNED_fn`` and every
command runs with the case directory as its working directory).

``run_cases(cases, ...)`` runs, per case, in long-lived forked workers (each with
an RLIMIT_AS, a per-command timeout, recycled after some cases, replaced when
one dies or hangs), calling ``bpcompile.cli.main(argv)`` in-process:

    compile SPEC -o DIR                   (numpy)
    compile SPEC --target cuda -o DIR
    compile SPEC --target c -o DIR
    inspect SPEC --format text|latex|json
    graph SPEC -o DIR/g.dot
    verify SPEC                           (a sample of the specs that compile)

and checks what the issue promises: exit 0 with files that import in a fresh
subprocess (several modules per subprocess, each in its own namespace) without
creating a marker, a .cu, .c and .h with no payload outside comments, the .cu passing
``g++ -fsyntax-only`` with the emulation header and the .c ``gcc -std=c99 -fsyntax-only
-Werror`` (a sample), nothing written
outside DIR (nor left in the temp dir); or exit 2 with exactly one ``error:``
line and nothing written.  Never a traceback, an internal compiler error, a
timeout, a dead worker, exit 1 from compile; no raw ESC / bidi / control
characters on the terminal or in generated files; no unescaped ``\\input`` in
LaTeX; valid JSON from ``--format json``.

Used by ``scripts/fuzz_specs.py --hostile N`` (the full run) and
``tests/test_hostile_fuzz.py`` (CI's slice).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import keyword
import os
import random
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
EMULATION_H = ROOT / "bpcompile" / "targets" / "cuda" / "cuda_emulation.h"
MARK = "@M@"           # replaced by the absolute path of the case's marker file
MARKER_PREFIX = "PWNED"

# ---------------------------------------------------------------------------
# Payloads


def _code(m=MARK):
    """Python one-liners that create the marker file ``m``."""
    return [
        f'__import__("os").system("touch {m}")',
        f"open('{m}', 'w')",
        f"exec(\"open('{m}','w')\")",
        f"__import__('pathlib').Path('{m}').touch()",
    ]


@functools.lru_cache(maxsize=None)
def _breakouts(m=MARK):
    out = []
    for code in _code(m):
        out += [
            f'"""+str({code})+"""',
            f"'''+str({code})+'''",
            f'"""\n{code}\n"""',
            f'\n{code}\n',
            f'\r{code}\r',
            f'\\\n{code}',
            f'\u2028{code}',
            f'\x0c\n{code}',
            f'"); {code}; ("',
            f"'); {code}; ('",
            f'{{{{ cycler.__init__.__globals__.os.popen("touch {m}").read() }}}}',
        ]
    out += [
        '\n#include "/dev/zero"\n',
        '\r#include "/dev/zero"\r',
        '\\\n#include "/dev/zero"',
        f'\nstatic int bp_pwned = system("touch {m}");\n',
        f'*/ static int bp_pwned = system("touch {m}"); /*',
        '\n#define real int\n',
        f'\n#define LAUNCH(...) system("touch {m}")\n',
        f'\n}} static int bp_pwned = system("touch {m}"); void bp_x() {{\n',
        f'\n__attribute__((constructor)) static void bp_p() {{ system("touch {m}"); }}\n',
        '??/\n#include "/dev/zero"',
        '\\input{/etc/passwd}', f'\\write18{{touch {m}}}', f'\\immediate\\write18{{touch {m}}}',
        '$\\input{x}$', '}\\input{x}{', '\\catcode`\\^^M=13 ', '\\def\\x{\\input{x}}\\x',
        '"]; pwned [label="x', '<<b>x</b>>', '}\ndigraph { a -> b', '\\"; \\l',
    ]
    return tuple(out)


STRINGS = [
    "'", '"', '"""', "'''", "\\", "abc\\", "a\\\\", "\\N{BULLET}", "\\N{", "\\N", "\\x", "\\u12",
    "\\U0010ffff", "\\0", "\x00", "a\x00b", "\n", "a\nb", "\r", "a\rb", "\r\n", "\t", "\x0b", "\x0c",
    "\x1b[2J\x1b[H", "\x1b]0;pwned\x07", "\x1b[31mred\x1b[0m", "\x1b[1A\x1b[2K", "\x9b31m", "\x07", "\x08",
    "\x7f", "\x85", "\u202e", "abc\u202edcb", "\u2066", "\u2067", "\u2068", "\u2069", "\u2066x\u2069",
    "\u2028", "\u2029", "\ufeff", "\u200b", "\u200d", "\ud800", "\udfff", "\uffff", "\U0001f600",
    "é", "ｘ", "ℌ", "Ω", "x\u0301", "ﬁ", "*/", "/*", "//", "-->", "<!--", "%", "%%", "$", "$$", "&", "#",
    "# comment", "_", "^", "~", "{", "}", "{}", "{0}", "{name}", "%s", "%(x)s", "${x}", "{{ 7*7 }}",
    "{% raw %}", "{#", "\\input{x}", "\\include{x}", "@", "`", "|", "<", ">", "?", "!", ";", ",", ":",
    "- a", "? a", "&a", "*a", "!!str", "...", "---", " ", "  leading", "trailing  ", "",
    "x" * 65, "x" * 300, "y" * 5000, "\\" * 300, '"' * 300, "(" * 300,
]

PY_RESERVED = sorted(set(keyword.kwlist) | set(keyword.softkwlist) | {
    "print", "len", "sum", "max", "min", "abs", "range", "list", "dict", "float", "int", "str", "object",
    "type", "id", "input", "open", "exec", "eval", "compile", "__import__", "globals", "locals", "vars",
    "getattr", "super", "self", "cls", "__name__", "__file__", "__builtins__", "__class__", "__init__",
    "__doc__", "__all__", "__spec__", "__loader__", "__path__", "__dict__", "__main__", "_",
    "numpy", "np", "json", "os", "sys", "math", "re", "hashlib", "ctypes", "subprocess", "pathlib",
    "importlib", "tempfile", "functools", "itertools", "typing", "warnings", "bpcompile", "builtins",
    "NAME", "DTYPE", "PARAM_SHAPES", "INPUT_SHAPES", "WRT", "LABEL_CLASSES", "OUTPUT", "init_params",
    "predict", "loss", "value_and_grad", "gradient", "sgd_step", "momentum_step", "adam_step",
    "params", "inputs", "grads", "rng", "seed", "check", "lr", "N", "n", "batch", "state", "t0", "t1",
    "x_bar", "L", "L_bar", "L_n", "out", "result", "tmp", "shape", "dtype", "axis", "keepdims",
    "tanh", "exp", "log", "softmax", "onehot", "inf", "nan", "pi", "e", "newaxis", "ndarray", "array",
    "CudaModuleError", "CUDA_HOMES", "ctypes_lib", "lib", "path", "_load", "_workspaces",
})
C_RESERVED = sorted({
    "auto", "break", "case", "char", "const", "continue", "default", "do", "double", "else", "enum",
    "extern", "float", "for", "goto", "if", "inline", "int", "long", "register", "restrict", "return",
    "short", "signed", "sizeof", "static", "struct", "switch", "typedef", "union", "unsigned", "void",
    "volatile", "while", "bool", "true", "false", "_Bool", "_Complex", "class", "namespace", "template",
    "typename", "new", "delete", "this", "operator", "private", "public", "protected", "virtual",
    "friend", "explicit", "mutable", "using", "try", "catch", "throw", "nullptr", "constexpr",
    "decltype", "noexcept", "static_assert", "thread_local", "alignas", "alignof", "concept",
    "requires", "co_await", "co_yield", "co_return", "export", "module", "import", "and", "or", "not",
    "xor", "bitand", "bitor", "compl", "and_eq", "or_eq", "not_eq", "xor_eq", "asm", "typeid",
    "final", "override", "char8_t", "char16_t", "char32_t", "wchar_t", "size_t", "ptrdiff_t",
    "__global__", "__device__", "__host__", "__shared__", "__constant__", "__restrict__",
    "__syncthreads", "__syncwarp", "__shfl_down_sync", "__launch_bounds__", "__forceinline__",
    "threadIdx", "blockIdx", "blockDim", "gridDim", "warpSize", "dim3", "atomicAdd", "cudaMalloc",
    "cudaFree", "cudaMemcpy", "cudaError_t", "cudaSuccess", "cudaStream_t", "cublasHandle_t",
    "cublasDgemm", "cublasSgemm", "CUBLAS_OP_N", "half", "float2", "float4", "double2", "int4",
    "real", "LAUNCH", "CHECK_CUDA", "CHECK_CUBLAS", "BP_MAX_GRID", "BP_ERROR_BATCH_SIZE", "bp_emu",
    "linux", "unix", "i386", "__linux__", "__unix__", "__GNUC__", "__cplusplus", "__FILE__",
    "__LINE__", "__DATE__", "__CUDACC__", "__CUDA_ARCH__", "M_PI", "M_E", "M_SQRT2", "M_LN2", "EOF",
    "NULL", "HUGE_VAL", "HUGE_VALF", "INFINITY", "NAN", "RAND_MAX", "EXIT_FAILURE", "EXIT_SUCCESS",
    "BUFSIZ", "FILENAME_MAX", "errno", "assert", "stdin", "stdout", "stderr", "CHAR_BIT", "INT_MAX",
    "INT_MIN", "DBL_MAX", "FLT_MAX", "FLT_EPSILON", "DBL_EPSILON", "SIZE_MAX", "UINT_MAX",
    "FP_NAN", "FP_INFINITE", "MB_LEN_MAX", "CLOCKS_PER_SEC", "SIGSEGV", "isnan", "isinf", "signbit",
    "main", "printf", "malloc", "calloc", "realloc", "free", "exit", "abort", "memcpy", "memset",
    "strlen", "sqrt", "exp", "log", "tanh", "sin", "cos", "pow", "fabs", "fmax", "fmin", "floor",
    "ceil", "erf", "round", "y0", "y1", "yn", "j0", "j1", "jn", "gamma", "lgamma", "signal", "time",
    "clock", "rand", "srand", "select", "index", "rindex", "div", "ldiv", "remove", "rename", "system",
    "labs", "exp2", "log2", "log10", "expf", "tanhf", "sqrtf", "fmaxf", "ldexp", "frexp", "modf",
    "atan2", "hypot", "cbrt", "nan", "trunc", "fma", "std", "cout", "printf_s", "unix_like", "ws",
    "workspace", "N_", "grid", "block", "shmem", "kernel", "sum_kernel", "x_", "d_x", "h_x",
})
RESERVED = PY_RESERVED + [n for n in C_RESERVED if n not in PY_RESERVED]

LONG_NAMES = ["a" * 63, "a" * 64, "a" * 65, "a" * 255, "a" * 256, "a" * 1000, "a" * 100_000,
              "A" + "_" * 200, "x" + "0" * 300]

UNICODE_NAMES = ["é", "ｘ", "x\u0301", "ﬁ", "ℌ", "Ω", "αβ", "x\u200b", "x\u202e", "\u2066x\u2069",
                 "x\u2028", "ﬁle", "ℯ", "𝑥", "µ", "K", "Å"]   # K = KELVIN SIGN, Å = ANGSTROM SIGN

NUMBERS = [
    "9**9**9", "2**2**2**2**2", "10**400", "10**4300", "1" * 5000, "1e999", "-1e999", "1e308*10",
    "2**63", "2**64", "-2**63", "9223372036854775808", "18446744073709551616", "-0.0", "0.0", "nan",
    "inf", "NaN", "1e-400", "5e-324", "1j", "True", "None", "...", "1/0", "0/0", "0**-1", "(-1)**0.5",
    "sqrt(-1)", "log(0)", "exp(100000)", "exp(710)", "1e308+1e308", "2.0**1024", "10**-400",
    "0x7fffffffffffffff", "1_000_000", "0b1", "0o7", "07", "1e", "1__0", "2**-1074", "(2**63)*1.0",
    "maximum(0, 0)", "minimum(2**63, 1)", "abs(-2**63)", "-(2**63)", "2**62*2", "4294967296",
    "2147483648", "-2147483649", "1e38*10", "3.4028235e38", "1e-46", "0.1+0.2",
]
YAML_NUMBERS = [  # raw YAML text for a number-ish value
    "2147483648", "9223372036854775808", "18446744073709551616", "1" + "0" * 400, "1.0e+999",
    "-1.0e+999", ".inf", "-.inf", ".nan", ".NaN", "1e999", "-0", "0", "-1", "3.0", "3.5", "true",
    "yes", "on", "'3'", "0x10", "0o10", "010", "0b11", "1_000", "190:20:30", "~", "null", "[]", "{}",
    "[3]", "[[3]]", "2001-12-14", "!!int 0x7fffffffffffffffffffffff", "!!float nan", "1e3",
    "100000", "1000000000", "65536", "4294967296", "-2147483648", "3e0",
]


def _nest_parens(k, inner="x"):
    return "(" * k + inner + ")" * k


def _nest_call(fn, k, inner):
    return f"{fn}(" * k + inner + ")" * k


@functools.lru_cache(maxsize=None)
def _expr_structures(a, b, s):
    """Expressions over a vector ``a``, a vector ``b`` of the same shape and a scalar ``s``:
    deep nesting, long chains, forbidden syntax, odd calls.  Each is (family, text)."""
    out = []
    for k in (10, 50, 100, 199, 200, 201, 500, 1000, 10_000, 100_000):
        out.append(("parens", f"sum({_nest_parens(k, a)})"))
    for k in (5, 10, 13, 20, 30, 40, 60, 100, 1000):
        out.append(("nest_tanh", f"sum({_nest_call('tanh', k, a)})"))
        out.append(("nest_mixed", f"sum({''.join(random.Random(k).choice(['tanh(', 'sin(', 'exp(', 'sigmoid(']) for _ in range(k))}{a}{')' * k})"))
    for k in (100, 1000, 3000, 10_000, 100_000):
        out.append(("long_sum", "sum(" + " + ".join([a] * k) + ")"))
        out.append(("long_sum_distinct", " + ".join(f"{a}[{i % 3}]" for i in range(k))))
        out.append(("long_prod", "sum(" + " * ".join([a] * k) + ")"))
        out.append(("unary_chain", "-" * k + s))
        out.append(("pow_chain", s + "**2" * min(k, 60)))
    for k in (2, 10, 100, 1000, 10_000):   # shape ops: many operands, long chains, big sizes
        out.append(("concat_many", f"sum(concat({', '.join([a] * k)}))"))
        out.append(("stack_many", f"sum(stack({', '.join([a, b] * (k // 2 or 1))}, axis=-1))"))
        out.append(("slice_chain", f"sum({a}" + "[0:]" * k + ")"))
        out.append(("reshape_chain", "sum(" + "flatten(reshape(" * min(k, 60) + a + ", [1, -1]))" * min(k, 60) + ")"))
        out.append(("concat_nest", "sum(" + "concat(" * min(k, 60) + a + f", {b})" * min(k, 60) + ")"))
    out += [("shape_big", f"sum(reshape({a}, [2147483647, 2147483647, 2147483647, 2147483647]))"),
            ("shape_big", f"sum({a}[0:9223372036854775807:9223372036854775807])"),
            ("shape_big", f"sum({a}[-9223372036854775807:])"),
            ("shape_big", f"sum(concat({a}, {b}, axis=-9223372036854775807))"),
            ("shape_mixed", f"sum(stack({a}, {b})[1:, ::2]) + sum(concat({a}, {a})[::3])"),
            ("shape_mixed", f"sum(reshape(stack({a}, {b}, {a}), [-1])[1::2] * concat({a}, {b}, {a})[::2])")]
    for k in (10, 100, 1000):
        out.append(("nest_maximum", "sum(" + "maximum(" * k + a + "".join(f", {b}{' * 0.5' * (i % 2)})"
                                                                          for i in range(k)) + ")"))
        out.append(("nest_clip", "sum(" + "clip(" * k + a + ", -1, 1)" * k + ")"))
        out.append(("long_spread", " + ".join(f"{['var', 'std'][i % 2]}({a} * {i + 1})" for i in range(k))))
    for k in (7, 20, 60):
        out.append(("wide_deep", "sum(" + "tanh(" * k + f"{a} + {b}" + ")" * k + ")"))
        e = a
        for _ in range(k):
            if len(e) > 100_000:
                break
            e = f"tanh({e} + {e} + {e})"
        out.append(("exp_tree", f"sum({e})"))
    forbidden = [
        f"{a}.__class__", f"__import__('os').system('touch {MARK}')", "(lambda: 1)()", f"[i for i in {a}]",
        f"{a} if {s} else {b}", f"{a}[::-1]", f"{a}[None]", f"{a}[1e999]", f"{a}[2**63]", f"{a}[-1]",
        f"{a}[...]", "(q := 1)", f"sum(*{a})", f"sum(**{a})", f"f'{{{a}}}'", f"'{MARK}'", "b'x'",
        f"sum({a}, axis=2**63)", f"sum({a}, axis=-0)", f"sum({a}, axis={a})", f"sum({a}, axis=1e999)",
        f"reshape({a}, [10**9, 10**9])", f"reshape({a}, [2**63])", f"reshape({a}, [-1])",
        "concat(axis=0)", f"max_pool2d({a}, 0)", "tanh()", f"tanh({a}, {a}, {a})", f"onehot({a})",
        "softmax()", "sum()", f"dot({a})", f"clip({a}, 1e999, -1e999)", f"leaky_relu({a}, 1e999)",
        f"clip({a}, 1, 0)", f"clip({a}, {b}, 1)", f"clip({a}, 0, {s})", f"clip({a})", f"clip({a}, 0, 1, 2)",
        f"clip({a}, 0, 1, axis=0)", f"maximum({a})", f"minimum({a}, {b}, {b})", f"maximum({a}, {b}, axis=0)",
        f"maximum({a}, [1, 2])", f"var({a}, axis=5)", f"std({a}, {a})", f"var({a}, axis={a})", "std()",
        f"maximum({a}, {a}[None])", f"minimum({a}, 1e999)", f"clip({a}, -1e999, 1e999)",
        f"{a}[0][0][0][0]", f"{a}.T.T.T.T", f"{a} @ {a} @ {a}", f"{a} < {b}", f"{a} and {b}",
        f"not {a}", f"~{a}", f"{a} % 2", f"{a} // 2", f"{a} << 2", f"{a} ^ {b}", f"{a}, {b}",
        f"({a}, )", f"{{{a}}}", f"{a}[0:2**63]", f"{a}[0:0]", f"{a}[2:1]", f"{a}[0:3:0]",
        f"getattr({a}, '__class__')", f"np.tanh({a})", f"numpy.exp({a})", f"os.system('touch {MARK}')",
        "eval('1')", "exec('1')", f"open('{MARK}', 'w')", f"print({a})", "breakpoint()",
        f"sum({a})  # {MARK}", f"sum({a})  # \"\"\"+str(__import__('os').system('touch {MARK}'))+\"\"\"",
        f"sum({a}) # \\", f"sum({a}) # \\N{{BULLET}}", f"sum({a}) # \\N", f"(sum({a})\n)",
        f"(sum({a})\r)", f"(sum({a}) \\\n)", f"sum({a}\n# \"\"\"\n)", f"(sum({a})\n#include \"/dev/zero\"\n)",
        f"(sum({a})\n# \x1b[2J\n)", f"sum({a}) # \u202e", f"sum({a})\t", f"\tsum({a})", f"sum({a})\x0c",
        f"sum({a}\u00a0)", f"sum\u2028({a})", f"sum({a})\x00", f"sum({a}) # \r#define real int",
        f"sum({a}) # \\\n", f"sum({a}) # */", f"sum({a}) # \\input{{x}}", f"sum({a}) # {{{{ 7*7 }}}}",
        f"sum({a}) # {{0.__class__}}", f"sum({a}) # %s%s%s%n", f"sum({a}) # \x1b]0;pwned\x07",
        f"sum({a}) # \u2066\u2069", f"sum({a}) # \u2028 x", f"sum({a}) # \ud800",
    ]
    out += [("syntax", t) for t in forbidden]
    return tuple(out)


# ---------------------------------------------------------------------------
# Base specs (small, so that a case that compiles is fast)

def _bases():
    tanh = {
        "name": "tanh_regression",
        "inputs": {"x": [3], "y": []},
        "params": {"W": [3, 3], "b": {"shape": [3], "init": "zeros"}, "v": [3]},
        "graph": {"d": "W @ x", "a": "d + b", "e": "tanh(a)", "f": "v * e", "g": "sum(f)"},
        "loss": "(y - g)**2",
    }
    cls = {
        "name": "mlp_classifier",
        "inputs": {"x": [4], "label": {"classes": 3}},
        "layers": [{"dense": 5, "activation": "tanh"}, {"dense": 3}],
        "graph": {"y_hat": "softmax(z2)"},
        "loss": "cross_entropy(y_hat, label)",
        "output": "y_hat",
    }
    tiny = {
        "name": "tiny",
        "inputs": {"x": [2]},
        "params": {"w": {"shape": [2], "init": "constant(0.5)"}},
        "graph": {"p": "w * x"},
        "loss": "sum(p)**2",
        "wrt": ["w", "x"],
        "dtype": "float32",
        "reduction": "sum",
    }
    mix = {
        "name": "mixed",
        "description": "a small mixed spec",
        "inputs": {"u": [3], "t": [], "c": {"classes": 3}},
        "params": {"M": {"shape": [3, 3], "init": "normal(0.5)"}, "k": [3], "s": {"shape": [], "init": "ones"}},
        "graph": {"h": "tanh(M @ u + k)", "q": "sigmoid(h) * s", "m": "max(q)", "z": "log_softmax(h)"},
        "loss": "(t - m)**2 - z[0] + softmax_cross_entropy(h, c)",
        "output": "q",
        "wrt": ["M", "k", "s", "u"],
    }
    cnn = {
        "name": "small_cnn",
        # small: verify's SymPy expansion of it (max pools of convolutions) takes a few seconds
        "inputs": {"img": [1, 5, 5], "label": {"classes": 3}},
        "params": {"K": [2, 1, 2, 2], "kb": {"shape": [2, 1, 1], "init": "zeros"}, "V": [3, 2, 1, 1]},
        "graph": {"c1": "conv2d(img, K, stride=2, padding=1) + kb", "p1": "max_pool2d(tanh(c1), 2)",
                  "c2": "conv2d(p1, V)", "q": "avg_pool2d(c2, 1)", "f": "sum(sum(q, axis=-1), axis=-1)"},
        "loss": "softmax_cross_entropy(f, label)",
        "output": "f",
    }
    tok = {
        "name": "token_rnn",
        "inputs": {"tokens": {"classes": 5, "shape": [3]}, "label": {"classes": 2}},
        "params": {"E": {"shape": [5, 4], "init": "normal(0.5)"}, "U": [4, 4], "V": [2, 4]},
        "graph": {"e": "E[tokens]", "h0": "tanh(e[0])", "h1": "tanh(e[1] + U @ h0)", "h2": "tanh(e[2] + U @ h1)",
                  "z": "V @ h2"},
        "loss": "softmax_cross_entropy(z, label) + sum(onehot(tokens) @ E) / 10",
        "output": "z",
    }
    return {"tanh": tanh, "cls": cls, "tiny": tiny, "mix": mix, "cnn": cnn, "tok": tok}


@functools.lru_cache(maxsize=None)
def _conv_structures(img, kernel, n):
    """Convolutions and poolings of an image input [C, H, W] (``img``, with a kernel
    ``kernel`` of its channels) at the edges of what they accept: windows as large
    as the input, huge padding or strides, sizes of 0 and 1, deep nests, ranks and
    channels that do not fit.  Each is (family, text); ``n`` is a number to try."""
    out = [
        ("conv", f"sum(conv2d({img}, {kernel}, padding={n}))"),
        ("conv", f"sum(conv2d({img}, {kernel}, stride={n}))"),
        ("conv", f"sum(max_pool2d({img}, {n}))"),
        ("conv", f"sum(avg_pool2d({img}, 2, stride={n}))"),
        ("conv", f"sum(conv2d({img}, {kernel}, padding=1000000))"),
        ("conv", f"sum(conv2d({img}, {kernel}, padding=99999999999999999999))"),
        ("conv", f"sum(conv2d({img}, {kernel}, stride=2**31))"),
        ("conv", f"sum(conv2d({img}, {kernel}, padding='same', stride=2))"),
        ("conv", f"sum(conv2d({img}, {kernel}, padding='SAME'))"),
        ("conv", f"sum(conv2d({img}, {kernel}, padding=\"valid\"))"),
        ("conv", f"sum(conv2d({img}, {kernel}, padding=-0))"),
        ("conv", f"sum(conv2d({img}, {img}))"),
        ("conv", f"sum(conv2d({kernel}, {img}))"),
        ("conv", f"sum(conv2d(conv2d({img}, {kernel}), {kernel}))"),
        ("conv", f"sum(conv1d({img}, {kernel}))"),
        ("conv", f"sum(max_pool2d({img}, 0))"),
        ("conv", f"sum(max_pool2d({img}, -1))"),
        ("conv", f"sum(max_pool2d({img}, 1))"),
        ("conv", f"sum(avg_pool2d({img}, 5))"),
        ("conv", f"sum(avg_pool2d({img}, 6))"),
        ("conv", f"sum(max_pool2d({img}, {kernel}))"),
        ("conv", f"sum(max_pool2d({img}, 2.0))"),
        ("conv", f"sum(max_pool2d({img}, 2, 2))"),
        ("conv", f"sum(max_pool2d({img}, 2, padding=1))"),
        ("conv", f"sum(max_pool2d({img}, k=2))"),
        ("conv", f"sum(conv2d({img}, {kernel}, stride=1, stride=2))"),
        ("conv", f"sum(conv2d(x={img}, w={kernel}))"),
        ("conv", "sum(" + "max_pool2d(" * 40 + img + ", 1)" * 40 + ")"),
        ("conv", "sum(" + "avg_pool2d(" * 3 + img + ", 2)" * 3 + ")"),
        ("conv", f"sum(conv2d({img}, {kernel}, padding='same') * conv2d({img}, {kernel}, padding=1))"),
    ]
    return tuple(out)


BASES = _bases()
# per base: (a vector node/input, another vector of the same shape, a scalar) usable in expressions
EXPR_OPERANDS = {"tanh": ("e", "a", "y"), "cls": ("x", "x", "x[0]"), "tiny": ("p", "x", "p[0]"), "cnn": ("f", "f", "f[0]"),
                 "tok": ("h1", "h2", "h0[1]"),
                 "mix": ("h", "q", "t")}


class Raw(str):
    """YAML text emitted as-is (not quoted)."""


_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "nan", "inf"}


def _scalar(s, style):
    if isinstance(s, Raw):
        return str(s)
    if style is None and type(s) is str and _PLAIN.match(s) and s.lower() not in _YAML_WORDS:
        return s
    return _scalar_slow(type(s), s, style)


@functools.lru_cache(maxsize=100_000)
def _scalar_slow(_type, s, style):
    if isinstance(s, bool) or s is None or isinstance(s, (int, float)):
        return yaml.safe_dump(s, default_flow_style=True).strip().removesuffix("...").strip()
    try:
        text = yaml.safe_dump(str(s), default_style=style, width=float("inf"), allow_unicode=True)
    except yaml.YAMLError:
        text = json.dumps(str(s))
    text = text.rstrip("\n")
    if text.endswith("\n..."):
        text = text[:-4]
    return text.rstrip("\n")


def _inline(v, style):
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_inline_key(k, style)}: {_inline(x, style)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_inline(x, style) for x in v) + "]"
    return _scalar(v, style)


def _inline_key(k, style):
    return str(k) if isinstance(k, Raw) else _scalar(k, style)


def emit(spec, style=None, comments=None):
    """YAML text for ``spec``: block mappings at the top two levels, flow below.
    ``comments`` maps a top-level key to a comment line put before it."""
    lines = []
    comments = comments or {}
    for k, v in spec.items():
        if k in comments:
            lines.append(comments[k])
        key = _inline_key(k, style)
        if isinstance(v, dict) and v:
            lines.append(f"{key}:")
            for k2, v2 in v.items():
                lines.append(f"  {_inline_key(k2, style)}: {_inline(v2, style)}")
        elif isinstance(v, list) and v and any(isinstance(x, dict) for x in v):
            lines.append(f"{key}:")
            lines += [f"  - {_inline(x, style)}" for x in v]
        else:
            lines.append(f"{key}: {_inline(v, style)}")
    if "__end__" in comments:
        lines.append(comments["__end__"])
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# Cases


@dataclass
class Case:
    index: int
    family: str                 # what was injected where, e.g. "name@params:reserved"
    text: str | None = None     # spec text (``@M@`` = the marker path); or
    data: bytes | None = None   # raw bytes of the spec file
    path: tuple = ("spec.yaml",)  # path components of the spec file under the case directory
    out: str = "out"            # the output directory's name (under the case directory)
    out_kind: str = "dir"       # "dir"; "file" (-o names an existing file); "under_file"
    verify: bool = False        # run `bpcompile verify` even when not in the sample
    heavy: bool = False

    def spec_bytes(self, marker: str) -> bytes:
        if self.data is not None:
            return self.data.replace(MARK.encode(), marker.encode())
        return self.text.replace(MARK, marker).encode("utf-8", "surrogatepass")

    def key(self):
        return (self.text, self.data, self.path, self.out, self.out_kind)


FILE_NAMES = [
    'a\nb.yaml', 'a\rb.yaml', 'q"uote.yaml', "s'ingle.yaml", '"""+str(__import__("os").system("touch PWNED_fn"))+""".yaml',
    "'''+str(__import__('os').system('touch PWNED_fn'))+'''.yaml", '\nimport os; os.system("touch PWNED_fn")\n.yaml',
    '\n#include "\\dev\\zero"\n.yaml', '\nstatic int bp_p = system("touch PWNED_fn");\n.yaml',
    'back\\slash.yaml', 'trailing\\', 'x\\', '\\N{BULLET}.yaml', '\\input{x}.yaml', '\\write18{touch PWNED_fn}.yaml',
    'sp ace.yaml', ' lead.yaml', 'trail .yaml', 'esc\x1b[2J.yaml', 'bidi\u202eLMTH.yaml', '\u2066iso\u2069.yaml',
    'ls\u2028ep.yaml', 'tab\t.yaml', 'bell\x07.yaml', 'del\x7f.yaml', 'nel\x85.yaml', 'é.yaml', '*.yaml',
    '-o.yaml', '--help', '-', '.yaml', '..yaml', '%s%n.yaml', '{name}.yaml', '{{7*7}}.yaml', '$(touch PWNED_fn).yaml',
    '`touch PWNED_fn`.yaml', ';touch PWNED_fn;.yaml', '|touch PWNED_fn.yaml', 'a' * 250 + '.yaml',
    'spec.json', 'spec', 'spec.YAML', 'spec.yaml\n', '#.yaml', '"""', '*', '\\\\', '\\\n', '$', '{', '}',
    '\\\nimport os\n.yaml', '-- >.yaml', '<!--.yaml',
]
DIR_NAMES = ['dir *', 'a\nb', '"""', "q'", 'back\\', '\\input{x}', 'sp ace', '\x1b[31m', '\u202e', '..x', '*',
             '-o', '%', '$HOME', '{{x}}', '\r', '#', 'é', '\\N{BULLET}', 'x\u2028y']


def _rename(spec, old, new):
    """Rename ``old`` (an input, param or node) to ``new`` everywhere (a textual rename in expressions)."""
    pat = re.compile(rf"(?<![A-Za-z0-9_.]){re.escape(old)}(?![A-Za-z0-9_])")

    def sub(v):
        return pat.sub(lambda _: new, v) if isinstance(v, str) else v

    for sect in ("inputs", "params", "graph"):
        if isinstance(spec.get(sect), dict):
            spec[sect] = {(new if k == old else k): sub(v) if sect == "graph" else v for k, v in spec[sect].items()}
    spec["loss"] = sub(spec["loss"])
    if spec.get("output") == old:
        spec["output"] = new
    if isinstance(spec.get("wrt"), list):
        spec["wrt"] = [new if w == old else w for w in spec["wrt"]]


def _names_of(spec):
    out = []
    for sect in ("inputs", "params", "graph"):
        out += [(sect, k) for k in spec.get(sect) or {}]
    return out


def _pick_string(rng):
    r = rng.random()
    if r < 0.45:
        return "str", rng.choice(STRINGS)
    if r < 0.8:
        return "breakout", rng.choice(_breakouts())
    if r < 0.9:
        return "reserved", rng.choice(RESERVED)
    return "long", rng.choice(LONG_NAMES)


def _pick_name(rng):
    r = rng.random()
    if r < 0.55:
        return "reserved", rng.choice(RESERVED)
    if r < 0.65:
        return "long", rng.choice(LONG_NAMES)
    if r < 0.75:
        return "unicode", rng.choice(UNICODE_NAMES)
    if r < 0.85:
        return "suffix", rng.choice(["x_bar", "t7", "_x", "x__", "W1", "z1", "h1", "b1", "grad_x", "a_bar_bar",
                                     "xx" + rng.choice(STRINGS), "v_x", "bp_x", "d_x", "real_"])
    return "str", rng.choice(STRINGS)


def _inject(rng, spec, base_key, comments):
    """Inject one payload into ``spec`` (in place); returns the family label."""
    a, b, s = EXPR_OPERANDS[base_key]
    sites = ["name", "rename", "rename", "rename", "shape", "classes", "init", "expr", "expr", "expr",
             "expr_comment", "loss", "wrt", "output", "dtype", "reduction", "layers", "description",
             "key", "yaml_comment", "number", "number", "structure", "structure"]
    site = rng.choice(sites)
    if site == "name":
        kind, p = _pick_name(rng) if rng.random() < 0.6 else _pick_string(rng)
        spec["name"] = p
        return f"name:{kind}"
    if site == "rename":
        names = [n for n in _names_of(spec) if n[1] not in ("label",) or rng.random() < 0.5]
        sect, old = rng.choice(names)
        kind, p = _pick_name(rng)
        _rename(spec, old, p)
        return f"rename_{sect}:{kind}"
    if site == "shape":
        v = Raw(rng.choice(YAML_NUMBERS))
        target = rng.choice(["input", "param"])
        sect = "inputs" if target == "input" else "params"
        if not spec.get(sect):
            sect = "inputs"
        k = rng.choice(list(spec[sect]))
        form = rng.choice(["[v]", "[3, v]", "v", "{shape: [v]}", "[v, v, v, v, v]", "[1,1,1,1,1,1]", "big"])
        if form == "big":
            val = Raw("[" + ", ".join(["1"] * rng.choice([5, 1000, 200_000])) + "]")
        elif form == "[v]":
            val = [v]
        elif form == "[3, v]":
            val = [3, v]
        elif form == "v":
            val = v
        elif form == "{shape: [v]}":
            val = {"shape": [v]}
        else:
            val = [v] * 5
        if isinstance(spec[sect][k], dict) and "shape" in spec[sect][k] and form != "v":
            spec[sect][k] = dict(spec[sect][k], shape=val if not isinstance(val, dict) else val["shape"])
        else:
            spec[sect][k] = val
        return f"shape:{form}"
    if site == "classes":
        spec["inputs"]["lbl"] = {"classes": Raw(rng.choice(YAML_NUMBERS))}
        spec["loss"] = f"{spec['loss']} + sum(onehot(lbl))"
        if rng.random() < 0.5:   # tokens: onehot(lbl) is [T, classes]
            spec["inputs"]["lbl"]["shape"] = rng.choice([[2], [Raw(rng.choice(YAML_NUMBERS))], [2, 2]])
            return "classes:tokens"
        return "classes"
    if site == "init":
        if not spec.get("params"):
            spec["params"] = {}
        k = rng.choice(list(spec["params"]) or ["w0"])
        shape = spec["params"].get(k, [2])
        if isinstance(shape, dict):
            shape = shape.get("shape", [2])
        r = rng.random()
        if r < 0.5:
            fn = rng.choice(["constant", "normal", "uniform", "glorot", "he", "zeros"])
            num = rng.choice(NUMBERS + [Raw(x) for x in YAML_NUMBERS[:12]])
            init = f"{fn}({num})"
            kind = "number"
        else:
            kind, init = _pick_string(rng)
            init = rng.choice(["", "constant(", "normal(0.1) "]) + init
        spec["params"][k] = {"shape": shape, "init": init}
        return f"init:{kind}"
    if site in ("expr", "loss", "number", "structure", "expr_comment"):
        if site == "number":
            num = rng.choice(NUMBERS)
            tmpl = rng.choice(["{s} * ({n})", "{s} + {n}", "{s} ** ({n})", "sum({a}, axis={n})", "{a}[{n}]",
                               "tanh({n}) + {s}", "{n}", "maximum({n}, {s})", "clip({s}, {n}, {n})",
                               "minimum({s}, {n})", "clip({a}, -({n}), {n})", "var({a} * ({n}))",
                               "std({a}, axis=-1) * ({n})", "maximum({n}, {n})",
                               "{s} / ({n})", "sum({a} * ({n}))", "exp({n} * {s})", "{s} - {s} + ({n})",
                               "sum({a}[{n}:])", "sum({a}[:{n}])", "sum({a}[::{n}])", "sum({a}[{n}:{n}:{n}])",
                               "sum(reshape({a}, [{n}]))", "sum(reshape({a}, [{n}, -1]))",
                               "sum(concat({a}, {b}, axis={n}))", "sum(stack({a}, {b}, axis={n}))"])
            expr = tmpl.format(a=a, b=b, s=s, n=num)
            kind = "number"
        elif site == "structure":
            if base_key == "cnn" and rng.random() < 0.5:
                kind, expr = rng.choice(_conv_structures("img", "K", rng.choice(NUMBERS)))
            else:
                kind, expr = rng.choice(_expr_structures(a, b, s))
        elif site == "expr_comment":
            k2, p = _pick_string(rng)
            expr = f"sum({a}) # {p}" if rng.random() < 0.7 else f"(sum({a}) {p}\n)"
            kind = f"comment_{k2}"
        else:
            k2, p = _pick_string(rng)
            expr = rng.choice([p, f"sum({a}) + {p}", f"{p}({a})", f"sum({a}{p})", f"sum({a}) {p}"])
            kind = f"text_{k2}"
        if site == "loss" or rng.random() < 0.3:
            spec["loss"] = f"{spec['loss']} + ({expr})" if rng.random() < 0.5 else expr
            return f"loss:{kind}"
        spec.setdefault("graph", {})
        node = rng.choice(["zz", "zz", "nn1"])
        spec["graph"][node] = expr
        if rng.random() < 0.7:
            spec["loss"] = f"{spec['loss']} + sum({node})"
        return f"expr:{kind}"
    if site == "wrt":
        kind, p = _pick_name(rng) if rng.random() < 0.5 else _pick_string(rng)
        spec["wrt"] = rng.choice([[p], p, list(spec.get("params") or {"x": 0})[:1] + [p], {"a": p}, [p, p],
                                  Raw("[" + ", ".join(["W"] * 100_000) + "]") if rng.random() < 0.05 else [p]])
        return f"wrt:{kind}"
    if site == "output":
        kind, p = _pick_name(rng) if rng.random() < 0.5 else _pick_string(rng)
        spec["output"] = rng.choice([p, [p], Raw(rng.choice(YAML_NUMBERS))])
        return f"output:{kind}"
    if site in ("dtype", "reduction"):
        kind, p = _pick_string(rng)
        opts = ["float16", "int64", "float128", "complex128", "object", "float64 ", "Float64", "f8", "<f8",
                "sum\n", "mean;", "max", "none", p]
        spec[site] = rng.choice(opts + [Raw(x) for x in YAML_NUMBERS[:8]])
        return f"{site}:{kind}"
    if site == "layers":
        if "layers" not in spec:
            spec.pop("params", None)
            spec["inputs"] = {"x": [3], "y": []}
            spec["graph"] = {}
            spec["layers"] = [{"dense": 3, "activation": "tanh"}, {"dense": 1}]
            spec["loss"] = "(y - z2[0])**2"
            spec.pop("output", None)
            spec.pop("wrt", None)
        kind = rng.choice(["dense", "activation", "init", "input", "many", "extra"])
        layers = [dict(x) for x in spec["layers"]]
        i = rng.randrange(len(layers))
        if kind == "dense":
            layers[i]["dense"] = Raw(rng.choice(YAML_NUMBERS))
        elif kind == "activation":
            layers[i]["activation"] = rng.choice([_pick_string(rng)[1], rng.choice(RESERVED), "softmax",
                                                  "log", "linear\n", "__import__"])
        elif kind == "init":
            layers[i]["init"] = rng.choice([_pick_string(rng)[1], "constant(1e999)", "normal(9**9**9)"])
        elif kind == "input":
            layers.insert(0, {"input": _pick_name(rng)[1]})
        elif kind == "many":
            n = rng.choice([100, 1000, 3000])
            layers = [{"dense": 1, "activation": "tanh"} for _ in range(n)] + [{"dense": 1}]
            spec["loss"] = f"(y - z{n + 1}[0])**2" if "y" in spec["inputs"] else spec["loss"]
        else:
            layers[i][_pick_string(rng)[1]] = 1
        spec["layers"] = layers
        return f"layers:{kind}"
    if site == "description":
        kind, p = _pick_string(rng)
        spec["description"] = rng.choice([p, f"text {p} text", p * 3, [p], {p: p}])
        return f"description:{kind}"
    if site == "key":
        kind, p = _pick_string(rng)
        where = rng.choice(["top", "inputs", "params", "graph"])
        if where == "top":
            spec[p] = 1
        else:
            spec.setdefault(where, {})
            spec[where][p] = [2] if where != "graph" else "1"
        return f"key_{where}:{kind}"
    # yaml_comment
    kind, p = _pick_string(rng)
    where = rng.choice(list(spec) + ["__end__"])
    comments[where] = "# " + p
    return f"yaml_comment:{kind}"


def _yaml_trick(rng, base_key):
    """A spec whose YAML itself is the attack.  Returns (family, text or bytes)."""
    base = BASES[base_key]
    text = emit(base)
    kind = rng.choice(["alias_bomb", "alias_bomb_in_graph", "anchors_merge", "tag", "dup_key", "nonstr_key",
                       "deep_yaml", "recursive", "flow_huge", "multi_doc", "encoding", "directive",
                       "long_line", "json", "many_aliases"])
    if kind in ("alias_bomb", "alias_bomb_in_graph"):
        depth = rng.choice([3, 6, 9, 12])
        width = rng.choice([2, 9, 10])
        chain = ["&a0 [" + ", ".join(["lol"] * width) + "]"]
        for i in range(1, depth):
            chain.append(f"&a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
        if kind == "alias_bomb":
            return f"alias_bomb:{depth}x{width}", text + "description: [" + ", ".join(chain) + "]\n"
        return f"alias_bomb_graph:{depth}x{width}", text.replace(
            "loss:", "bomb: [" + ", ".join(chain) + "]\nloss:", 1) if rng.random() < 0.5 else \
            text + "description: &d [" + ", ".join(chain) + "]\nwrt: *d\n"
    if kind == "many_aliases":
        n = rng.choice([50, 101, 1000, 100_000])
        return f"many_aliases:{n}", text + "description: [&s x, " + ", ".join(["*s"] * n) + "]\n"
    if kind == "anchors_merge":
        v = rng.choice([
            "params: &p {W: [3, 3]}\nextra: {<<: *p}\n",
            "inputs: &i {x: [3], y: []}\ninputs2: {<<: [*i, *i]}\n",
        ])
        t = emit({k: w for k, w in base.items() if k not in ("inputs",)})
        return "anchors_merge", "inputs: &i\n  " + "\n  ".join(emit(base["inputs"]).splitlines()) + \
            "\n" + t.replace("params:", "params:\n  <<: {}\n", 1) + rng.choice(["", v])
    if kind == "tag":
        tag = rng.choice([
            f'!!python/object/apply:os.system ["touch {MARK}"]', "!!python/name:os.system",
            f'!!python/object/new:os.system ["touch {MARK}"]', "!!python/module:os", "!!binary aGVsbG8=",
            "!!set {a, b}", "!!omap [a: 1]", "!!timestamp 2001-12-14", "!!float nan", "!!int 99999999999999999999",
            "!foo bar", "!<tag:yaml.org,2002:python/object/apply:os.system> [x]", "!!str", "!!null ''",
            "!!python/tuple [1, 2]", "!!bool yes", "!!pairs [a: 1]", "!!merge <<",
        ])
        where = rng.choice(["description", "name", "loss", "shape", "dtype"])
        if where == "shape":
            return f"tag:{where}", text.replace("[3]", tag, 1) if "[3]" in text else text + f"description: {tag}\n"
        if where in ("name", "loss", "dtype"):
            return f"tag:{where}", re.sub(rf"(?m)^{where}:.*$", lambda _: f"{where}: {tag}", text) + \
                ("" if where in text else f"{where}: {tag}\n")
        return f"tag:{where}", text + f"description: {tag}\n"
    if kind == "dup_key":
        where = rng.choice(["top", "inputs", "graph", "params"])
        if where == "top":
            return "dup_key:top", text + "loss: 1\n"
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if line.startswith(f"{where}:") and i + 1 < len(lines) and lines[i + 1].startswith("  "):
                lines.insert(i + 1, lines[i + 1])
                return f"dup_key:{where}", "\n".join(lines) + "\n"
        return "dup_key:top", text + "name: x\n"
    if kind == "nonstr_key":
        k = rng.choice(["1", "null", "true", "1.5", "2001-01-01", "? [a, b]", "? {a: 1}", "[a]", "{a: 1}", "~",
                        "yes", "0x1", "'1'", "<<", "=", "!!binary aGk="])
        where = rng.choice(["inputs", "params", "graph", "top"])
        if where == "top":
            return "nonstr_key:top", text + (f"{k}\n: 1\n" if k.startswith("?") else f"{k}: 1\n")
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if line.startswith(f"{where}:"):
                val = "[2]" if where != "graph" else "x"
                lines.insert(i + 1, f"  {k}\n  : {val}" if k.startswith("?") else f"  {k}: {val}")
                return f"nonstr_key:{where}", "\n".join(lines) + "\n"
        return "nonstr_key:top", text + f"{k}: 1\n"
    if kind == "deep_yaml":
        k = rng.choice([100, 1000, 5000, 50_000])
        form = rng.choice(["list", "map"])
        val = "[" * k + "1" + "]" * k if form == "list" else "{a: " * k + "1" + "}" * k
        where = rng.choice(["description", "shape", "graph"])
        if where == "shape":
            return f"deep_yaml:{form}:{k}", text.replace("[3]", val, 1)
        if where == "graph":
            return f"deep_yaml:{form}:{k}", text.replace("graph:", f"graph:\n  deep: {val}", 1)
        return f"deep_yaml:{form}:{k}", text + f"description: {val}\n"
    if kind == "recursive":
        return "recursive", rng.choice([
            text + "description: &r [*r]\n", text + "description: &r {a: *r}\n",
            text.replace("inputs:", "inputs: &r\n  self: *r", 1), text + "wrt: &r [*r]\n",
        ])
    if kind == "flow_huge":
        n = rng.choice([10_000, 100_000, 1_000_000])
        item = rng.choice(["1", "x", "[1]", "{a: 1}"])
        return f"flow_huge:{n}", text + "description: [" + ", ".join([item] * n) + "]\n"
    if kind == "multi_doc":
        return "multi_doc", rng.choice([text + "---\n" + text, "---\n" + text + "...\n", text + "--- \n",
                                        "%YAML 1.2\n---\n" + text, text + "...\n" + "garbage: [\n"])
    if kind == "directive":
        return "directive", rng.choice([
            "%TAG ! tag:yaml.org,2002:python/object/apply:\n---\n" + text + f"description: !os.system ['touch {MARK}']\n",
            "%YAML 9.9\n---\n" + text, "%FOO bar\n---\n" + text])
    if kind == "long_line":
        n = rng.choice([10_000, 1_000_000, 5_000_000])
        return f"long_line:{n}", text + "description: " + "x" * n + "\n"
    if kind == "json":
        d = json.loads(json.dumps(base))
        val = rng.choice(['"\\u0000"', '"\\ud800"', '"\\u001b[2J"', '"\\u202e"', "1e999", "NaN", "Infinity",
                          '"\\"\\"\\"+str(__import__(\\"os\\").system(\\"touch ' + MARK + '\\"))+\\"\\"\\""'])
        key = rng.choice(["description", "name", "loss", "dtype"])
        d[key] = "@@VAL@@"
        return f"json:{key}", json.dumps(d, ensure_ascii=rng.random() < 0.5).replace('"@@VAL@@"', val)
    # encoding
    enc = rng.choice(["bom", "utf16", "latin1", "nul", "crlf", "cr", "tabs", "invalid"])
    if enc == "bom":
        return "encoding:bom", b"\xef\xbb\xbf" + text.encode()
    if enc == "utf16":
        return "encoding:utf16", text.encode("utf-16")
    if enc == "latin1":
        return "encoding:latin1", (text + "description: caf\xe9\n").encode("latin-1")
    if enc == "nul":
        return "encoding:nul", text.encode().replace(b"\n", b"\n\x00", 1)
    if enc == "crlf":
        return "encoding:crlf", text.replace("\n", "\r\n").encode()
    if enc == "cr":
        return "encoding:cr", text.replace("\n", "\r").encode()
    if enc == "tabs":
        return "encoding:tabs", text.replace("  ", "\t").encode()
    return "encoding:invalid", text.encode() + b"description: \xff\xfe\x80\n"


def _curated():
    """The attacks listed in issue 10, always at the start of every seed's stream."""
    t = BASES["tanh"]
    cases = []

    def add(family, text=None, data=None, **kw):
        cases.append((family, text, data, kw))

    doc = '# """+str(__import__("os").system("touch ' + MARK + '"))+"""\n'
    add("curated:comment_docstring_breakout", doc + emit(t))
    add("curated:comment_docstring_breakout_single", "# '''+str(__import__('os').system('touch " + MARK + "'))+'''\n" + emit(t))
    add("curated:expr_comment_breakout", emit(dict(t, loss='(y - g)**2  # """+str(__import__("os").system("touch ' + MARK + '"))+"""')))
    add("curated:description_breakout", emit(dict(t, description='"""+str(__import__("os").system("touch ' + MARK + '"))+"""')))
    add("curated:newline_in_expr", emit(dict(t, graph=dict(t["graph"], d="(W @ x\n)"))))
    add("curated:newline_include_in_expr", emit(dict(t, graph=dict(t["graph"], d='(W @ x\n#include "/dev/zero"\n)'))))
    add("curated:cr_in_expr_comment", emit(dict(t, loss="(y - g)**2 # \r#include \"/dev/zero\"")))
    add("curated:backslash_comment", emit(dict(t, graph=dict(t["graph"], a="d + b # \\"))))
    add("curated:backslash_N_comment", emit(dict(t, loss="(y - g)**2 # \\N")))
    add("curated:filename_newline_static_init", emit(t),
        path=('x\nstatic int bp_p = system("touch PWNED_fn");\n.yaml',))
    add("curated:filename_docstring", emit(t), path=('"""+str(__import__("os").system("touch PWNED_fn"))+""".yaml',))
    add("curated:filename_latex_comment", emit(t), path=("dir *", "\\input{x}.yaml"))
    for nm in ("linux", "unix", "M_PI", "EOF", "HUGE_VAL", "RAND_MAX", "EXIT_FAILURE", "y0", "j1", "index"):
        s = json.loads(json.dumps(t))
        _rename(s, "b", nm)
        add(f"curated:c_macro_name:{nm}", emit(s))
    for nm in ("numpy", "json", "os", "math"):
        s = json.loads(json.dumps(t))
        _rename(s, "e", nm)
        add(f"curated:py_module_name:{nm}", emit(s))
    bomb = ["&a0 [" + ", ".join(["lol"] * 9) + "]"] + [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    add("curated:alias_bomb", emit(t) + "description: [" + ", ".join(bomb) + "]\n", heavy=True)
    for k in (13, 40):
        add(f"curated:nested_tanh:{k}", emit(dict(t, graph=dict(t["graph"], g="sum(" + "tanh(" * k + "f" + ")" * k + ")"))),
            heavy=True)
    add("curated:9**9**9", emit(dict(t, loss="(y - g)**2 * 9**9**9")), heavy=True)
    add("curated:deep_wide_inspect", emit(dict(t, graph=dict(t["graph"], **{
        "h0": "tanh(f)", **{f"h{i}": f"tanh(h{i - 1} + h{i - 1} + h{i - 1})" for i in range(1, 7)}}),
        loss="(y - g)**2 + sum(h6)")), heavy=True)
    add("curated:layers_2000", emit({"name": "deep", "inputs": {"x": [2], "y": []},
                                     "layers": [{"dense": 1, "activation": "tanh"}] * 2000 + [{"dense": 1}],
                                     "loss": "(y - z2001[0])**2"}), heavy=True)
    add("curated:constant_1e999", emit(dict(t, params=dict(t["params"], v={"shape": [3], "init": "constant(1e999)"}))))
    add("curated:sqrt_-1", emit(dict(t, loss="(y - g)**2 + sqrt(-1)")))
    add("curated:exp_100000", emit(dict(t, loss="(y - g)**2 * exp(100000)")))
    add("curated:folded_int_maximum", emit(dict(t, loss="(y - g)**2 * maximum(0, 0) + (y - g)**2")))
    add("curated:int_2**63", emit(dict(t, loss="(y - g)**2 * 9223372036854775808")))
    add("curated:esc_in_description", emit(dict(t, description="\x1b[2J\x1b]0;pwned\x07")))
    add("curated:esc_in_key", emit(dict(t, **{"\x1b[2Jkey": 1})))
    add("curated:bidi_in_name", emit(dict(t, name="abc\u202edef")))
    add("curated:bidi_in_expr_comment", emit(dict(t, loss="(y - g)**2 # \u2066\u202e }\u2069\u2066")))
    add("curated:latex_input", emit(dict(t, description="\\input{/etc/passwd}", loss="(y - g)**2 # \\input{/etc/passwd}")))
    add("curated:out_is_file", emit(t), out_kind="file")
    add("curated:out_under_file", emit(t), out_kind="under_file")
    add("curated:long_name", emit(dict(t, name="a" * 100_000)))
    add("curated:huge_int_shape", emit(t).replace("x: [3]", "x: [" + "1" + "0" * 400 + "]"))
    add("curated:jinja_ssti", emit(dict(t, description="{{ cycler.__init__.__globals__.os.popen('touch " + MARK + "').read() }}")))
    add("curated:yaml_python_tag", emit(t) + f'description: !!python/object/apply:os.system ["touch {MARK}"]\n')
    add("curated:nul_in_description", emit(dict(t, description="a\x00b")))
    add("curated:lone_surrogate", emit(t) + 'description: "\\ud800"\n')
    return cases


CURATED = _curated()


def hostile_case(index: int, seed: int = 0) -> Case:
    """Case ``index`` of the hostile stream ``seed`` (deterministic)."""
    if index < len(CURATED):
        family, text, data, kw = CURATED[index]
        return Case(index=index, family=family, text=text, data=data, verify=True, **kw)
    rng = random.Random(f"bpcompile-hostile/{seed}/{index}")
    base_key = rng.choice(sorted(BASES))
    case = Case(index=index, family="")
    if rng.random() < 0.15:
        family, payload = _yaml_trick(rng, base_key)
        if isinstance(payload, bytes):
            case.data = payload
        else:
            case.text = payload
        families = [family]
    else:
        spec = json.loads(json.dumps(BASES[base_key]))
        comments = {}
        n = 1 if rng.random() < 0.7 else rng.choice([2, 3])
        families = [_inject(rng, spec, base_key, comments) for _ in range(n)]
        if rng.random() < 0.1 and not any(isinstance(v, Raw) for v in _walk(spec)):
            try:
                case.text = json.dumps(spec, ensure_ascii=rng.random() < 0.5)
                families.append("as_json")
            except (TypeError, ValueError):
                case.text = emit(spec, rng.choice([None, '"', "'"]), comments)
        else:
            case.text = emit(spec, rng.choice([None, None, '"', "'"]), comments)
    r = rng.random()
    if r < 0.25:
        case.path = (rng.choice(FILE_NAMES),)
        families.append("filename")
    elif r < 0.32:
        case.path = (rng.choice(DIR_NAMES), rng.choice(FILE_NAMES + ["spec.yaml"]))
        families.append("dirname")
    if rng.random() < 0.05:
        case.out = rng.choice(DIR_NAMES)
        families.append("outdir")
    case.family = "+".join([f"{base_key}/{families[0]}"] + families[1:])
    return case


def _walk(v):
    yield v
    if isinstance(v, dict):
        for k, x in v.items():
            yield k
            yield from _walk(x)
    elif isinstance(v, list):
        for x in v:
            yield from _walk(x)


def hostile_cases(n: int, seed: int = 0, start: int = 0):
    return [hostile_case(i, seed) for i in range(start, start + n)]


# ---------------------------------------------------------------------------
# Checks

_LATEX_DANGER = re.compile(r"(?<!\\)(?:\\\\)*\\(input|include|write|immediate|openout|openin|read|catcode|"
                           r"def|edef|gdef|let|usepackage|special|csname)(?![A-Za-z@])")


def bad_char(text: str):
    """The first character of ``text`` a terminal or a source file should never get raw: C0/C1
    controls other than newline and tab (ESC, CR, NUL, ...), bidi and other format characters,
    line/paragraph separators, lone surrogates."""
    for ch in text:
        if ch in "\n\t":
            continue
        o = ord(ch)
        if o < 0x20 or 0x7f <= o < 0xa0 or 0xd800 <= o < 0xe000 or ch in "\u2028\u2029\ufeff" \
                or 0x200b <= o <= 0x200f or 0x202a <= o <= 0x202e or 0x2066 <= o <= 0x2069 or 0x2060 <= o <= 0x2064:
            return f"U+{o:04X}"
    return None


def _strip_c(text: str):
    """C/C++ source without its comments and string/char literals (line splices honoured);
    also the list of problems a comment can cause (a // comment continued by a trailing backslash)."""
    out, problems = [], []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = i
            while j < n and text[j] != "\n":
                j += 1
                if text[j - 1] == "\\" and j < n and text[j] == "\n":
                    problems.append("a // comment ends in a backslash (continues onto the next line)")
                    j += 1
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
            out.append(" ")
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            i = j + 1
            out.append('""')
        else:
            out.append(c)
            i += 1
    return "".join(out), problems


_C_PAYLOAD = ("PWNED", "/dev/zero", "system(", "__import__", "#define real", "constructor", "bp_pwned",
              "bp_p(", "??/", "popen", "touch ")


def check_cu(text: str):
    """Problems of a generated .cu: payload text outside comments and literals, spliced comments,
    CR or control characters anywhere."""
    problems = []
    ch = bad_char(text)
    if ch:
        problems.append(("cuda_control_char", f"raw {ch} in the .cu"))
    code, spl = _strip_c(text)
    problems += [("cuda_line_splice", p) for p in spl[:1]]
    for tok in _C_PAYLOAD:
        if tok in code:
            line = next((ln for ln in code.splitlines() if tok in ln), "")
            problems.append(("cuda_injection", f"{tok!r} outside comments: {line.strip()[:120]!r}"))
            break
    if "??/" in text:
        problems.append(("cuda_injection", "a ??/ trigraph (a line splice before C++17)"))
    return problems


def _snapshot(root: Path):
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for nm in dirnames + filenames:
            p = os.path.join(dirpath, nm)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            # a directory counts by its existence (its mtime changes when a temp file comes and goes)
            snap[os.path.relpath(p, root)] = "dir" if stat.S_ISDIR(st.st_mode) else (st.st_size, st.st_mtime_ns)
    return snap


def _markers(root: Path):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, ds, fs in os.walk(root)
                  for f in fs + ds if f.startswith(MARKER_PREFIX))


# ---------------------------------------------------------------------------
# Running one case (in a worker)


class CaseTimeout(BaseException):
    """Raised by the per-command alarm; a BaseException so that no `except Exception` hides it."""


def _on_alarm(signum, frame):
    raise CaseTimeout()


def call_cli(argv, timeout):
    """bpcompile.cli.main(argv) in this process: (exit code, stdout, stderr, problem, seconds)."""
    from bpcompile.cli import main
    out, err = io.StringIO(), io.StringIO()
    problem = None
    start = time.perf_counter()
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    code = None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except CaseTimeout:
        problem = ("timeout", f"over {timeout} s")
    except MemoryError:
        problem = ("memory", "MemoryError escaped (over the memory limit)")
    except RecursionError as e:
        problem = ("uncaught_exception", f"RecursionError: {str(e)[:200]}")
    except BaseException as e:  # noqa: BLE001 - anything escaping main is a bug
        tb = traceback.extract_tb(e.__traceback__)[-1]
        problem = ("uncaught_exception", f"{type(e).__name__}: {str(e)[:200]} at {Path(tb.filename).name}:{tb.lineno}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return code, out.getvalue(), err.getvalue(), problem, time.perf_counter() - start


@dataclass
class Options:
    timeout: float = 20.0          # seconds per command
    verify_timeout: float = 150.0  # seconds for verify: its own bounds are a 30 s SymPy budget
                                   # and 60 s for the module's calls, plus compiling twice
    memory: int = 2 << 30          # RLIMIT_AS of a worker (bytes), on top of what it maps when forked
    verify_every: int = 10         # verify every k-th case that compiles (and every curated one)
    gxx_every: int = 5             # g++ -fsyntax-only on every k-th .cu (and every suspicious one)
    cuda: bool = True
    import_batch: int = 40
    base: str = ""                 # where case directories go
    keep: bool = False             # keep case directories


def _expect_error(cmd, code, out, err, outdir: Path | None, fails):
    lines = err.strip("\n").split("\n") if err.strip() else []
    if len(lines) != 1 or not lines[0].startswith("error:"):
        fails.append(("error_not_one_line", cmd, f"exit 2 with stderr {err[:300]!r}"))
    if outdir is not None and outdir.is_dir() and any(outdir.iterdir()):
        fails.append(("written_on_error", cmd, f"exit 2 but wrote {sorted(p.name for p in outdir.iterdir())[:5]}"))


def _check_files(cmd, outdir: Path, fails):
    files = sorted(p for p in outdir.rglob("*") if p.is_file()) if outdir.is_dir() else []
    if not files:
        fails.append(("no_output", cmd, f"exit 0 but nothing in {outdir.name!r}"))
    for p in files:
        mode = p.stat().st_mode & 0o777
        if mode != 0o644:
            fails.append(("file_mode", cmd, f"{p.name} has mode {mode:o}, expected 644 (umask 022)"))
        raw = p.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            fails.append(("file_not_utf8", cmd, f"{p.name}: {e}"))
            continue
        ch = bad_char(text)
        if ch and p.suffix not in (".cu", ".c", ".h"):
            fails.append(("file_control_char", cmd, f"raw {ch} in {p.suffix} file"))
        if p.suffix == ".py":
            try:
                compile(text, str(p), "exec")
            except (SyntaxError, ValueError) as e:
                fails.append(("generated_syntax_error", cmd, f"{p.name}: {type(e).__name__}: {str(e)[:150]}"))
        if p.suffix in (".cu", ".c", ".h"):   # C and CUDA source: the same checks
            fails += [(k, cmd, d) for k, d in check_cu(text)]
    return files


def run_case(case: Case, opts: Options, progress=lambda cmd: None):
    """Run every command on ``case``; returns a dict with the failures and the modules to import."""
    T = Path(opts.base) / f"c{case.index}"
    if T.exists():
        shutil.rmtree(T)
    T.mkdir(parents=True)
    (T / "tmp").mkdir()
    spec_path = T.joinpath(*case.path)
    fails, imports, gxx, gcc = [], [], [], []
    codes = {}
    outputs = {}
    res = {"index": case.index, "family": case.family, "fails": fails, "imports": imports, "dir": str(T),
           "gxx": gxx, "compiled": False, "times": {}, "codes": codes}
    try:
        spec_path.parent.mkdir(parents=True, exist_ok=True)
        spec_path.write_bytes(case.spec_bytes(str(T / "PWNED")))
    except OSError as e:
        fails.append(("harness", "write", f"cannot write the spec file: {e}"))
        return res
    os.chdir(T)
    tempfile.tempdir = str(T / "tmp")
    os.environ["TMPDIR"] = str(T / "tmp")
    spec = str(spec_path)
    outs = {k: T / f"{case.out}_{k}" for k in ("np", "cuda", "c", "graph")}
    if case.out_kind == "file":
        outs["np"].write_text("a file\n")
        outs["cuda"].write_text("a file\n")
        outs["c"].write_text("a file\n")
    elif case.out_kind == "under_file":
        (T / "afile").write_text("a file\n")
        outs = {k: T / "afile" / k for k in outs}
    cmds = [("compile", ["compile", spec, "-o", str(outs["np"])], outs["np"])]
    if opts.cuda:
        cmds.append(("compile_cuda", ["compile", spec, "--target", "cuda", "-o", str(outs["cuda"])], outs["cuda"]))
        cmds.append(("compile_c", ["compile", spec, "--target", "c", "-o", str(outs["c"])], outs["c"]))
    cmds += [("inspect_text", ["inspect", spec], None), ("inspect_latex", ["inspect", spec, "--format", "latex"], None),
             ("inspect_json", ["inspect", spec, "--format", "json"], None),
             ("graph", ["graph", spec, "-o", str(outs["graph"] / "g.dot")], outs["graph"])]
    k = 0
    while k < len(cmds):
        cmd, argv, outdir = cmds[k]
        k += 1
        if cmd == "graph" and case.out_kind == "dir":
            outs["graph"].mkdir(exist_ok=True)
        before = _snapshot(T)
        progress(cmd)
        code, out, err, problem, secs = call_cli(argv, opts.verify_timeout if cmd == "verify" else opts.timeout)
        res["times"][cmd] = round(secs, 3)
        codes[cmd] = code
        outputs[cmd] = out
        after = _snapshot(T)
        marks = _markers(T)
        if marks:
            fails.append(("code_execution", cmd, f"marker created: {marks}"))
            for m in marks:
                with contextlib.suppress(OSError):
                    os.remove(T / m)
            after = _snapshot(T)
        if problem:
            fails.append((problem[0], cmd, problem[1]))
            if problem[0] in ("timeout", "memory"):
                # don't spend the time again on the same spec
                cmds = [c for c in cmds if c[0] in codes]
            continue
        for text, stream in ((out, "stdout"), (err, "stderr")):
            ch = bad_char(text)
            if ch:
                fails.append(("terminal_control_char", cmd, f"raw {ch} on {stream}"))
            if "Traceback (most recent call last)" in text:
                fails.append(("traceback", cmd, text[-300:]))
        if "internal compiler error" in err:
            fails.append(("internal_error", cmd, err.strip()[:300]))
        changed = sorted(p for p in set(after) | set(before) if before.get(p) != after.get(p))
        allowed = os.path.relpath(outdir, T) if outdir is not None else None
        outside = [p for p in changed if not (allowed and (p == allowed or p.startswith(allowed + os.sep)))]
        outside = [p for p in outside if not (case.out_kind == "under_file" and p == "afile")]
        if outside:
            cls = "temp_leftover" if all(p.startswith("tmp" + os.sep) for p in outside) else "written_outside_dir"
            fails.append((cls, cmd, f"{outside[:4]}"))
            for p in outside:
                if p.startswith("tmp" + os.sep):
                    with contextlib.suppress(OSError):
                        (shutil.rmtree if (T / p).is_dir() else os.remove)(T / p)
        if code == 2:
            _expect_error(cmd, code, out, err, outdir if case.out_kind == "dir" else None, fails)
            continue
        if code != 0:
            if not (cmd == "verify" and code == 1):   # verify_mismatch, below
                fails.append((f"exit_{code}", cmd, (err or out).strip()[-300:]))
            continue
        if case.out_kind != "dir" and cmd.startswith("compile"):
            fails.append(("bad_output_dir_accepted", cmd, "exit 0 with -o naming a file"))
            continue
        if cmd == "compile":
            res["compiled"] = True
            files = _check_files(cmd, outdir, fails)
            imports += [(str(p), "numpy") for p in files if p.suffix == ".py"]
            want_verify = case.verify or (opts.verify_every and case.index % opts.verify_every == 0)
            if want_verify:
                cmds.append(("verify", ["verify", spec], None))
        elif cmd in ("compile_cuda", "compile_c"):
            files = _check_files(cmd, outdir, fails)
            imports += [(str(p), "loader") for p in files if p.suffix == ".py"]
            source, built = (".cu", gxx) if cmd == "compile_cuda" else (".c", gcc)
            for p in files:
                if p.suffix == source:
                    suspicious = any(f[0].startswith("cuda_") for f in fails)
                    if suspicious or case.verify or (opts.gxx_every and case.index % opts.gxx_every == 0):
                        built.append(str(p))
        elif cmd == "inspect_latex":
            m = _LATEX_DANGER.search(out)
            if m:
                fails.append(("latex_injection", cmd, f"unescaped {m.group(0)!r} in the LaTeX output"))
        elif cmd == "inspect_json":
            try:
                json.loads(out)
            except ValueError as e:
                fails.append(("json_invalid", cmd, str(e)[:200]))
        elif cmd == "graph":
            if not (outdir / "g.dot").is_file():
                fails.append(("no_output", cmd, "exit 0 but no g.dot"))
            else:
                ch = bad_char((outdir / "g.dot").read_text("utf-8", "replace"))
                if ch:
                    fails.append(("file_control_char", cmd, f"raw {ch} in the .dot file"))
    # the commands must agree on whether the spec is good
    c0 = codes.get("compile")
    for cmd in ("inspect_text", "inspect_latex", "inspect_json", "graph"):
        if cmd in codes and c0 in (0, 2) and codes[cmd] in (0, 2) and codes[cmd] != c0 and case.out_kind == "dir":
            fails.append(("commands_disagree", cmd, f"compile exit {c0}, {cmd} exit {codes[cmd]}"))
    if codes.get("verify") == 2 and c0 == 0:
        fails.append(("commands_disagree", "verify", "compile exit 0, verify exit 2"))
    if codes.get("verify") == 1:
        if "is not finite (inf or nan) at the checked point" in outputs.get("verify", ""):
            # the spec overflows at the random point (y ** -(2**63)): verify says it cannot check
            fails.append(("nonfinite_value", "verify", "verify: the loss is not finite at its point"))
        else:
            fails.append(("verify_mismatch", "verify", "verify found a gradient mismatch (exit 1)"))
    for cu in gxx:
        progress("g++")
        try:
            r = subprocess.run(["g++", "-std=c++20", "-fsyntax-only", "-x", "c++", "-include", str(EMULATION_H), cu],
                               capture_output=True, text=True, timeout=60, cwd=T, errors="replace")
            if r.returncode != 0:
                first = next((ln for ln in r.stderr.splitlines() if "error" in ln), r.stderr[:200])
                fails.append(("cuda_does_not_compile", "g++", first[:300]))
        except subprocess.TimeoutExpired:
            fails.append(("cuda_does_not_compile", "g++", "g++ -fsyntax-only ran over 60 s (#include of a device?)"))
    for c in gcc:
        progress("gcc")
        try:
            r = subprocess.run(["gcc", "-std=c99", "-fsyntax-only", "-Wall", "-Wextra", "-Wpedantic", "-Werror", c],
                               capture_output=True, text=True, timeout=60, cwd=T, errors="replace")
            if r.returncode != 0:
                first = next((ln for ln in r.stderr.splitlines() if "error" in ln), r.stderr[:200])
                fails.append(("c_does_not_compile", "gcc", first[:300]))
        except subprocess.TimeoutExpired:
            fails.append(("c_does_not_compile", "gcc", "gcc -fsyntax-only ran over 60 s (#include of a device?)"))
    return res


# ---------------------------------------------------------------------------
# Import checks: several generated modules per fresh subprocess

IMPORTER = r'''
import importlib.util, json, os, signal, sys, resource
import numpy as np
sys.dont_write_bytecode = True
items = json.load(sys.stdin)
def alarm(*a):
    raise TimeoutError("import or call over 20 s")
signal.signal(signal.SIGALRM, alarm)
for i, (path, kind, cwd) in enumerate(items):
    os.chdir(cwd)
    status, detail = "ok", ""
    signal.alarm(20)
    try:
        spec = importlib.util.spec_from_file_location(f"bp_hostile_{os.getpid()}_{i}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        if kind == "numpy":
            status = "call_error"
            rng = np.random.default_rng(0)
            params = mod.init_params(0)
            labels = getattr(mod, "LABEL_CLASSES", {})
            inputs = {k: (rng.integers(0, labels[k], (3, *s)) if k in labels else
                          rng.standard_normal((3, *s)).astype(mod.DTYPE)) for k, s in mod.INPUT_SHAPES.items()}
            mod.predict(params, **inputs)
            value, grads = mod.value_and_grad(params, **inputs)
            status = "ok"
            if not all(np.all(np.isfinite(v)) for v in params.values()):
                status, detail = "nonfinite_init", "init_params gives non-finite values"
            elif not np.isfinite(value) or not all(np.all(np.isfinite(g)) for g in grads.values()):
                status, detail = "nonfinite_value", f"loss {value!r} or a gradient is not finite at a random point"
    except BaseException as e:
        if status == "ok":
            status = "import_error"
        detail = f"{type(e).__name__}: {str(e)[:200]}"
    finally:
        signal.alarm(0)
    print(json.dumps([i, status, detail]), flush=True)
'''


def import_batch(items, memory):
    """[(path, kind, cwd)] -> {i: (status, detail)}; a subprocess that dies blames the module it was on."""
    results = {}
    todo = list(range(len(items)))
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               BPCOMPILE_CUDA_EMULATE="1")
    while todo:
        sub = [items[i] for i in todo]
        try:
            r = subprocess.run([sys.executable, "-c", IMPORTER], input=json.dumps(sub), capture_output=True,
                               text=True, timeout=30 + 25 * len(sub), env=env, cwd="/",
                               preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (memory, memory)))
            out, rc, err = r.stdout, r.returncode, r.stderr
        except subprocess.TimeoutExpired as e:
            out, rc, err = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), "timeout", ""
        done = set()
        for line in out.splitlines():
            try:
                j, status, detail = json.loads(line)
            except ValueError:
                continue
            results[todo[j]] = (status, detail)
            done.add(j)
        rest = [todo[j] for j in range(len(todo)) if j not in done]
        if rest:
            # the first one not reported killed the importer (os._exit, a signal, a hang)
            last = (err or "").strip().splitlines()[-1:] or [""]
            results[rest[0]] = ("import_killed", f"the importing process ended ({rc}) on this module: {last[0][:200]}")
            rest = rest[1:]
        todo = rest
    return results


# ---------------------------------------------------------------------------
# The pool: forked workers with a memory limit, a hard deadline per command, recycled


def _mapped_bytes() -> int:
    """This process's address space in bytes (VmSize), 0 where /proc is not there."""
    try:
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:")), 0)
    except OSError:
        return 0


def _worker(conn, opts: Options, seed: int):
    os.environ.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    # the budget on top of what this forked process already maps: earlier tests in the same
    # pytest process leave hundreds of MB mapped (threads' malloc arenas, 64 MB each; a Dask
    # cluster's scheduler), and an absolute limit left a case too little to start a thread
    with contextlib.suppress(ValueError, OSError):
        limit = opts.memory + _mapped_bytes()
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    os.umask(0o022)
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000))
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        kind, payload = task
        try:
            if kind == "case":
                case = hostile_case(payload, seed)
                res = run_case(case, opts, progress=lambda cmd: conn.send(("progress", cmd)))
            else:
                os.chdir("/")
                res = import_batch(payload, opts.memory)
            conn.send(("done", res))
        except BaseException as e:  # noqa: BLE001 - a harness bug: report, keep the worker
            conn.send(("done", {"index": payload if kind == "case" else -1, "family": "?", "imports": [],
                                "gxx": [], "dir": "", "compiled": False, "times": {},
                                "fails": [("harness", "worker", f"{type(e).__name__}: {e}\n{traceback.format_exc()[-800:]}")]}))


# Reported, not counted as failures: a spec may describe a model that overflows at random points
# (exp(exp(exp(x)))) or that is too large to run here (10**9 classes); that is the model's
# business, not the compiler's (SECURITY.md: what is not promised).
NOTES = {"nonfinite_value", "runtime_memory"}


@dataclass
class Summary:
    n: int = 0
    results: dict = field(default_factory=dict)      # index -> result
    seconds: float = 0.0

    @property
    def failures(self):
        return [(i, f) for i, r in sorted(self.results.items()) for f in r["fails"] if f[0] not in NOTES]

    @property
    def notes(self):
        return [(i, f) for i, r in sorted(self.results.items()) for f in r["fails"] if f[0] in NOTES]

    @property
    def failing_cases(self):
        return sorted({i for i, _ in self.failures})

    def outcomes(self):
        """How the compile command ended: {exit code or problem: count}."""
        out = {}
        for r in self.results.values():
            k = str(r.get("codes", {}).get("compile", "none"))
            out[k] = out.get(k, 0) + 1
        return out

    def classes(self, notes=False):
        out = {}
        for i, (cls, cmd, detail) in (self.notes if notes else self.failures):
            out.setdefault(cls, []).append((i, cmd, detail))
        return dict(sorted(out.items(), key=lambda kv: -len(kv[1])))


def run_cases(indices, seed=0, opts: Options | None = None, workers=None, log=None, max_tasks=150):
    """Run the hostile cases ``indices`` of stream ``seed``; returns a Summary."""
    import multiprocessing as mp
    opts = opts or Options()
    own_base = not opts.base
    if own_base:
        opts.base = tempfile.mkdtemp(prefix="bphostile_")
    log = log or (lambda msg: None)
    ctx = mp.get_context("fork")
    workers = workers or os.cpu_count() or 2
    summary = Summary(n=len(indices))
    start = time.perf_counter()
    tasks = [("case", i) for i in indices]
    pending_imports = []      # (path, kind, cwd, case index)
    slots = []                # [proc, conn, task, deadline, ntasks, current cmd]
    cwd = os.getcwd()

    def spawn():
        a, b = ctx.Pipe()
        p = ctx.Process(target=_worker, args=(b, opts, seed), daemon=True)
        p.start()
        b.close()
        return [p, a, None, None, 0, None]

    def finish_case(res):
        summary.results[res["index"]] = res
        for path, kind in res["imports"]:
            pending_imports.append((path, kind, res["dir"], res["index"]))
        if not res["imports"] and not opts.keep and res["dir"] and not res["fails"]:
            shutil.rmtree(res["dir"], ignore_errors=True)
        done = len(summary.results)
        if done % 250 == 0 or done == summary.n:
            bad = len(summary.failing_cases)
            log(f"  {done}/{summary.n} cases, {bad} failing, {time.perf_counter() - start:.0f} s")
        if done % 1000 == 0 and done < summary.n:
            summary.seconds = time.perf_counter() - start
            log(report(summary, seed, examples=1))

    def finish_imports(batch, results):
        for j, (path, kind, d, idx) in enumerate(batch):
            status, detail = results.get(j, ("import_killed", "no result"))
            fails = summary.results[idx]["fails"]
            marks = _markers(Path(d))
            if marks:
                fails.append(("code_execution", f"import {kind}", f"marker created on import: {marks}"))
            if status in ("import_error", "import_killed"):
                fails.append((f"{status}_{kind}", "import", detail))
            elif status == "call_error" and detail.startswith("MemoryError"):
                # the model is that large at run time (onehot over 10**9 classes): the spec's business
                fails.append(("runtime_memory", "import", detail))
            elif status == "call_error":
                fails.append(("call_error", "import", detail))
            elif status.startswith("nonfinite"):
                fails.append((status, "import", detail))
        for idx in {b[3] for b in batch}:
            if not summary.results[idx]["fails"] and not opts.keep:
                shutil.rmtree(summary.results[idx]["dir"], ignore_errors=True)

    try:
        for _ in range(workers):
            slots.append(spawn())
        while tasks or pending_imports or any(s[2] for s in slots):
            for s in slots:
                if s[2] is None:
                    if len(pending_imports) >= opts.import_batch or (not tasks and pending_imports):
                        # a case's modules go in one batch: its directory is removed when its batch ends
                        cut = min(opts.import_batch, len(pending_imports))
                        while cut < len(pending_imports) and pending_imports[cut][3] == pending_imports[cut - 1][3]:
                            cut += 1
                        batch, pending_imports[:] = pending_imports[:cut], pending_imports[cut:]
                        s[2] = ("imports", batch)
                        s[1].send(("imports", [b[:3] for b in batch]))
                        s[3] = time.monotonic() + 60 + 30 * len(batch)
                    elif tasks:
                        s[2] = tasks.pop(0)
                        s[1].send(s[2])
                        s[3] = time.monotonic() + opts.timeout + 15
                    s[5] = None
            busy = [s for s in slots if s[2] is not None]
            if not busy:
                continue
            wait = max(0.05, min(s[3] for s in busy) - time.monotonic())
            ready = mp.connection.wait([s[1] for s in busy], timeout=wait)
            now = time.monotonic()
            for s in busy:
                dead = False
                if s[1] in ready:
                    try:
                        kind, msg = s[1].recv()
                    except (EOFError, OSError):
                        dead = True
                    else:
                        if kind == "progress":
                            limit = opts.verify_timeout if msg == "verify" else opts.timeout
                            s[5], s[3] = msg, now + limit + 15 + (60 if msg == "g++" else 0)
                            continue
                        task = s[2]
                        s[2] = None
                        s[4] += 1
                        if task[0] == "case":
                            finish_case(msg)
                        else:
                            if "fails" in msg:   # the import batch itself failed: a harness bug
                                log(f"harness error in an import batch: {msg['fails']}")
                                msg = {j: ("import_killed", "harness error") for j in range(len(task[1]))}
                            finish_imports(task[1], {int(k): v for k, v in msg.items()})
                        if s[4] >= max_tasks:
                            s[1].send(None)
                            s[0].join(5)
                            slots[slots.index(s)] = spawn()
                        continue
                if dead or now > s[3]:
                    s[0].kill()
                    s[0].join()
                    task, cmd = s[2], s[5]
                    why = "worker_killed" if dead else "hard_timeout"
                    detail = (f"the worker died (exit {s[0].exitcode}: memory limit, a crash or a C stack overflow)"
                              if dead else f"no answer for {opts.timeout + 15:.0f} s (stuck in C code?)")
                    if task[0] == "case":
                        T = Path(opts.base) / f"c{task[1]}"
                        fails = [(why, cmd or "?", detail)]
                        marks = _markers(T) if T.exists() else []
                        if marks:
                            fails.append(("code_execution", cmd or "?", f"marker created: {marks}"))
                        finish_case({"index": task[1], "family": hostile_case(task[1], seed).family, "fails": fails,
                                     "imports": [], "gxx": [], "dir": str(T), "compiled": False, "times": {}})
                    else:
                        finish_imports(task[1], {j: ("import_killed", why) for j in range(len(task[1]))})
                    slots[slots.index(s)] = spawn()
    finally:
        for s in slots:
            with contextlib.suppress(Exception):
                s[1].send(None)
        for s in slots:
            s[0].join(2)
            if s[0].is_alive():
                s[0].kill()
        os.chdir(cwd)
        if own_base and not opts.keep:
            shutil.rmtree(opts.base, ignore_errors=True)
    summary.seconds = time.perf_counter() - start
    return summary


def report(summary: Summary, seed=0, examples=3, repro_dir=None):
    """The summary as text: "N cases, F failures" and each failure class with its smallest cases."""
    done = len(summary.results)
    lines = [f"{done}{'' if done == summary.n else f' (of {summary.n})'} cases, {len(summary.failing_cases)} failures "
             f"({len(summary.failures)} findings in {len(summary.classes())} classes), {summary.seconds:.0f} s",
             "  compile exit codes: " + ", ".join(f"{k}: {v}" for k, v in sorted(summary.outcomes().items()))]
    groups = [(cls, items, "") for cls, items in summary.classes().items()]
    groups += [(cls, items, " (note, not a failure)") for cls, items in summary.classes(notes=True).items()]
    for cls, items, note in groups:
        cases = sorted({i for i, _, _ in items}, key=lambda i: _case_size(hostile_case(i, seed)))
        cmds = sorted({c for _, c, _ in items})
        lines.append(f"  {cls}{note}: {len(cases)} cases ({', '.join(cmds)})")
        for i in cases[:examples]:
            c = hostile_case(i, seed)
            d = next(d for j, _, d in items if j == i)
            lines.append(f"      case {i} [{c.family}] path={'/'.join(c.path)!r}: {d[:160]!r}")
        if repro_dir:
            _write_repros(Path(repro_dir) / cls, cases[:examples], seed, items)
    return "\n".join(lines)


def _case_size(c: Case):
    return len(c.text or c.data or "") + len("".join(c.path))


def _write_repros(d: Path, cases, seed, items):
    d.mkdir(parents=True, exist_ok=True)
    for i in cases:
        c = hostile_case(i, seed)
        (d / f"case{i}.yaml").write_bytes(c.spec_bytes("/tmp/PWNED"))
        meta = {"case": i, "seed": seed, "family": c.family, "spec_path": list(c.path), "out": c.out,
                "out_kind": c.out_kind, "findings": [(cmd, det) for j, cmd, det in items if j == i]}
        (d / f"case{i}.json").write_text(json.dumps(meta, indent=1, ensure_ascii=True))
