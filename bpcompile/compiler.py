"""The pipeline in one call: spec -> graph -> adjoints -> program -> source."""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from . import targets
from .frontend import graph
from .frontend.spec import Spec, load_spec, parse_spec
from .ir import program
from .ops import adjoint


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
        """The main file (the one ``source`` holds)."""
        return targets.get(self.target).main_file(self.spec.name)

    def stats(self) -> dict:
        G = self.lowered.graph
        vag = self.programs["value_and_grad"]
        shared = sum(1 for n in G.g.nodes if len(list(G.g.successors(n))) > 1
                     and G.node(n)["op"] not in ("input", "param", "const", "batch_size"))
        return {"nodes": len(G), "forward_nodes": self.lowered.forward_nodes,
                "reverse_nodes": len(G) - self.lowered.forward_nodes, "adjoints": len(self.adjoints.bar),
                "shared": shared, "kernels": len(vag.kernels),
                "forward_kernels": vag.count("forward"), "backward_kernels": vag.count("backward")}

    def write(self, directory) -> Path:
        """Write the module (each of ``files``) into ``directory``; returns its path.

        Each file is written under a temporary name and renamed into place, so a
        reader sees the old file or the new one, never half of one; Python files
        (the importable entry points, such as the CUDA loader that checks the hash
        of the .cu it expects) are renamed last.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        files = self.files
        for name in sorted(files, key=lambda nm: (nm.endswith(".py"), nm)):
            write_atomic(directory / name, files[name])
        return directory / self.filename

    def load(self):
        """Import the generated module, written to a private temporary directory.

        The directory goes away when the module is garbage-collected (at exit at
        the latest); a NumPy module needs nothing on disk once imported, so its
        directory is removed at once.
        """
        directory = Path(tempfile.mkdtemp(prefix="bpcompile_"))
        try:
            self.write(directory)
            target = targets.get(self.target)
            path = directory / target.entry_file(self.spec.name)
            name = f"bpcompile_generated_{self.spec.name}_{directory.name}"
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        if target.standalone:
            shutil.rmtree(directory, ignore_errors=True)
        else:
            weakref.finalize(module, shutil.rmtree, str(directory), True)
        return module


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()   # what open() would give a new file: 0644 under the usual umask


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path``, then rename: never half-written."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE)   # mkstemp makes 0600; a generated file is an ordinary file
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _collector_paused():
    """Python's cyclic garbage collector off for the block (as it was, after).

    A compile makes hundreds of thousands of objects that live until it ends (the
    graph, its SymPy expressions, the equations) and hardly any garbage cycles; the
    collector, run every 700 allocations, walked them again and again, in time
    growing with their number: 26% of a 1,024-layer chain's compile (4.3 s against
    3.2 s with it off), the larger part of what made the time per layer grow.
    (Objects frozen by the caller, gc.freeze, are left as they are.)"""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            if gc.get_freeze_count() == 0:
                # the compile's objects join the oldest generation unscanned (freeze,
                # then unfreeze: into the oldest generation), as if they had survived
                # the young collections, instead of the next allocation's collection
                # scanning every one of them (0.5 s of a 1,024-layer compile's 3.2 s);
                # a full collection sees them as it sees every long-lived object
                gc.freeze()
                gc.unfreeze()
            gc.enable()


def compile(spec, target: str = targets.DEFAULT) -> Compiled:  # noqa: A001 - the documented API name
    """Compile a spec (a Spec, a path, YAML text or a dict) for ``target`` (a name
    of ``targets.names()``)."""
    with _collector_paused():
        return _compile(spec, target)


def _compile(spec, target):
    from . import __version__
    if not isinstance(spec, Spec):
        if isinstance(spec, (str, os.PathLike)) and not (isinstance(spec, str) and "\n" in spec) \
                and Path(spec).suffix in (".yaml", ".yml", ".json"):
            spec = load_spec(spec)
        else:
            spec = parse_spec(spec)
    renderer = targets.get(target)
    low = graph.lower(spec)
    adj = adjoint.reverse(low)
    programs = {
        "predict": program.build(low, None, output=True),
        "loss": program.build(low, None, loss=True),
        "value_and_grad": program.build(low, adj, loss=True, grads=True),
    }
    files = renderer.render(low, adj, programs, __version__)
    return Compiled(spec, target, files[renderer.main_file(spec.name)], low, adj, programs, files)
