"""Data-parallel evaluation and training of a generated gradient module on Dask.

A generated module computes the loss and gradient of one batch in one process.
``DaskModule`` computes the same over data chunked along the batch axis (Dask
arrays, or anything ``dask.array.from_array`` accepts: NumPy arrays, memory-mapped
.npy files, zarr arrays) on Dask's local threaded scheduler by default (NumPy
releases the GIL in BLAS and ufuncs, the C module in C), or on a
``dask.distributed`` cluster when given a ``Client``::

    from bpcompile.dask import DaskModule
    dm = DaskModule(module)                      # or DaskModule(module, client=client)
    value, grads = dm.value_and_grad(params, x=X, label=y)
    dm.fit(params, {"x": X, "label": y}, optimizer="adam", lr=1e-3, epochs=3)
    dm.minimize(params, {"x": X, "label": y}, maxiter=50)    # full-batch L-BFGS

A full-batch ``value_and_grad`` runs so:

1. Checks, on metadata only, before any work: the module is a generated module;
   ``params`` holds exactly its params, of their shapes; every input is there, of
   its per-example shape, chunked along the batch axis only, with the same batch
   chunks as the other inputs.  A problem is one line (``DaskInputError``).
2. One task per chunk calls the module's own ``value_and_grad`` on the chunk and
   undoes the module's reduction: with ``REDUCTION == 'mean'`` the chunk's value
   and gradient are means over its n rows, so n times them are sums (with 'sum'
   there is nothing to undo).
3. A tree (fan-in ``split_every``) adds the sums in float64, in an order fixed by
   the chunks' order, so the result does not depend on which worker finishes first.
4. The root redoes the reduction once: divided by N, the rows of the whole data.
   The result is the mean over all rows, not a mean of chunk means; it equals the
   single-process full-batch result to rounding (about 1e-15 relative in float64).

The params are one key of the task graph: they go to the cluster once per call
(inside the graph), one worker holds them and the others fetch them from it.  A
key, not a scattered future: if the worker holding them dies, the scheduler
recomputes them like any lost chunk.  The module travels the same way (see
``ModuleRef``).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import time
import types
import uuid

import numpy as np

try:
    import dask
    import dask.array as da
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("bpcompile.dask needs Dask: pip install 'bpcompile[dask]' "
                      f"(dask[array] and distributed) ({e})") from None

from .dask_tasks import ModuleRef, NpyFile, add, chunk, finish, predict_chunk
from .escape import terminal

__all__ = ["DaskInputError", "DaskModule", "from_npy"]

# Rows per chunk when this module chunks in-memory arrays itself: chunks of about
# this many bytes (all inputs together).  Large enough that a chunk's work dwarfs a
# task's overhead (~0.1 ms), small enough that a few chunks in flight per thread
# fit in a worker's memory.
CHUNK_BYTES = 16 * 2**20

# The functions a generated module exposes and the constants this module reads.
_REQUIRED = ("NAME", "DTYPE", "PARAM_SHAPES", "INPUT_SHAPES", "WRT", "REDUCTION",
             "value_and_grad", "loss", "predict")


class DaskInputError(ValueError):
    """Data or params that a distributed call cannot use, found before any work.

    A ValueError, as the generated modules raise for a bad argument; rendered on one
    line, naming the argument, the expected and the given.
    """

    def __str__(self) -> str:
        return terminal(" ".join(str(self.args[0]).splitlines()))


def from_npy(path, rows=None):
    """A Dask array over a .npy file, chunked along the first axis (``rows`` per
    chunk; by default about CHUNK_BYTES of it), read block by block (``NpyFile``)."""
    f = NpyFile(path)
    if not f.shape:
        raise DaskInputError(f"from_npy: {f.path} holds a scalar; expected an array with a batch axis")
    row_bytes = max(1, f.dtype.itemsize * math.prod(f.shape[1:]))
    rows = rows or max(1, CHUNK_BYTES // row_bytes)
    st = os.stat(f.path)
    name = "npy-" + dask.base.tokenize(f.path, st.st_size, st.st_mtime_ns, rows)
    return da.from_array(f, chunks=(rows,) + f.shape[1:], name=name, asarray=True,
                         meta=np.empty((0,) * f.ndim, f.dtype))


def _whole_npy(a):
    """The path of the .npy file ``a`` maps as a whole (np.load(..., mmap_mode='r')), or None."""
    if not isinstance(a, np.memmap) or not isinstance(getattr(a, "filename", None), str):
        return None
    if not (a.flags.c_contiguous or a.flags.f_contiguous):
        return None
    try:
        f = NpyFile(a.filename)
    except (OSError, ValueError):
        return None
    if (f.shape, f.dtype, f.offset, f.fortran) != (a.shape, a.dtype, a.offset, a.ndim > 1 and not a.flags.c_contiguous):
        return None
    return a.filename


# ---------------------------------------------------------------------------

class DaskModule:
    """A generated module's loss and gradient over data chunked along the batch axis.

    ``module``: a generated module (NumPy, or the C loader ``<name>_c.py``: the same
    API).  ``client``: a ``dask.distributed.Client`` to run on; without one, Dask's
    local ``scheduler`` ('threads' by default, with ``num_workers`` threads).
    ``split_every``: the fan-in of the reduction tree.  ``rows``: rows per chunk
    for inputs that are not Dask arrays already (default: about CHUNK_BYTES).
    ``blas_threads``: the BLAS threads per Dask thread while a threaded call runs
    (threadpoolctl; None leaves BLAS alone).  Dask's threads already use every
    core: BLAS threads on top of them oversubscribe the cores, and OpenBLAS's
    spinning threads make a call several times slower.  (A cluster's workers set
    OPENBLAS_NUM_THREADS=1 and the like themselves.)

    The module's constants (NAME, PARAM_SHAPES, WRT, ...) and ``init_params`` are
    available on the wrapper.
    """

    def __init__(self, module, *, client=None, scheduler="threads", num_workers=None,
                 split_every=8, rows=None, blas_threads=1):
        missing = [k for k in _REQUIRED if not hasattr(module, k)]
        if missing:
            raise DaskInputError(f"DaskModule: {getattr(module, '__name__', type(module).__name__)} is not a "
                                 f"generated gradient module (it has no {', '.join(missing)}); "
                                 "expected a module written by bpcompile compile")
        if module.REDUCTION not in ("mean", "sum"):
            raise DaskInputError(f"DaskModule: {module.NAME} has REDUCTION {module.REDUCTION!r}; "
                                 "expected 'mean' or 'sum'")
        if split_every < 2:
            raise DaskInputError(f"DaskModule: split_every is {split_every}; expected at least 2")
        self.module = module
        self.client = client
        self.scheduler = scheduler
        self.num_workers = num_workers
        self.split_every = split_every
        self.rows = rows
        self.blas_threads = blas_threads
        self._ref = ModuleRef(module)
        for k in ("NAME", "DTYPE", "PARAM_SHAPES", "INPUT_SHAPES", "WRT", "REDUCTION"):
            setattr(self, k, getattr(module, k))
        self.LABEL_CLASSES = getattr(module, "LABEL_CLASSES", {})
        self.TRAINED = getattr(module, "TRAINED", tuple(k for k in module.WRT if k in module.PARAM_SHAPES))
        self.init_params = module.init_params

    def __repr__(self):
        where = repr(self.client) if self.client is not None else f"scheduler={self.scheduler!r}"
        return f"DaskModule({self.NAME}, {where})"

    # -- the module's API, over the whole data ---------------------------------

    def value_and_grad(self, params, **inputs):
        """(L, {name: dL/d(name) for name in WRT}) over all rows of the data.

        Gradients with respect to inputs (WRT names that are inputs) have a row per
        example and come back whole, as NumPy arrays of the inputs' size.
        """
        params = self._params("value_and_grad", params)
        arrays, sizes, local = self._inputs("value_and_grad", inputs, self._reads("value_and_grad"))
        return self._compute(self._graph(params, arrays, self._whole(sizes), "value_and_grad"))

    def gradient(self, params, **inputs):
        """dL/d(name) for every name in WRT, over all rows of the data."""
        params = self._params("gradient", params)
        arrays, sizes, local = self._inputs("gradient", inputs, self._reads("value_and_grad"))
        return self._compute(self._graph(params, arrays, self._whole(sizes), "value_and_grad"))[1]

    def loss(self, params, **inputs):
        """L over all rows of the data (the module's reduction: mean or sum)."""
        params = self._params("loss", params)
        arrays, sizes, local = self._inputs("loss", inputs, self._reads("loss"))
        return self._compute(self._graph(params, arrays, self._whole(sizes), "loss"))[0]

    def predict(self, params, **inputs):
        """The output node, as a lazy Dask array chunked like the inputs."""
        params = self._params("predict", params)
        arrays, sizes, local = self._inputs("predict", inputs, self._reads("predict"))
        names = list(arrays)
        probe = {k: np.zeros((2, *self.INPUT_SHAPES[k]),
                             np.int64 if k in self.LABEL_CLASSES else self.DTYPE) for k in names}
        with np.errstate(all="ignore"):
            out = np.asarray(self.module.predict(params, **probe))
        if out.shape[:1] != (2,):
            raise DaskInputError(f"dask predict: {self.NAME}'s output has no batch axis (shape {out.shape} "
                                 "for 2 rows); call the module's predict directly")
        p, ref = self._keys(params)
        blocks = {k: a.to_delayed().ravel() for k, a in arrays.items()}
        pieces = [da.from_delayed(dask.delayed(predict_chunk, pure=True)(ref, p, names, *[blocks[k][i] for k in names]),
                                  shape=(n, *out.shape[1:]), dtype=out.dtype)
                  for i, n in enumerate(sizes)]
        return da.concatenate(pieces) if len(pieces) > 1 else pieces[0]

    # -- training ----------------------------------------------------------------

    def fit(self, params, inputs, *, optimizer="sgd", lr=None, epochs=1, batch_size=8192,
            state=None, shuffle=True, seed=0, parts=None, progress=True, log=True, **hyper):
        """Mini-batch training with synchronous data parallelism, in place.

        Each step computes the exact gradient of one mini-batch of ``batch_size``
        rows, split into ``parts`` pieces (default: one per worker thread) that run
        at once, then applies the module's own ``sgd_step``, ``momentum_step`` or
        ``adam_step`` (``optimizer``) with that gradient: the update is the module's
        code, only its value_and_grad is the distributed one.  ``hyper``: the step's
        other arguments (``momentum``; ``beta1``, ``beta2``, ``eps``); ``state``: the
        optimizer state dict the module's steps keep (pass the same dict to resume).

        Each epoch visits the chunks in a new random order (``shuffle``, from
        ``seed``) and cuts that sequence of rows into mini-batches: the rows of a
        chunk stay together (contiguous reads of memory-mapped data); shuffle the
        rows on disk once if their order carries a pattern.  A step loads the whole
        chunks its rows are in: chunks of at most ``batch_size`` rows read little
        that the step does not use.

        ``progress``: a tqdm bar per epoch; ``log``: True for a line per epoch (or a
        callable that takes the line).  Returns the per-epoch history: dicts of
        epoch, loss (the row-weighted mean of the steps' losses, each taken before
        its step), rows, steps, seconds.
        """
        steps = {"sgd": "sgd_step", "momentum": "momentum_step", "adam": "adam_step"}
        if optimizer not in steps:
            raise DaskInputError(f"fit: optimizer is {optimizer!r}; expected one of {', '.join(map(repr, steps))}")
        if lr is None and optimizer != "adam":
            raise DaskInputError(f"fit: optimizer {optimizer!r} needs lr (the learning rate)")
        if not (isinstance(batch_size, int) and batch_size > 0):
            raise DaskInputError(f"fit: batch_size is {batch_size!r}; expected a positive integer (rows per step)")
        params = self._params("fit", params, copy=False)
        arrays, sizes, local = self._inputs("fit", inputs, self._reads("value_and_grad"))
        arrays = self._place(arrays, local)
        state = {} if state is None else state
        step, current = self._step_with_gradient(getattr(self.module, steps[optimizer]))
        args = (params,) if optimizer == "sgd" else (params, state)
        if lr is not None:
            args += (lr,)
        none_inputs = {k: None for k in self.INPUT_SHAPES}
        parts = parts or self._threads()
        blocks = {k: a.to_delayed().ravel() for k, a in arrays.items()}
        starts = np.concatenate([[0], np.cumsum(sizes)])
        total = int(starts[-1])
        say = _logger(log)
        bar = _tqdm() if progress else None
        rng = np.random.default_rng(seed)
        history = []
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            order = rng.permutation(len(sizes)) if shuffle else np.arange(len(sizes))
            nsteps = -(-total // batch_size)
            pbar = bar(total=nsteps, desc=f"epoch {epoch}/{epochs}", unit="step", leave=False) if bar else None
            weighted = 0.0
            for s in range(nsteps):
                lo, hi = s * batch_size, min((s + 1) * batch_size, total)
                pieces = _pieces(order, sizes, starts, lo, hi, parts)
                current[:] = self._compute(self._graph(params, arrays, pieces, "value_and_grad", blocks=blocks,
                                                       rowwise=False))
                value = step(*args, **none_inputs, **hyper, check=False)
                weighted += value * (hi - lo)
                if pbar is not None:
                    pbar.update()
                    pbar.set_postfix(loss=f"{value:.4g}", refresh=False)
            if pbar is not None:
                pbar.close()
            seconds = time.perf_counter() - t0
            row = {"epoch": epoch, "loss": weighted / total, "rows": total, "steps": nsteps, "seconds": seconds}
            history.append(row)
            say(f"epoch {epoch}/{epochs}: loss {row['loss']:.6g} over {total:,} rows in {nsteps} steps, "
                f"{seconds:.2f} s ({total / seconds:,.0f} rows/s)")
        return history

    def minimize(self, params, inputs, *, method="L-BFGS-B", maxiter=100, tol=None, options=None,
                 progress=True, log=True):
        """Full-batch optimization by ``scipy.optimize.minimize(jac=True)`` (L-BFGS-B by
        default) over the trained params, each evaluation one distributed
        value_and_grad; updates ``params`` in place and returns scipy's result.

        ``progress``: a tqdm bar over the iterations; ``log``: a line per iteration.
        """
        try:
            from scipy.optimize import minimize
        except ImportError:  # pragma: no cover
            raise ImportError("DaskModule.minimize needs SciPy: pip install scipy") from None
        params = self._params("minimize", params, copy=False)
        arrays, sizes, local = self._inputs("minimize", inputs, self._reads("value_and_grad"))
        arrays = self._place(arrays, local)
        blocks = {k: a.to_delayed().ravel() for k, a in arrays.items()}
        whole = self._whole(sizes)
        names = list(self.TRAINED)
        shapes = [np.shape(params[k]) for k in names]
        cuts = np.cumsum([0] + [math.prod(s) for s in shapes])
        trial = dict(params)
        evals, iterations = [0], [0]

        def unflatten(theta):
            return {k: theta[cuts[i]:cuts[i + 1]].reshape(shapes[i]).astype(self.DTYPE)
                    for i, k in enumerate(names)}

        def fun(theta):
            trial.update(unflatten(theta))
            value, grads = self._compute(self._graph(trial, arrays, whole, "value_and_grad", blocks=blocks))
            evals[0] += 1
            return value, np.concatenate([np.asarray(grads[k], np.float64).ravel() for k in names])

        say = _logger(log)
        bar = _tqdm()(total=maxiter, desc=f"{method} {self.NAME}", unit="it", leave=False) if progress else None
        t0 = time.perf_counter()

        def callback(intermediate_result):
            iterations[0] += 1
            if bar is not None:
                bar.update()
                bar.set_postfix(loss=f"{intermediate_result.fun:.6g}", refresh=False)
            say(f"iteration {iterations[0]}: loss {intermediate_result.fun:.8g}, "
                f"{evals[0]} full-batch evaluations, {time.perf_counter() - t0:.2f} s")

        x0 = np.concatenate([np.asarray(params[k], np.float64).ravel() for k in names]) if names else np.zeros(0)
        try:
            result = minimize(fun, x0, jac=True, method=method, tol=tol, callback=callback,
                              options={"maxiter": maxiter, **(options or {})})
        finally:
            if bar is not None:
                bar.close()
        for k, v in unflatten(result.x).items():
            params[k][...] = v
        say(f"{method}: {result.message} after {result.nit} iterations, loss {result.fun:.8g}")
        return result

    # -- checks, before any work -------------------------------------------------

    def _reads(self, fn):
        """The inputs ``fn`` of the module needs, and those it may take (optional)."""
        sig = inspect.signature(getattr(self.module, fn))
        needed = [k for k in self.INPUT_SHAPES
                  if k in sig.parameters and sig.parameters[k].default is inspect.Parameter.empty]
        return needed, [k for k in self.INPUT_SHAPES if k not in needed]

    def _params(self, where, params, copy=True):
        where = f"dask {where}"
        if not isinstance(params, dict):
            raise DaskInputError(f"{where}: params is a {type(params).__name__}; expected a dict of arrays")
        expected = self.PARAM_SHAPES
        for k in params:
            if k not in expected:
                known = ", ".join(expected) or "none"
                raise DaskInputError(f"{where}: params has {k!r}, which {self.NAME} does not have "
                                     f"(its params: {known})")
        for k, shape in expected.items():
            if k not in params:
                raise DaskInputError(f"{where}: params has no {k!r}; {self.NAME} expects an array of shape {shape}")
            p = params[k]
            if not isinstance(p, np.ndarray) or p.shape != tuple(shape) or p.dtype.kind != "f":
                given = (f"an array of shape {p.shape} and dtype {p.dtype}" if isinstance(p, np.ndarray)
                         else f"a {type(p).__name__}")
                raise DaskInputError(f"{where}: params[{k!r}] is {given}; "
                                     f"{self.NAME} expects a floating array of shape {tuple(shape)}")
        return dict(params) if copy else params

    def _inputs(self, where, inputs, reads):
        """The inputs as Dask arrays with one batch chunking, that chunking's row counts,
        and the names of the inputs given as in-memory NumPy arrays."""
        where = f"dask {where}"
        needed, optional = reads
        for k in inputs:
            if k not in self.INPUT_SHAPES:
                raise DaskInputError(f"{where}: {k!r} is not an input of {self.NAME} "
                                     f"(its inputs: {', '.join(self.INPUT_SHAPES)})")
        for k in needed:
            if inputs.get(k) is None:
                raise DaskInputError(f"{where}: input {k!r} is missing; expected an array of shape "
                                     f"{_batched(self.INPUT_SHAPES[k])}")
        given = {k: v for k, v in inputs.items() if v is not None}
        if not given:
            raise DaskInputError(f"{where}: no inputs given; {self.NAME} reads {', '.join(self.INPUT_SHAPES)}")
        # in-memory data takes the batch chunks of a Dask input, if any; else rows per chunk
        chunks0 = next((v.chunks[0] for v in given.values() if isinstance(v, da.Array)), None)
        arrays = {k: self._as_dask(where, k, v, chunks0) for k, v in given.items()}
        local = [k for k, v in given.items() if isinstance(v, np.ndarray) and not isinstance(v, da.Array)
                       and _whole_npy(v) is None]
        first = n = None
        for k, a in arrays.items():
            shape = tuple(self.INPUT_SHAPES[k])
            if any(isinstance(d, float) and math.isnan(d) for d in a.shape):
                raise DaskInputError(f"{where}: {k} has chunks of unknown size; call {k}.compute_chunk_sizes() first")
            if a.ndim != len(shape) + 1 or tuple(a.shape[1:]) != shape:
                raise DaskInputError(f"{where}: {k} has shape {a.shape}; expected {_batched(shape)}")
            for axis, c in enumerate(a.chunks[1:], start=1):
                if len(c) > 1:
                    raise DaskInputError(f"{where}: {k} is chunked along axis {axis} (chunks {c}); expected chunks "
                                         f"along the batch axis only: {k}.rechunk({{{axis}: -1}})")
            kind = a.dtype.kind
            if k in self.LABEL_CLASSES:
                if kind not in "iu":
                    raise DaskInputError(f"{where}: {k} has dtype {a.dtype}; expected an integer dtype "
                                         f"(class labels in [0, {self.LABEL_CLASSES[k]}))")
            elif kind not in "biuf":
                raise DaskInputError(f"{where}: {k} has dtype {a.dtype}; expected a real numeric dtype")
            if first is None:
                first, n = k, a.chunks[0]
            elif a.shape[0] != sum(n):
                raise DaskInputError(f"{where}: {k} has batch size {a.shape[0]}; expected {sum(n)}, "
                                     f"the batch size of {first}")
            elif a.chunks[0] != n:
                raise DaskInputError(f"{where}: {k} has batch chunks {_short(a.chunks[0])}; expected "
                                     f"{_short(n)}, the batch chunks of {first}: rechunk them alike "
                                     f"({k}.rechunk({{0: {first}.chunks[0]}}))")
        if sum(n) == 0:
            raise DaskInputError(f"{where}: the inputs have no rows; expected at least one")
        sizes = [int(c) for c in n]
        if 0 in sizes:   # an empty chunk has no mean to undo; it adds nothing either
            keep = [i for i, c in enumerate(sizes) if c]
            arrays = {k: da.concatenate([a.blocks[i] for i in keep]) for k, a in arrays.items()}
            sizes = [sizes[i] for i in keep]
        return arrays, sizes, local

    def _as_dask(self, where, name, value, chunks0):
        if isinstance(value, da.Array):
            return value
        path = _whole_npy(value)
        if path is not None:
            a = from_npy(path, rows=self.rows)
            return a if chunks0 is None else a.rechunk({0: chunks0})
        if not hasattr(value, "shape") or not hasattr(value, "dtype"):
            try:
                value = np.asarray(value)
            except (TypeError, ValueError) as e:
                raise DaskInputError(f"{where}: {name} is not an array ({e})") from None
        if len(value.shape) == 0:
            raise DaskInputError(f"{where}: {name} is a scalar; expected {_batched(self.INPUT_SHAPES[name])}")
        if chunks0 is not None and value.shape[0] == sum(chunks0):
            rows = chunks0
        else:
            row_bytes = sum(max(1, np.dtype(self.DTYPE).itemsize * math.prod(s)) for s in self.INPUT_SHAPES.values())
            rows = self.rows or max(1, CHUNK_BYTES // row_bytes)
        return da.from_array(value, chunks=(rows,) + tuple(value.shape[1:]), name=False)

    # -- the task graph ----------------------------------------------------------

    @staticmethod
    def _whole(sizes):
        """Pieces covering every chunk: [[(chunk, None)], ...] (one task per chunk)."""
        return [[(i, None, n)] for i, n in enumerate(sizes)]

    def _keys(self, params):
        """The params and the module as one key each of the graph (sent once per call)."""
        token = uuid.uuid4().hex
        p = dask.delayed(params, traverse=False, name=f"bpcompile-params-{token}")
        ref = dask.delayed(self._ref, traverse=False, name=f"bpcompile-module-{self._ref.digest or token}")
        return p, ref

    def _graph(self, params, arrays, pieces, what, blocks=None, rowwise=True):
        """A Delayed of (value, grads): a task per piece, a tree of additions, the root.

        ``pieces``: a list of groups; each group's pieces are (chunk, rows or None,
        row count).  Full-batch calls have one piece per chunk.
        """
        names = list(arrays)
        if blocks is None:
            blocks = {k: a.to_delayed().ravel() for k, a in arrays.items()}
        p, ref = self._keys(params)
        mean = self.REDUCTION == "mean"
        batched = (tuple(k for k in self.WRT if k in self.INPUT_SHAPES)
                   if what == "value_and_grad" and rowwise else ())
        token = p.key.rsplit("-", 1)[1]
        parts, n = [], 0
        for group in pieces:
            for i, rows, count in group:
                parts.append(dask.delayed(chunk, pure=True)(
                    ref, p, names, rows, mean, batched, what, *[blocks[k][i] for k in names],
                    dask_key_name=f"bpcompile-chunk-{token}-{len(parts)}"))
                n += count
        level, layer = 0, parts
        while len(layer) > 1:
            layer = [dask.delayed(add, pure=True)(*layer[j:j + self.split_every],
                                                   dask_key_name=f"bpcompile-add-{token}-{level}-{j}")
                     for j in range(0, len(layer), self.split_every)]
            level += 1
        return dask.delayed(finish, pure=True)(layer[0], n, mean, self.DTYPE, self.WRT,
                                                *(parts if batched else ()),
                                                dask_key_name=f"bpcompile-finish-{token}")

    def _compute(self, graph):
        if self.client is not None:
            return self.client.compute(graph).result()
        with _blas_limit(self.blas_threads if self.scheduler in ("threads", "threading") else None):
            return dask.compute(graph, scheduler=self.scheduler, num_workers=self.num_workers)[0]

    def _threads(self):
        if self.client is not None:
            return max(1, sum(self.client.nthreads().values()))
        return self.num_workers or os.cpu_count() or 1

    def _place(self, arrays, local):
        """On a cluster, the inputs given as arrays in this process's memory go to the
        workers once (persisted), not with every step's graph; Dask arrays and files
        stay as given (persist them yourself if the cluster's memory holds them)."""
        if self.client is None or not local:
            return arrays
        placed = self.client.persist([arrays[k] for k in local])
        return dict(arrays, **dict(zip(local, placed)))

    def _step_with_gradient(self, fn):
        """The module's step function ``fn``, its value_and_grad bound to a given result.

        The steps take a batch, not a gradient: rebinding the name they call
        (a copy of their globals) runs the module's own update on the distributed
        gradient.  Returns the bound function and the list to put (value, grads) in.
        """
        if "value_and_grad" not in fn.__code__.co_names:
            raise DaskInputError(f"fit: {self.NAME}.{fn.__name__} does not go through value_and_grad; "
                                 "cannot give it a distributed gradient")
        current = [None, None]

        def given(params, **_):
            return current[0], current[1]

        scope = dict(fn.__globals__, value_and_grad=given)
        bound = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)
        bound.__kwdefaults__ = dict(fn.__kwdefaults__ or {})
        return bound, current


_CONTROLLER = []


def _blas_limit(threads):
    """A context that limits BLAS (and OpenMP) threads to ``threads`` (None: no limit)."""
    if threads is None:
        return contextlib.nullcontext()
    if not _CONTROLLER:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - threadpoolctl is in the extra
            return contextlib.nullcontext()
        _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0].limit(limits=threads)


def _pieces(order, sizes, starts, lo, hi, parts):
    """Rows [lo, hi) of the chunks laid end to end in ``order``, cut into ``parts``
    groups of (chunk, slice of its rows, row count)."""
    lengths = np.asarray(sizes)[order]
    ends = np.cumsum(lengths)
    groups = []
    cuts = np.linspace(lo, hi, min(parts, hi - lo) + 1).round().astype(int)
    for a, b in zip(cuts[:-1], cuts[1:]):
        group = []
        j = int(np.searchsorted(ends, a, side="right"))
        while a < b:
            begin = int(ends[j] - lengths[j])
            stop = min(b, int(ends[j]))
            group.append((int(order[j]), slice(a - begin, stop - begin), stop - a))
            a, j = stop, j + 1
        groups.append(group)
    return groups


def _batched(shape):
    return "(" + ", ".join(["N", *map(str, shape)]) + ("," if not shape else "") + ")"


def _short(chunks, most=6):
    chunks = tuple(int(c) for c in chunks)
    if len(chunks) <= most:
        return str(chunks)
    return f"({', '.join(map(str, chunks[:most // 2]))}, ..., {', '.join(map(str, chunks[-most // 2:]))}: {len(chunks)} chunks)"


def _tqdm():
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is in the extra
        return None
    return tqdm


def _logger(log):
    if callable(log):
        return log
    if not log:
        return lambda line: None
    tqdm = _tqdm()
    return tqdm.write if tqdm is not None else print
