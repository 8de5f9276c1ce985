"""Stage 3: reverse mode over the graph.

For every node x on a path from a differentiated leaf to the loss, in reverse
topological order,

    x_bar = sum over consumers c of x of (c_bar . dc/dx)

with dc/dx the local derivative (``ops.vjp_rule``: an elementwise node's from
SymPy, a structural op's from its record).  Each x_bar is computed once and
reused by every path through x: the dynamic programming of the lectures.  The
adjoints are new nodes of the same hash-consed graph, so shared subexpressions of
the backward pass are one node too, and forward values the derivatives mention
(``e`` in ``1 - e**2``) are the forward nodes themselves, never recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import sympy as sp

from ..frontend.graph import Graph, Lowered
from . import Contraction, Scatter, arg_symbol, vjp_rule


@dataclass
class Adjoints:
    """The result of the reverse pass."""

    bar: dict                        # forward node -> its adjoint node
    grads: dict                      # WRT name -> node holding exactly dL/d(name)
    terms: dict = field(default_factory=dict)   # forward node -> [(consumer, rule, contribution)]
    order: list = field(default_factory=list)   # forward nodes in the order their adjoints were made


def relevant_nodes(G: Graph, loss: int, wrt) -> list:
    """Nodes on some path from a WRT node to the loss, in descending id order.

    Two walks in all, each linear in the graph: back from the loss, and forward
    from every WRT node at once (inside what the loss depends on).  Both are
    iterative: deep chains meet no recursion limit."""
    upstream = nx.ancestors(G.g, loss)
    upstream.add(loss)
    seen = {w for w in wrt if w in upstream}
    stack = list(seen)
    while stack:
        for c in G.g.successors(stack.pop()):
            if c in upstream and c not in seen:
                seen.add(c)
                stack.append(c)
    return sorted(seen, reverse=True)


def reverse(low: Lowered) -> Adjoints:
    G = low.graph
    wrt_nodes = list(low.wrt.values())
    relevant = relevant_nodes(G, low.loss, wrt_nodes)
    relevant_set = set(relevant)
    pending: dict = {n: [] for n in relevant}
    result = Adjoints(bar={}, grads={})
    if low.loss in relevant_set:
        pending[low.loss].append((None, "seed", G.const(1)))
    for n in relevant:
        terms = pending.pop(n)
        result.terms[n] = terms
        g = accumulate(G, n, [t[2] for t in terms])
        if g is None:
            continue
        result.bar[n] = g
        result.order.append(n)
        node = G.node(n)
        rule = vjp_rule(node["op"])
        if rule is None:
            continue
        for a in dict.fromkeys(node["args"]):
            if a not in relevant_set:
                continue
            for pos in G.g.edges[a, n]["pos"]:
                c = rule(G, n, pos, g)
                if c is None:
                    continue
                if not isinstance(c, Scatter):
                    c = fit(G, c, a)
                pending[a].append((n, node["rule"], c))
    for name, w in low.wrt.items():
        result.grads[name] = result.bar.get(w)
    return result


def fit(G: Graph, c: int, target: int) -> int:
    """Sum a contribution over the axes its target was broadcast along."""
    nt = G.node(target)
    product = _batch_product(G, c, nt)
    if product is not None:
        return product
    return G.sum_to(c, nt["shape"], nt["batched"])


def _batch_product(G: Graph, c: int, nt: dict):
    """``sum over the batch of p * q`` as one contraction (``v_bar = g_bar @ e``):
    a GEMM instead of a temporary of the batch's size and a reduction."""
    node = G.node(c)
    if node["op"] != "map" or not node["batched"] or nt["batched"]:
        return None
    if node["attrs"][0] != arg_symbol(0) * arg_symbol(1) or len(node["args"]) != 2:
        return None
    p, q = node["args"]
    shape, target = node["shape"], tuple(nt["shape"])
    if len(target) > len(shape) or shape[len(shape) - len(target):] != target:
        return None
    labels = "ijklmopq"[:len(shape)]
    subs = []
    for a in (p, q):
        na = G.node(a)
        if not na["batched"] or shape[len(shape) - len(na["shape"]):] != na["shape"]:
            return None
        subs.append(labels[len(shape) - len(na["shape"]):])
    return G.contract(p, q, Contraction(subs[0], subs[1], labels[len(shape) - len(target):]), False)


