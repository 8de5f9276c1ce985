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
# with a token input t [T] of K classes and a param E [K, n_hid]: vectors of n_hid
GATHER = ["sum(E[t], axis=0)", "E[t][{j}]", "mean(tanh(E[t] * {a}), axis=0)", "sum(onehot(t) @ E, axis=0)",
          "max(E[t] + {a}, axis=0)"]


@st.composite
def slices(draw, a, n):
    """``a[lo:hi]`` or ``a[lo:hi:2]`` of a vector of n, never empty, its bounds written
    from the front or the back, or left open: (expression, shape)."""
    start = draw(st.integers(0, n - 1))
    stop = draw(st.integers(start + 1, n))
    step = draw(st.sampled_from([1, 1, 2]))
    lo = draw(st.sampled_from([str(start), str(start - n), ""][: 3 if start == 0 else 2]))
    hi = draw(st.sampled_from([str(stop), str(stop - n) if stop < n else "", "" if stop == n else str(stop)]))
    text = f"{a}[{lo}:{hi}{':2' if step == 2 else ''}]"
    return text, (len(range(start, stop, step)),)


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
    use_tokens = draw(st.booleans())
    if use_tokens:
        n_tok = draw(st.integers(1, 4))
        inputs["t"] = {"classes": draw(st.integers(2, 5)), "shape": [n_tok]}
        params["E"] = [inputs["t"]["classes"], n_hid]
    # nodes available so far: name -> shape
    avail = {"x": (n_in,), "y": (), "W": (n_hid, n_in), "v": (n_hid,), "s": ()}
    graph = {}
    for i in range(draw(st.integers(1, 6))):
        vectors = [n for n, s in avail.items() if len(s) == 1]
        scalars = [n for n, s in avail.items() if s == ()]
        kind = draw(st.sampled_from(["unary", "binary", "matmul", "vector", "reduce", "scale",
                                     "slice", "concat", "reshape", "partial"]
                                    + ["gather"] * (2 * use_tokens)))
        if kind == "slice":
            a = draw(st.sampled_from(vectors))
            expr, shape = draw(slices(a, avail[a][0]))
        elif kind == "concat":
            a, b = draw(st.sampled_from(vectors)), draw(st.sampled_from(vectors))
            expr, shape = f"concat({a}, {b})", (avail[a][0] + avail[b][0],)
        elif kind == "reshape":
            a = draw(st.sampled_from(vectors))
            n = avail[a][0]
            rows = draw(st.sampled_from([d for d in range(1, n + 1) if n % d == 0]))
            if draw(st.booleans()):
                expr, shape = f"sum(tanh(reshape({a}, [{rows}, -1])), axis=0)", (n // rows,)
            else:
                expr, shape = f"flatten(reshape({a}, [{rows}, {n // rows}]) * 2)", (n,)
        elif kind == "partial":
            # a product over some of the inputs: a slice of W's columns and of a vector
            a = draw(st.sampled_from([n for n in vectors if avail[n] == (n_in,)]))
            lo = draw(st.integers(0, n_in - 1))
            hi = draw(st.integers(lo + 1, n_in))
            expr, shape = f"W[:, {lo}:{hi}] @ {a}[{lo}:{hi}]", (n_hid,)
        elif kind == "gather":
            a = draw(st.sampled_from(sorted(n for n in vectors if avail[n] == (n_hid,)) or ["v"]))
            j = draw(st.integers(0, n_tok - 1))
            expr, shape = draw(st.sampled_from(GATHER)).format(a=a, j=j), (n_hid,)
        elif kind == "matmul":
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
    if draw(st.integers(0, 3)) == 0:
        terms.append(draw(images(inputs, params, graph)))
    wrt = ["W", "v", "s"] + (["K"] if "K" in params else []) + (["E"] if use_tokens else []) \
        + (["x"] if draw(st.booleans()) else [])
    return {"name": "random_spec", "inputs": inputs, "params": params, "graph": graph,
            "loss": " + ".join(terms), "wrt": wrt,
            "reduction": draw(st.sampled_from(["mean", "sum"]))}


@st.composite
def images(draw, inputs, params, graph):
    """A convolution of an image input, maybe pooled and convolved again (adds them
    to the spec's sections); returns a term of the loss reading the result."""
    c, size = draw(st.integers(1, 2)), draw(st.integers(3, 6))
    inputs["img"] = [c, size, size]
    o, k = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    params["K"] = [o, c, k, k]
    stride = draw(st.integers(1, 2))
    padding = draw(st.sampled_from([0, 1] + (["'same'"] if stride == 1 else [])))
    pad = k - 1 if padding == "'same'" else 2 * padding
    out = (size + pad - k) // stride + 1
    keywords = (f", stride={stride}" if stride != 1 else "") + (f", padding={padding}" if padding else "")
    graph["cv"] = f"{draw(st.sampled_from(['tanh', 'relu', 'sin']))}(conv2d(img, K{keywords}))"
    last = "cv"
    if out >= 2 and draw(st.integers(0, 3)) > 0:   # pooled three times in four: its routing is what breaks
        pool = draw(st.integers(2, out))
        graph["pl"] = f"{draw(st.sampled_from(['max_pool2d', 'avg_pool2d']))}(cv, {pool}" + \
            (f", stride={draw(st.integers(1, 2))})" if draw(st.booleans()) else ")")
        last = "pl"
    if draw(st.booleans()):
        params["K2"] = [1, o, 1, 1]
        graph["cv2"] = f"conv2d({last}, K2)"
        last = "cv2"
    return f"0.5 * sum({last} * {last})"


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
    ("tokens as float", lambda t: t.replace("inputs:\n", "inputs:\n  tk: {classes: 3, shape: [2]}\n", 1)
        .replace("loss: ", "loss: sum(tk * 2) + ", 1)),
    ("gather by a float", lambda t: t.replace("loss: ", "loss: sum(W[x]) + ", 1)),
    ("gather of the wrong table", lambda t: t.replace("inputs:\n", "inputs:\n  tk: {classes: 7, shape: [2]}\n", 1)
        .replace("loss: ", "loss: sum(W[tk]) + ", 1)),
    ("tokens as a label", lambda t: t.replace("inputs:\n", "inputs:\n  tk: {classes: 2, shape: [2]}\n", 1)
        .replace("loss: ", "loss: softmax_cross_entropy(v, tk) + ", 1)),
    ("duplicate key", lambda t: t.replace("params:\n", "params:\n  s: []\n", 1)),
    ("empty", lambda t: ""),
    ("division by zero", lambda t: t.replace("loss: ", "loss: y / (x[0] - x[0]) + ", 1)),
    ("infinite constant", lambda t: t.replace("loss: ", "loss: 1e999 * y + ", 1)),
    ("slice out of range", lambda t: t.replace("loss: ", "loss: sum(x[9:12]) + ", 1)),
    ("slice step", lambda t: t.replace("loss: ", "loss: sum(v[::-1]) + ", 1)),
    ("bad reshape", lambda t: t.replace("loss: ", "loss: sum(reshape(x, [7, 5])) + ", 1)),
    ("concat shapes", lambda t: t.replace("loss: ", "loss: sum(concat(x, W)) + ", 1)),
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
