"""What the three entry points of a C-like module share: the C names of values
and the table of kernels, deduplicated across the functions."""

from __future__ import annotations

from .language import CStyle


class KernelTable:
    """The kernels of the module, deduplicated across the three functions."""

    def __init__(self, lang: CStyle, taken=()):
        self.lang = lang
        self.taken = frozenset(taken)   # names a kernel may not have (the values' C names)
        self.by_body: dict = {}
        self.names: set = set()
        self.defs: list = []

    def add(self, hint: str, comment: list, params: list, body: list) -> str:
        """The name of the kernel of ``params`` and ``body`` (defined on first use,
        named ``hint`` and the language's suffix, then ``_2``, ``_3``, ... while taken)."""
        key = (tuple(params), tuple(body))
        if key in self.by_body:
            return self.by_body[key]
        name, k = hint + self.lang.kernel_suffix, 2
        while name in self.names or name in self.taken:
            name = f"{hint}{self.lang.kernel_suffix}_{k}"
            k += 1
        self.names.add(name)
        self.by_body[key] = name
        self.defs.append(self.lang.kernel_text(name, comment, params, body))
        return name


class CModule:
    """A spec's module in a C-like language: its values' C names and its kernels."""

    def __init__(self, low, programs, lang: CStyle):
        self.low = low
        self.spec = low.spec
        self.name = low.spec.name
        self.dtype = low.spec.dtype
        self.programs = programs
        self.lang = lang
        all_names = set()
        for p in programs.values():
            all_names |= {v.name for v in p.values.values()}
            for k in p.kernels:
                all_names |= {k.out.name, *(a.name for a in k.args)}
        # a name the generated code uses itself, or one of its prefixes, becomes v_<name>
        self.cnames = {}
        for nm in sorted(all_names):
            c = nm
            if c in lang.reserved or c.startswith(lang.reserved_prefixes) or c.startswith(self.name + "_"):
                c = "v_" + nm
                while c in all_names or c in self.cnames.values():
                    c = "v_" + c
            self.cnames[nm] = c

        # kernels in a namespace of their own may share a name with a value; else not
        self.kernels = KernelTable(lang, () if lang.kernel_namespace else self.cnames.values())

    def cname(self, nm: str) -> str:
        return self.cnames.get(nm, nm)
