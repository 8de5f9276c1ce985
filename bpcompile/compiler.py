"""The pipeline in one call: spec -> graph -> adjoints -> program -> source."""

from __future__ import annotations

import importlib.util
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import adjoint, graph, program
from .spec import Spec, load_spec, parse_spec

TARGETS = ("numpy", "cuda")


@dataclass
class Compiled:
    """A compiled spec: its generated source, and what the compiler learned on the way."""

    spec: Spec
    target: str
    source: str
    lowered: graph.Lowered = field(repr=False)
    adjoints: adjoint.Adjoints = field(repr=False)
    programs: dict = field(repr=False)
    files: dict = field(default_factory=dict, repr=False)  # every file write() writes (name -> text)

    @property
    def filename(self) -> str:
        return f"{self.spec.name}.cu" if self.target == "cuda" else f"{self.spec.name}.py"

    def stats(self) -> dict:
        G = self.lowered.graph
        vag = self.programs["value_and_grad"]
        shared = sum(1 for n in G.g.nodes if len(list(G.g.successors(n))) > 1
                     and G.node(n)["op"] not in ("input", "param", "const", "batch_size"))
        return {"nodes": len(G), "adjoints": len(self.adjoints.bar),
                "shared": shared, "kernels": len(vag.kernels),
                "forward_kernels": vag.count("forward"), "backward_kernels": vag.count("backward")}

    def write(self, directory) -> Path:
        """Write the module (each of ``files``) into ``directory`` atomically; returns its path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in (self.files or {self.filename: self.source}).items():
            write_atomic(directory / name, text)
        return directory / self.filename

    def load(self):
        """Import the generated module (written to a private temporary directory)."""
        directory = Path(tempfile.mkdtemp(prefix="bpcompile_"))
        path = self.write(directory)
        if self.target == "cuda":
            path = directory / f"{self.spec.name}_cuda.py"   # the loader
        name = f"bpcompile_generated_{self.spec.name}_{directory.name}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path``, then rename: never half-written."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def compile(spec, target: str = "numpy") -> Compiled:  # noqa: A001 - the documented API name
    """Compile a spec (a Spec, a path, YAML text or a dict) for ``target``."""
    from . import __version__, codegen_numpy
    if not isinstance(spec, Spec):
        if isinstance(spec, (str, os.PathLike)) and not (isinstance(spec, str) and "\n" in spec) \
                and Path(spec).suffix in (".yaml", ".yml", ".json"):
            spec = load_spec(spec)
        else:
            spec = parse_spec(spec)
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    low = graph.lower(spec)
    adj = adjoint.reverse(low)
    programs = {
        "predict": program.build(low, None, output=True),
        "loss": program.build(low, None, loss=True),
        "value_and_grad": program.build(low, adj, loss=True, grads=True),
    }
    if target == "cuda":
        from . import codegen_cuda
        files = codegen_cuda.render(low, adj, programs, __version__)
        return Compiled(spec, target, files[f"{spec.name}.cu"], low, adj, programs, files)
    source = codegen_numpy.render(low, adj, programs, __version__)
    return Compiled(spec, target, source, low, adj, programs)