def accumulate(G: Graph, n: int, contributions: list):
    """The sum of a node's contributions: one elementwise sum, then any scatters."""
    dense = join_unslices(G, n, [c for c in contributions if not isinstance(c, Scatter)])
    scatters = [c for c in contributions if isinstance(c, Scatter)]
    total = None
    if len(dense) == 1:
        total = dense[0]
    elif dense:
        expr = sp.Add(*[arg_symbol(i) for i in range(len(dense))])
        total = G.map(expr, dense, rule="sum over consumers")
    if scatters:
        node = G.node(n)
        base = G.materialize(total, n) if total is not None else G.zeros(node["shape"], node["batched"])
        for s in scatters:
            base = G.scatter_add(base, s.label, s.value)
        total = base
    if total is not None:
        # an adjoint has its node's full shape; a smaller contribution (the
        # adjoint of a sum, say) is broadcast back so that every later fit sums
        # over the right number of copies
        total = G.materialize(total, n)
    return total


def _unslice_window(G: Graph, c: int, shape: tuple):
    """(axis, start, stop, indexed) when ``c`` is zeros of ``shape`` but for one run
    of entries along one axis (``e[t]``, ``v[2:5]``, ``X[:, 0:3]``; step 1), else None."""
    node = G.node(c)
    if node["op"] != "unslice" or tuple(node["attrs"][0]) != tuple(shape):
        return None
    key = node["attrs"][1]
    axis = len(key) - 1
    if axis < 0 or any(k != (0, d, 1) for k, d in zip(key[:axis], shape)):
        return None
    last = key[axis]
    if isinstance(last, tuple):
        start, stop, step = last
        return None if step != 1 else (axis, start, stop, False)
    return axis, last, last + 1, True


def join_unslices(G: Graph, n: int, dense: list) -> list:
    """Contributions that each fill one run of an axis of ``n`` (the adjoints of
    ``e[0]``, ``e[1]``, ... of an unrolled sequence) joined into one array, ``e_bar =
    concat(q1_bar, q3_bar, ...)``, zeros only in the gaps: their sum as one array of
    ``n``'s size instead of one zero-filled array per consumer (quadratic in the
    sequence length).  Contributions on the same run are summed first; runs that
    overlap otherwise, and a lone run, are left to the plain sum."""
    node = G.node(n)
    shape, batched = tuple(node["shape"]), node["batched"]
    by_axis: dict = {}
    for c in dense:
        w = _unslice_window(G, c, shape)
        if w is not None:
            by_axis.setdefault(w[0], []).append((w[1], w[2], w[3], c))
    joined, rest = [], list(dense)
    for axis, runs in sorted(by_axis.items()):
        spans = sorted({(start, stop) for start, stop, _, _ in runs})
        if len(spans) < 2 or any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
            continue
        pieces, at = [], 0
        for start, stop in spans:
            if start > at:
                pieces.append(G.zeros(shape[:axis] + (start - at,) + shape[axis + 1:], batched))
            here = []
            for s0, s1, indexed, c in runs:
                if (s0, s1) == (start, stop):
                    g = G.node(c)["args"][0]
                    here.append(G.reshape(g, shape[:axis] + (1,) + shape[axis + 1:]) if indexed else g)
            pieces.append(here[0] if len(here) == 1 else
                          G.map(sp.Add(*[arg_symbol(i) for i in range(len(here))]), here, rule="sum over consumers"))
            at = stop
        if at < shape[axis]:
            pieces.append(G.zeros(shape[:axis] + (shape[axis] - at,) + shape[axis + 1:], batched))
        joined.append(G.concat(pieces, axis, rule="sum over consumers"))
        used = {c for _, _, _, c in runs}
        rest = [c for c in rest if c not in used]
    return joined + rest
