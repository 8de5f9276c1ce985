"""Storage and the host function: where kernel outputs live (the caller's arrays,
buffers of the workspace, aliases), how a kernel reads a value, and the entry
point (predict, loss or value_and_grad) around the kernels, with the workspace
layout the three share."""

from __future__ import annotations

import re

from ...ir.program import Kernel, Program, Value
from ..base import lowering_table
from .language import count_expr, full_dims, line_comment, shape_text, size_of
from .module import CModule
from .reductions import fusable_sums, fused_order


class Storage:
    """The part of a function printer every other part uses: the C text of a
    value, storage for kernel outputs, reading a value inside a kernel, and the
    dispatch of a kernel to its ``@lowers`` method."""

    def __init__(self, mod: CModule, fn: str, program: Program, bound: dict):
        self.mod = mod
        self.lang = mod.lang
        self.fn = fn
        self.program = program
        self.bound = bound          # value name -> C parameter it is written to
        self.storage: dict = {}     # value name -> size expression (elements) in the workspace
        self.alias: dict = {}       # value name -> name of the value it shares memory with
        self.lines: list = []       # the host function's body so far
        self.uses: set = set()      # what the function needs declared ("gemm")
        self.host = host_scalars(program, bound)   # names of scalars computed on the host
        self.fused: dict = {}                # a map kernel -> the sum made in its loop nest (host_function)
        self.order: list = program.kernels   # the kernels in the order they run (the sums moved up)

    # -- names ---------------------------------------------------------------
    def c(self, v: Value) -> str:
        if v.kind == "const":
            return self.printer().doprint(v.literal)
        if v.kind == "batch_size":
            return "N"
        return self.mod.cname(v.name)

    def printer(self, leaf_text=None):
        """The language's printer of elementwise math, leaves printed as ``leaf_text`` says."""
        return self.lang.expr(self.mod.dtype, leaf_text or {})

    def need(self, v: Value):
        """Storage for kernel output ``v`` (unless it is the caller's array)."""
        if v.name in self.bound or v.name in self.alias:
            return
        n = size_of(v.shape)
        self.storage.setdefault(v.name, (f"N * {n}" if n != 1 else "N") if v.batched else f"{n}")

    def read(self, v: Value, idx: str, inputs: list) -> str:
        """The C text reading ``v`` at offset ``idx`` inside a kernel, adding the
        kernel parameter it needs to ``inputs`` ([(declaration, host argument)])."""
        if v.kind == "const":
            return self.c(v)
        if v.name in self.host:
            if (f"const real {self.c(v)}", self.c(v)) not in inputs:
                inputs.append((f"const real {self.c(v)}", self.c(v)))
            return self.c(v)
        if v.kind == "batch_size":
            if ("const real N", "(real)N") not in inputs:
                inputs.append(("const real N", "(real)N"))
            return "N"
        restrict = self.lang.restrict
        decl = (f"const int* {restrict} {self.c(v)}" if v.dtype == "int"
                else f"const real* {restrict} {self.c(v)}")
        if (decl, self.c(v)) not in inputs:
            inputs.append((decl, self.c(v)))
        return f"{self.c(v)}[{idx}]"

    def out_param(self, out: Value) -> str:
        """The kernel parameter an output is written through."""
        return f"real* {self.lang.restrict} {self.c(out)}"

    # -- kernels -------------------------------------------------------------
    def kernel(self, k: Kernel):
        getattr(self, lowering_table(type(self))[k.op])(k)


def host_scalars(program: Program, bound: dict) -> set:
    """Names of the unbatched scalars that depend on the batch size and constants
    only (1/N, -1/N): the host computes them and passes them to kernels by value,
    instead of launching a one-thread kernel.  Not those read through a pointer
    (a GEMM, a copy, a reshape) or returned."""
    host: set = set()
    for k in program.kernels:
        if k.op == "map" and not k.out.batched and k.out.shape == () and k.out.name not in bound \
                and all(a.kind in ("batch_size", "const") or a.name in host for a in k.args):
            host.add(k.out.name)
    by_pointer = {a.name for k in program.kernels if k.op in ("contract", "copy", "reshape") for a in k.args}
    returned = {v.name for v in (program.loss, program.output) if v is not None}
    changed = True
    while changed:
        # a scalar computed on the host cannot come from a kernel's output
        changed = False
        for k in program.kernels:
            if k.out.name in host and (k.out.name in by_pointer or k.out.name in returned or
                                       any(a.kind not in ("batch_size", "const") and a.name not in host
                                           for a in k.args)):
                host.discard(k.out.name)
                changed = True
    return host


