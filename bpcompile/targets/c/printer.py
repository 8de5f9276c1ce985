"""Stage 5 (C target): print programs as a C99 source file, its header and a Python loader.

The same programs as the other targets (``program.py``), lowered by the kernel
printer C-like targets share (``clike/``) in the language ``C`` below.  The base
language (``clike.CStyle``) is already plain single-threaded C99: a fused
elementwise ``map`` kernel is one loop, a reduction a loop per output, a
contraction a reduction (``gemm`` returns None: a GEMM kernel of our own, or a
CBLAS call, is added by overriding that one method).  What C adds is the entry
point around the kernels:

* the caller provides the workspace: ``<name>_workspace_size(N)`` says how many
  bytes it needs for batch size N, and each entry point takes the batch size and a
  pointer to that memory (``int batch_size, void* workspace``), laying its buffers
  out in it on every call (a few additions): no allocation, no static mutable
  state, so the functions are re-entrant and thread-safe (one workspace per
  concurrent call);
* the arguments are checked (batch size, NULL pointers, the workspace's alignment)
  and a negative error code returned, which ``<name>_error_string`` explains.

The header ``<name>.h`` declares the API with ``double`` / ``float`` (no typedef of
its own, so headers of several modules go in one translation unit) and is what an
embedding program includes; ``<name>.c`` includes it, so the two cannot disagree.
"""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path

from ..base import Code
from ..clike import environment as clike_environment
from ..clike import CExprPrinter, CStyle, check_c_source, ident, line_comment, print_module, token
from ..clike.gemm import gemm_call, gemm_source
from ..python import loader_fields


class CTargetExprPrinter(CExprPrinter):
    """C99 math as the C target prints it: tanh as ``bp_tanh``, the module's own
    (module.c.j2: expm1 by a polynomial and an exponent put in by bit arithmetic,
    no branch and no call), so that a loop of them vectorises; libm's tanh is a
    call per element, about ten times slower, and tanh is most of an MLP's
    elementwise work.  Its error is a few ulp (tests/test_c_target.py measures it
    against NumPy's over the whole range)."""

    def fn(self, name: str) -> str:
        return "bp_tanh" if name == "tanh" else super().fn(name)

    def _print_tanh(self, e):
        return f"bp_tanh({self._print(e.args[0])})"


class C(CStyle):
    """C99 as the C target writes it: CStyle's kernels, and entry points that take
    the batch size and a caller-provided workspace instead of a workspace struct."""

    name = "C"
    expr_printer = CTargetExprPrinter
    nested_loops = True   # elementwise kernels as loop nests (clike.language.loop_nest)
    reuse_buffers = True  # dead buffers reused (clike.host.share_buffers): a smaller working set
    # the entry points' own parameters (a value named so is printed as v_<name>)
    reserved = CStyle.reserved | {"batch_size", "workspace", "uintptr_t"}

    def entry_params(self, module: str) -> list:
        return [("int batch_size", "N, the batch size (at least 1)"),
                ("void* workspace", f"{module}_workspace_size(N) bytes of the caller's, aligned as a double")]

    def entry_head(self, module: str, fn: str, params: list, outputs: list) -> list:
        # the signature as CStyle prints it, then the checks and the workspace laid out
        head = super().entry_head(module, fn, params, outputs)
        signature = head[:head.index("{") + 1]
        pointers = ["workspace"] + outputs
        return signature + [
            "    if (" + " || ".join(f"{p} == NULL" for p in pointers) + ") return BP_ERROR_NULL_POINTER;",
            "    if (batch_size < 1) return BP_ERROR_BATCH_SIZE;",
            "    if ((uintptr_t)workspace % sizeof(double) != 0) return BP_ERROR_ALIGNMENT;",
            f"    {module}_workspace bp_ws;",
            f"    {module}_workspace* const ws = &bp_ws;",
            "    bp_ws.N = batch_size;",
            f"    {module}_layout(ws, (char*)workspace);",
            "    (void)ws;",
        ]

    def gemm(self, g):
        # our blocked kernel (clike/gemm.py), or CBLAS's when built with -DBPC_CBLAS
        what = f"{g.out} = {g.left}{'^T' if g.trans_left else ''} @ {g.right}{'^T' if g.trans_right else ''}"
        per = (" for each of " + str(g.count) if g.count != "N" else ", per example") if g.batched else ""
        per += ", summed" if g.accumulate else ""
        return [line_comment(what + per + " (GEMM)"), gemm_call(g)]


LANG = C()


# ---------------------------------------------------------------------------
# The check of a generated file: check_c_source, after the template's own
# preprocessor lines that it does not know (the include guard, the header's
# include, C++'s extern "C"), each one exactly as the template prints it.


def extra_directives(name: str) -> set:
    guard = guard_macro(name)
    return {f"#ifndef {guard}", f"#define {guard}", f'#include "{name}.h"', "#ifdef __cplusplus"}


def guard_macro(name: str) -> str:
    return f"BPC_{ident(name).upper()}_H"


def check_c_file(text: str, what: str, name: str) -> None:
    allowed = extra_directives(name)
    check_c_source("\n".join("" if line in allowed else line for line in text.split("\n")), what)


def environment():
    """The Jinja2 environment of the C target's templates (``clike.environment``: one
    escaping filter per place spec text can stand, a bare string refused)."""
    return clike_environment("c")


