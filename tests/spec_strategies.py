"""Hypothesis strategies for model specs: random well-formed ones (DAGs of the
spec language's operations, with shared subexpressions, nodes read by several
consumers and weights used in several places) and malformed ones."""

from __future__ import annotations

import yaml
from hypothesis import strategies as st

UNARY = ["tanh({a})", "sigmoid({a})", "sin({a})", "cos({a})", "softplus({a})", "square({a})",
         "exp(-square({a}))", "log(1 + square({a}))", "sqrt(square({a}) + 1)", "relu({a}) + {a}",
         "clip({a}, -0.5, 0.75)", "maximum({a}, 0.25) - minimum(-0.25, {a})"]
BINARY = ["{a} + {b}", "{a} - {b}", "{a} * {b}", "{a} / (1 + square({b}))", "0.5 * {a} - {b}**2",
          "maximum({a}, {b})", "minimum({a}, 2 * {b})"]
VECTOR = ["softmax({a})", "log_softmax({a})", "tanh({a}) * softmax({a})"]
REDUCE = ["sum({a})", "mean({a})", "logsumexp({a})", "dot({a}, {a})", "var({a})"]
# std's derivative is infinite at zero variance: only of vectors of two entries or more
SPREAD = ["std({a})", "std({a}) * var({a})"]


@st.composite
def specs(draw):
    """A random well-formed spec, as a dict."""
    n_in = draw(st.integers(1, 4))
    n_hid = draw(st.integers(2, 4))
    inputs = {"x": [n_in], "y": []}
    params = {"W": [n_hid, n_in], "v": [n_hid], "s": []}
    use_label = draw(st.booleans())
    if use_label:
        inputs["c"] = {"classes": n_hid}
    # nodes available so far: name -> shape
    avail = {"x": (n_in,), "y": (), "W": (n_hid, n_in), "v": (n_hid,), "s": ()}
    graph = {}
    for i in range(draw(st.integers(1, 6))):
        vectors = [n for n, s in avail.items() if len(s) == 1]
        scalars = [n for n, s in avail.items() if s == ()]
        kind = draw(st.sampled_from(["unary", "binary", "matmul", "vector", "reduce", "scale"]))
        if kind == "matmul":
            a = draw(st.sampled_from([n for n in vectors if avail[n] == (n_in,)]))
            expr, shape = f"W @ {a}", (n_hid,)
        elif kind == "unary":
            a = draw(st.sampled_from(sorted(avail)))
            if len(avail[a]) == 2:
                a = "W"
            expr, shape = draw(st.sampled_from(UNARY)).format(a=a), avail[a]
        elif kind == "binary":
            a = draw(st.sampled_from(vectors))
            same = [n for n in vectors if avail[n] == avail[a]] + scalars
            b = draw(st.sampled_from(sorted(same)))
            expr, shape = draw(st.sampled_from(BINARY)).format(a=a, b=b), avail[a]
        elif kind == "vector":
            a = draw(st.sampled_from(vectors))
            expr, shape = draw(st.sampled_from(VECTOR)).format(a=a), avail[a]
        elif kind == "scale":
            a = draw(st.sampled_from(vectors))
            expr, shape = f"s * {a} + v[0]", avail[a]
        else:
            a = draw(st.sampled_from(vectors))
            reductions = REDUCE + (SPREAD if avail[a][0] >= 2 else [])
            expr, shape = draw(st.sampled_from(reductions)).format(a=a), ()
        name = f"n{i}"
        graph[name] = expr
        avail[name] = shape
    last = list(graph)[-1]
    terms = [f"sum({last})" if avail[last] else last]
    # read a few more nodes so that several are consumed twice (multi-path sums)
    for other in draw(st.lists(st.sampled_from(sorted(graph)), max_size=2, unique=True)):
        terms.append(f"0.5 * sum(tanh({other}))" if avail[other] else f"0.5 * tanh({other})")
    terms.append("(y - sum(v * v))**2 / 4")
    if use_label:
        hidden = [n for n in graph if avail[n] == (n_hid,)]
        z = hidden[-1] if hidden else "v"
        terms.append(f"softmax_cross_entropy({z}, c)")
    wrt = ["W", "v", "s"] + (["x"] if draw(st.booleans()) else [])
    return {"name": "random_spec", "inputs": inputs, "params": params, "graph": graph,
            "loss": " + ".join(terms), "wrt": wrt,
            "reduction": draw(st.sampled_from(["mean", "sum"]))}


def to_yaml(spec: dict) -> str:
    return yaml.safe_dump(spec, sort_keys=False, default_flow_style=None)


MUTATIONS = [
    ("unknown name", lambda t: t.replace("W @", "Q @", 1) if "W @" in t else t.replace("loss: ", "loss: q + ", 1)),
    ("unknown function", lambda t: t.replace("loss: ", "loss: tanhx(y) + ", 1)),
    ("shape mismatch", lambda t: t.replace("loss: ", "loss: sum(W @ v) + sum(x * x) + ", 1)
        .replace("W: [", "W: [7, ", 1).replace("W: [7, ", "W: [7, 5, ", 0)),
    ("missing loss", lambda t: "\n".join(l for l in t.splitlines() if not l.startswith("loss:"))),
    ("not scalar", lambda t: t.replace("loss: ", "loss: x + ", 1)),
    ("bad yaml", lambda t: t.replace("inputs:", "inputs: [", 1)),
    ("keyword name", lambda t: t.replace("graph:\n", "graph:\n  while: 1\n", 1)),
    ("syntax", lambda t: t.replace("loss: ", "loss: (((", 1)),
    ("call of attribute", lambda t: t.replace("loss: ", "loss: x.sum() + ", 1)),
    ("wrt label", lambda t: t.replace("wrt: [", "wrt: [y_label, ", 1).replace("inputs:\n", "inputs:\n  y_label: {classes: 2}\n", 1)),
    ("duplicate key", lambda t: t.replace("params:\n", "params:\n  s: []\n", 1)),
    ("empty", lambda t: ""),
    ("division by zero", lambda t: t.replace("loss: ", "loss: y / (x[0] - x[0]) + ", 1)),
    ("infinite constant", lambda t: t.replace("loss: ", "loss: 1e999 * y + ", 1)),
    ("clip lo above hi", lambda t: t.replace("loss: ", "loss: sum(clip(x, 1, 0.5)) + ", 1)),
    ("clip tensor bound", lambda t: t.replace("loss: ", "loss: sum(clip(x, y, 1)) + ", 1)),
    ("maximum arity", lambda t: t.replace("loss: ", "loss: sum(maximum(x)) + ", 1)),
    ("var two arguments", lambda t: t.replace("loss: ", "loss: var(x, x) + ", 1)),
]


@st.composite
def malformed(draw):
    """A spec text with one defect, or random junk."""
    if draw(st.integers(0, 4)) == 0:
        return "junk", draw(st.text(max_size=80))
    label, mutate = draw(st.sampled_from(MUTATIONS))
    return label, mutate(to_yaml(draw(specs())))