# ---------------------------------------------------------------------------
# The entry points


def signature_parts(mod: CModule):
    """([(declaration, comment)] of the params, the same of the inputs)."""
    spec = mod.spec
    params = [(f"const real* {mod.cname(p)}", f"{p} {list(d.shape)}") for p, d in spec.params.items()]
    inputs = []
    for nm, d in spec.inputs.items():
        if d.is_tokens:
            inputs.append((f"const int* {mod.cname(nm)}",
                           f"{nm} [N{''.join(', ' + str(x) for x in d.shape)}], int32 tokens in [0, {d.classes})"))
        elif d.is_label:
            inputs.append((f"const int* {mod.cname(nm)}", f"{nm} [N], int32 labels in [0, {d.classes})"))
        else:
            inputs.append((f"const real* {mod.cname(nm)}", f"{nm} [N{''.join(', ' + str(x) for x in d.shape)}]"))
    return params, inputs


def host_function(mod: CModule, fn: str, program: Program, printer_class):
    """(The C text of one entry point, its function printer)."""
    lang = mod.lang
    params, inputs = signature_parts(mod)
    bound = {}
    extra = []
    made = {k.out.name: k for k in program.kernels}
    out_param = None
    if fn == "predict":
        v = program.output
        k = made.get(v.name)
        if v.kind == "temp" and k is not None and k.op != "reshape":
            out_param = mod.cname(v.name)
            bound[v.name] = out_param
        else:
            out_param = "_out"
        extra.append((f"real* {out_param}", f"output: {v.name} {shape_text(v)}"))
    else:
        extra.append(("double* loss_out", "host: L"))
    if fn == "value_and_grad":
        for nm, v in program.grads.items():
            bound[v.name] = mod.cname(v.name)
            extra.append((f"real* {mod.cname(v.name)}", f"dL/d{nm} {shape_text(v)}"))
    fp = printer_class(mod, fn, program, bound)
    fp.fused = fusable_sums(program, lang, fp.host)
    fp.order = fused_order(program.kernels, fp.fused)
    sums = set(fp.fused.values())
    phase = None
    for k in fp.order:
        if k in sums:
            continue   # made by its map's kernel
        if k.phase != phase:
            phase = k.phase
            fp.lines.append("")
            fp.lines.append("// forward pass" if phase == "forward" else
                            "// backward pass: adjoints in reverse topological order (x_bar = dL/dx)")
        fp.lines += [line_comment(n) for n in k.notes]
        if k in fp.fused:
            fp.lines += [line_comment(n) for n in fp.fused[k].notes]
            fp.map_and_sum(k, fp.fused[k])
        else:
            fp.kernel(k)
    tail = []
    if fn == "predict":
        v = program.output
        if out_param == "_out":
            n = count_expr(full_dims(v))
            if v.kind == "const":
                tail.append(lang.fill("_out", f"(real){fp.c(v)}", n))
            else:
                tail.append(lang.copy("_out", fp.c(v), f"(size_t)({n})"))
    else:
        tail += lang.loss_to_host(fp.c(program.loss), program.loss.kind == "const")
    body = fp.lines + tail
    # declarations: the workspace's buffers, then aliases in program order
    decls = []
    for nm in fp.storage:
        decls.append(f"real* const {mod.cname(nm)} = ws->{fn}.{mod.cname(nm)};")
    for nm, src in fp.alias.items():
        decls.append(f"const real* const {mod.cname(nm)} = {mod.cname(src)};")
    text = "\n".join(body)
    used_n = re.search(r"\bN\b", text + "\n".join(decls)) is not None
    pre = []
    if used_n:
        pre.append(f"const int N = {lang.batch_size};")
    pre += lang.function_prologue(fp.uses)
    # unused arguments, so that no compiler warns
    for decl, _ in params + inputs:
        pname = decl.split("*")[-1].strip()
        if not re.search(rf"\b{re.escape(pname)}\b", text + "\n".join(decls)):
            pre.append(f"(void){pname};")
    outputs = [d.split("*")[-1].strip() for d, _ in extra]
    lines = lang.entry_head(mod.name, fn, lang.entry_params(mod.name) + params + inputs + extra, outputs)
    lines += [f"    {x}" for x in pre + decls]
    lines += [f"    {x}" if x else "" for x in body]
    lines += ["    return 0;", "}"]
    return "\n".join(lines), fp


