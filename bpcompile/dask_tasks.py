"""What the workers of bpcompile.dask run: the tasks, and the module as they receive it.

Kept apart from bpcompile.dask so that a worker process imports NumPy and this,
not Dask's array module (~20 MB of a worker's memory): a worker's memory limit is
for the data.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import threading
import weakref
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------
# The module, as the task graph carries it

_IMPORTED: dict = {}            # digest -> module, imported from shipped files (one per process)
_IMPORT_LOCK = threading.Lock()


class ModuleRef:
    """The generated module, as a task graph carries it to worker processes.

    In this process it is the module itself.  Pickled for a worker of a cluster, a
    module whose file is on disk travels as its files (the .py, and the .c/.h/.cu
    beside it that the C and CUDA loaders build) and is imported once per worker
    process from a private directory (the C loader builds its library once per
    machine, in its cache).  A module without a file (a NumPy module from
    ``Compiled.load()``, which deletes its directory) travels by value (cloudpickle:
    its functions and constants; a generated NumPy module imports only NumPy).
    """

    def __init__(self, module, files=None, digest=None):
        self.module = module
        if files is None:
            files = _module_files(module)
        self.files = files or None          # False: by value
        self.digest = digest or (_digest(files) if files else None)

    def __reduce__(self):
        if self.files is None:
            # the arrays a NumPy module keeps between calls (its workspaces) are a
            # cache: dropped, so that they do not travel, and dropped again where
            # they arrive (a worker's copies of them would be read-only buffers,
            # which a product cannot write its result into)
            _reset(self.module)
            return (_by_value, (self.module,))
        return (_import_shipped, (self.digest, self.files))


def _reset(module):
    reset = getattr(module, "reset_workspace", None)
    if callable(reset):
        reset()


def _by_value(module):
    """A module that travelled by value, its kept arrays dropped (see ModuleRef)."""
    _reset(module)
    return ModuleRef(module, False, None)


def _module_files(module):
    """{file name: bytes} of the module's entry file and the sources beside it, or None."""
    path = getattr(module, "__file__", None)
    if not path or not os.path.isfile(path):
        return None
    path = Path(path)
    files = {"": path.name}          # "" names the entry file
    for name in [path.name] + [module.NAME + ext for ext in (".c", ".h", ".cu")]:
        if (path.parent / name).is_file():
            files[name] = (path.parent / name).read_bytes()
    return files


def _digest(files):
    h = hashlib.sha256(b"bpcompile.dask module\0")
    for name in sorted(files):
        data = files[name].encode() if isinstance(files[name], str) else files[name]
        for part in (name.encode(), data):
            h.update(len(part).to_bytes(8, "little") + part)
    return h.hexdigest()


def _import_shipped(digest, files):
    """The module of ``files``, imported once per process (cached by ``digest``)."""
    with _IMPORT_LOCK:
        module = _IMPORTED.get(digest)
        if module is None:
            directory = tempfile.mkdtemp(prefix="bpcompile_dask_")
            for name, data in files.items():
                if name:
                    Path(directory, name).write_bytes(data)
            entry = Path(directory, files[""])
            spec = importlib.util.spec_from_file_location(f"bpcompile_dask_{entry.stem}_{digest[:16]}", entry)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            weakref.finalize(module, shutil.rmtree, directory, True)
            _IMPORTED[digest] = module
    return ModuleRef(module, files, digest)


# ---------------------------------------------------------------------------
# Tasks: one chunk's sums, the tree's additions, the root's reduction

def chunk(ref, params, names, rows, mean, batched, what, *blocks):
    """The sums over one chunk (rows ``rows`` of the blocks, or all of them).

    Returns (value sum, {param: gradient sum}, {input: n * per-row gradient}) with
    the module's mean undone (times n, the chunk's rows); ``what`` is 'loss' for
    the value alone.
    """
    module = ref.module
    inputs = dict(zip(names, blocks))
    if rows is not None:
        inputs = {k: v[rows] for k, v in inputs.items()}
    n = len(inputs[names[0]])
    scale = n if mean else 1
    if what == "loss":
        return float(module.loss(params, **inputs)) * scale, {}, {}
    value, grads = module.value_and_grad(params, **inputs)
    sums = {k: np.multiply(g, scale, dtype=np.float64) for k, g in grads.items() if k not in batched}
    rowwise = {k: np.multiply(grads[k], scale, dtype=np.float64) for k in batched}
    return float(value) * scale, sums, rowwise


def add(*parts):
    """Add partial sums, in the order given (a fixed order: a deterministic result)."""
    value = parts[0][0]
    total = {k: g.copy() for k, g in parts[0][1].items()}
    for p in parts[1:]:
        value += p[0]
        for k, g in p[1].items():
            total[k] += g
    return value, total, {}


def finish(root, n, mean, dtype, order, *chunks):
    """Redo the reduction over all n rows; the gradients in the module's dtype and WRT order."""
    value, sums = root[0], dict(root[1])
    for k in chunks[0][2] if chunks else ():
        sums[k] = np.concatenate([c[2][k] for c in chunks])
    if mean:
        value = value / n
        sums = {k: s / n for k, s in sums.items()}
    return value, {k: np.asarray(sums[k], dtype) for k in order if k in sums}


def predict_chunk(ref, params, names, *blocks):
    return ref.module.predict(params, **dict(zip(names, blocks)))


# ---------------------------------------------------------------------------
# Memory-mapped .npy files, read a block at a time

class NpyFile:
    """A .npy file that ``da.from_array`` reads a block at a time.

    Each read maps the file, copies the block out and unmaps it, so a process holds
    only the blocks it works on (a map kept open would keep every page it touched
    in the process's resident memory); pickled, it is only the path, so each
    worker of a cluster reads its own blocks (the file must be visible to the
    workers at that path: a shared file system).
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        mm = np.load(self.path, mmap_mode="r")
        if not isinstance(mm, np.memmap):
            raise ValueError(f"{self.path} is not a .npy file")
        self.shape, self.dtype, self.ndim, self.offset = mm.shape, mm.dtype, mm.ndim, mm.offset
        self.fortran = mm.ndim > 1 and not mm.flags.c_contiguous
        del mm

    def __getitem__(self, key):
        mm = np.load(self.path, mmap_mode="r")
        block = np.array(mm[key])
        del mm
        return block