def _declarations(function: str) -> list:
    """The (declaration, comment) of each parameter of an entry point printed by
    ``C.entry_head``: one a line up to the line ``{``."""
    params = []
    for line in function.split("\n")[1:]:
        if line == "{":
            break
        decl, _, comment = line.strip().partition("  // ")
        params.append((decl.rstrip().rstrip(",)"), comment))
    return params


_REAL = re.compile(r"\breal\b")


def prototype(function: str, real: str) -> list:
    """The declaration of an entry point printed by ``C.entry_head``, for the header:
    one parameter a line with its comment, ``real`` spelled as the dtype (the header
    has no typedef), ending in ``;``."""
    head = function.split("\n", 1)[0]
    params = [(_REAL.sub(real, decl), comment) for decl, comment in _declarations(function)]
    width = max(len(d) for d, _ in params) + 2
    lines = [head]
    for i, (decl, comment) in enumerate(params):
        decl += "," if i < len(params) - 1 else ");"
        lines.append(f"    {decl.ljust(width)}  // {comment}")
    return lines


def packed(module: str, fn: str, function: str) -> tuple:
    """(definition, declaration) of ``<module>_<fn>_packed``: the entry point with its
    arrays passed as one array of pointers, in the order of its parameters after the
    workspace.  For callers that build argument lists at run time (the loader's
    Python binding, a foreign-function interface): one signature for every module."""
    arrays = _declarations(function)[2:]
    signature = f"int {module}_{fn}_packed(int batch_size, void* workspace, void* const* arrays)"
    casts = [(f"({decl.rsplit(' ', 1)[0]})arrays[{i}]", decl.rsplit(" ", 1)[1]) for i, (decl, _) in enumerate(arrays)]
    width = max(len(c) for c, _ in casts) + 2
    body = [f"    return {module}_{fn}(batch_size, workspace,"]
    body += [f"        {(c + (',' if i < len(casts) - 1 else ');')).ljust(width)}  // {nm}"
             for i, (c, nm) in enumerate(casts)]
    return "\n".join([signature, "{", *body, "}"]), signature + ";"


@functools.lru_cache(maxsize=1)
def binding_source() -> str:
    """The C source of bpc_binding (binding.c), which every loader carries in a raw
    string and builds once per cache: the loader imports nothing of bpcompile."""
    text = (Path(__file__).parent / "binding.c").read_text(encoding="utf-8")
    if "'''" in text or text.endswith("\\"):
        raise ValueError("binding.c cannot stand in a raw string between triple single quotes")
    return text


def render(low, adj, programs, version: str) -> dict:
    """{filename: text}: the .c source, its header and the Python loader.

    The loader carries the sha256 of the .c and the .h it goes with and refuses to
    build any others (a pair torn apart would run wrong)."""
    from ...ir.equations import docstring_lines
    spec = low.spec
    if spec.dtype not in ("float32", "float64") or spec.reduction not in ("mean", "sum"):
        raise ValueError(f"C target: dtype {spec.dtype!r}, reduction {spec.reduction!r}")
    printed = print_module(low, programs, LANG)
    functions = printed.functions
    name = ident(spec.name)
    real = "float" if spec.dtype == "float32" else "double"

    forward_lines, adjoint_lines = docstring_lines(low, adj)
    env = environment()
    spec_text = spec.text.strip("\n")
    code = lambda lines: [Code(x) for x in lines]   # noqa: E731 - printed by this module
    used = "\n".join(printed.kernels) + "\n".join(functions.values())
    common = dict(name=name, version=token(version), spec_file=spec.file or "", dtype=ident(spec.dtype),
                  real=ident(real), guard=Code(guard_macro(name)))
    reads = {fn: [nm for nm in spec.inputs if nm in {v.name for v in programs[fn].inputs}]
             for fn in functions}
    packs = {fn: packed(name, fn, text) for fn, text in functions.items()}
    header = env.get_template("module.h.j2").render(
        **common, spec_lines=spec_text.splitlines(), reduction=ident(spec.reduction),
        forward_equations=forward_lines, adjoint_equations=adjoint_lines,
        prototypes=[(Code(fn), [Code(x) for x in prototype(text, real)], Code(", ".join(reads[fn]) or "no input"))
                    for fn, text in functions.items()],
        packed=[Code(packs[fn][1]) for fn in functions],
    )
    check_c_file(header, f"{spec.name}.h", spec.name)
    source = env.get_template("module.c.j2").render(
        **common, uses_max="bp_max(" in used, uses_tanh="bp_tanh(" in used, kernels=code(printed.kernels), structs=code(printed.structs),
        gemm=Code(gemm_source((spec.dtype,))) if any("gemm" in fp.uses for fp in printed.printers.values()) else None,
        layout=code(printed.layout), functions=code(functions.values()),
        packed=[Code(packs[fn][0]) for fn in functions],
    )
    check_c_file(source, f"{spec.name}.c", spec.name)

    for nm in list(spec.inputs) + list(spec.params) + list(spec.wrt):
        ident(nm)

    def sha(text):
        return Code(hashlib.sha256(text.encode("utf-8")).hexdigest())

    loader = env.get_template("loader.py.j2").render(
        **common, reduction=ident(spec.reduction),
        source_sha256=sha(source), header_sha256=sha(header), **loader_fields(spec, programs),
        reads=Code("{" + ", ".join(f"{fn!r}: {tuple(r)!r}" for fn, r in reads.items()) + "}"),
        binding_source=Code(binding_source()),
    )
    return {f"{spec.name}.c": source, f"{spec.name}.h": header, f"{spec.name}_c.py": loader}


__all__ = ["C", "CExprPrinter", "LANG", "check_c_file", "line_comment", "render"]