def lifetimes(fp) -> dict:
    """{buffer (a name in fp.storage): (the first kernel writing it, the last kernel
    reading it)}, kernels numbered in the order they run (``fp.order``: a sum made
    in its map's kernel counts as that kernel); a read through an alias (a
    reshape) is a read of the buffer, and the loss and predict's output are read
    after the last kernel.  A buffer the function does not write lives throughout."""
    def root(name):
        while name in fp.alias:
            name = fp.alias[name]
        return name
    kernels = fp.order
    sums = set(fp.fused.values())   # each runs in its map's kernel, the one before it in fp.order
    first, last = {}, {}
    for i, k in enumerate(kernels):
        if k in sums:
            i -= 1
        out = root(k.out.name)
        first.setdefault(out, i)
        last[out] = max(last.get(out, i), i)
        for a in k.args:
            last[root(a.name)] = i
    end = len(kernels)
    for v in (fp.program.loss, fp.program.output):
        if v is not None:
            last[root(v.name)] = end
    return {nm: (first.get(nm, 0), last.get(nm, end) if nm in first else end) for nm in fp.storage}


def share_buffers(fp) -> dict:
    """{buffer: the earlier buffer whose memory it takes} for a function's buffers:
    one whose last read comes before another's first write, of the same size, gives
    that one its memory (first fit, in order of first write).  Fewer, reused
    buffers keep a deep network's working set in cache (32 layers x 64 wide at
    batch 64: 4.2 MB of buffers without, about 1 MB with).  A kernel's output
    never shares with its arguments: their lives meet at that kernel."""
    life = lifetimes(fp)
    order = sorted(fp.storage, key=lambda nm: life[nm][0])
    slots: list = []    # [owner, size, last read of its current occupant]
    shared = {}
    for nm in order:
        start, stop = life[nm]
        size = fp.storage[nm]
        for slot in slots:
            if slot[1] == size and slot[2] < start:
                shared[nm] = slot[0]
                slot[2] = stop
                break
        else:
            slots.append([nm, size, stop])
    return shared


def workspace_layout(mod: CModule, printers: dict):
    """(The members of ``<name>_workspace`` holding each function's buffers, the
    lines of ``<name>_layout`` pointing them into one arena with ``bp_carve``).
    The three functions share the arena: each starts at offset 0.  Where the
    language reuses buffers (``CStyle.reuse_buffers``), a buffer whose value is
    dead takes a later one of its size (``share_buffers``)."""
    layout = []
    structs = []
    for fn, fp in printers.items():
        if not fp.storage:
            continue
        shared = share_buffers(fp) if mod.lang.reuse_buffers else {}
        layout.append(f"off = 0;  {line_comment(fn)}")
        for nm, size in fp.storage.items():
            if nm in shared:
                layout.append(f"ws->{fn}.{mod.cname(nm)} = ws->{fn}.{mod.cname(shared[nm])};  "
                              f"{line_comment(mod.cname(shared[nm]) + ' is dead by then')}")
            else:
                layout.append(f"ws->{fn}.{mod.cname(nm)} = bp_carve(base, &off, {size});")
        layout.append("if (off > top) top = off;")
        structs.append("struct { real " + ", ".join(f"*{mod.cname(n)}" for n in fp.storage) + f"; }} {fn};")
    return structs, layout
