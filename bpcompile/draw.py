"""``bpcompile graph``: the computational graph as the lecture diagrams draw it.

Inputs, params, one node per operation, the loss; forward edges in black and the
adjoint flow in red, running backwards, labelled with the local derivative.
Layered left to right in topological order.  ``.dot`` is written as text;
``.svg`` and ``.png`` are drawn with matplotlib through networkx.
"""

from __future__ import annotations

from pathlib import Path

import networkx as nx

from .compiler import Compiled, write_atomic
from .equations import Namer, contraction_text, show
from .escape import dot_str
from .ops import OUT, arg_symbol, local_derivative

FORMATS = (".dot", ".svg", ".png")
HIDDEN_OPS = ("const", "batch_size", "reshape", "broadcast")
COLORS = {"input": "#cfe8cf", "param": "#fbd9a5", "op": "#dbe6f6", "loss": "#f6c1c1"}
SYMBOLS = {"add": "+", "sub": "-", "mul": "*", "div": "/", "neg": "-", "pow": "**",
           "matmul": "@", "contract": "@", "dot": "dot", "sum": "sum", "mean": "mean", "max": "max", "take": "[label]"}


def picture_graph(compiled: Compiled) -> nx.DiGraph:
    """The forward graph a reader sees: named values and operations, with the
    local derivative on each edge that the adjoint flows back along."""
    low, adj = compiled.lowered, compiled.adjoints
    G = low.graph
    namer = Namer(low)
    keep = set(nx.ancestors(G.g, low.loss)) | {low.loss}
    keep = {n for n in keep if G.node(n)["op"] not in HIDDEN_OPS}
    P = nx.DiGraph()

    def shown(n):
        # read through the nodes the picture leaves out (reshapes, broadcasts)
        while G.node(n)["op"] in ("reshape", "broadcast") and G.node(n)["args"]:
            n = G.node(n)["args"][0]
        return n

    for n in sorted(keep):
        node = G.node(n)
        op = node["op"]
        name = namer.name(n)
        kind = op if op in ("input", "param") else ("loss" if n in (low.loss, low.example_loss) else "op")
        rule = node["rule"]
        label = name if name is not None else SYMBOLS.get(rule, rule)
        if name is not None and kind == "op":
            label = f"{name}\n{SYMBOLS.get(rule, rule)}"
        shape = "x".join(map(str, node["shape"])) or "scalar"
        P.add_node(n, label=label, kind=kind, shape=shape, differentiated=n in adj.bar)
    for n in sorted(keep):
        node = G.node(n)
        for pos, a in enumerate(node["args"]):
            a = shown(a)
            if a not in keep:
                continue
            flows = n in adj.bar and a in adj.bar
            P.add_edge(a, n, adjoint=flows, derivative=_local_derivative(G, namer, n, pos) if flows else "")
    return P


def _local_derivative(G, namer, n, pos) -> str:
    node = G.node(n)
    op = node["op"]
    if op == "map":
        d = local_derivative(node["attrs"][0], pos)
        subs = {arg_symbol(i): namer.sym(a) for i, a in enumerate(node["args"])}
        subs[OUT] = namer.sym(n)
        return show(d.xreplace(subs))
    if op == "contract":
        form = node["attrs"][0]
        a, b = node["args"]
        other = namer.atom(b if pos == 0 else a)
        return contraction_text(form.transposed_for(pos), "·", other) if pos == 0 \
            else contraction_text(form.transposed_for(pos), other, "·")
    if op == "reduce":
        return "1" if node["attrs"][0] == "sum" else "[x == max]"
    if op == "take":
        return "onehot"
    return "1"


def _dot_label(*lines: str) -> str:
    """A DOT label of several lines: each line quoted by escape.dot_str, joined by
    DOT's own line break ``\\n`` inside one pair of quotes."""
    return '"' + "\\n".join(dot_str(line)[1:-1] for line in lines) + '"'


def to_dot(name: str, P: nx.DiGraph) -> str:
    lines = [f"digraph {dot_str(name)} {{", "  rankdir=LR;",
             '  node [fontname="Helvetica", style=filled];', '  edge [fontname="Helvetica", fontsize=10];']
    for n, d in P.nodes(data=True):
        shape = "box" if d["kind"] in ("input", "param") else "ellipse"
        label = _dot_label(*d["label"].split("\n"), f"[{d['shape']}]")
        lines.append(f'  n{int(n)} [label={label}, shape={shape}, fillcolor={dot_str(COLORS[d["kind"]])}];')
    for a, b in P.edges:
        lines.append(f"  n{int(a)} -> n{int(b)};")
    for a, b, d in P.edges(data=True):
        if d["adjoint"]:
            lines.append(f"  n{int(b)} -> n{int(a)} [color=red, fontcolor=red, style=dashed, constraint=false, "
                         f"label={dot_str(d['derivative'])}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def layers(P: nx.DiGraph) -> dict:
    """Topological layer of each node: the longest path from a leaf, with each leaf
    moved right next to its first consumer (a bias beside its sum, as in the lectures)."""
    layer = {}
    for n in nx.lexicographical_topological_sort(P):
        layer[n] = max((layer[p] + 1 for p in P.predecessors(n)), default=0)
    for n in P.nodes:
        if P.in_degree(n) == 0 and P.out_degree(n):
            layer[n] = min(layer[c] for c in P.successors(n)) - 1
    return layer


def draw(name: str, P: nx.DiGraph, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layer = layers(P)
    for n in P.nodes:
        P.nodes[n]["layer"] = layer[n]
    pos = nx.multipartite_layout(P, subset_key="layer", align="vertical", scale=1.0)
    depth = max(layer.values()) + 1
    tallest = max(sum(1 for v in layer.values() if v == k) for k in range(depth))
    fig, ax = plt.subplots(figsize=(max(6.0, 2.1 * depth), max(3.0, 1.3 * tallest + 1)))
    colors = [COLORS[P.nodes[n]["kind"]] for n in P.nodes]
    labels = {n: f"{d['label']}\n[{d['shape']}]" for n, d in P.nodes(data=True)}
    nx.draw_networkx_edges(P, pos, ax=ax, arrows=True, arrowstyle="-|>", arrowsize=12,
                           node_size=2600, edge_color="#444444")
    back = [(b, a) for a, b, d in P.edges(data=True) if d["adjoint"]]
    R = nx.DiGraph(back)
    nx.draw_networkx_edges(R, pos, ax=ax, edgelist=back, arrows=True, arrowstyle="-|>", arrowsize=10,
                           node_size=2600, edge_color="#cc2222", style="dashed",
                           connectionstyle="arc3,rad=0.35")
    edge_labels = {(b, a): d["derivative"] for a, b, d in P.edges(data=True) if d["adjoint"]}
    nx.draw_networkx_edge_labels(R, pos, edge_labels=edge_labels, ax=ax, font_size=8, font_color="#cc2222",
                                 connectionstyle="arc3,rad=0.35", label_pos=0.5,
                                 bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8})
    nx.draw_networkx_nodes(P, pos, ax=ax, node_color=colors, node_size=2600, edgecolors="#555555")
    nx.draw_networkx_labels(P, pos, labels=labels, ax=ax, font_size=8)
    ax.set_title(f"{name}: forward (black) and adjoint flow (red, dashed, "
                 "labelled with the local derivative)", fontsize=10)
    ax.axis("off")
    ax.margins(0.08)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        fig.savefig(tmp, dpi=110, metadata={"Date": None} if path.suffix == ".svg" else {"Software": None})
        tmp.replace(path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()


def write(compiled: Compiled, path) -> tuple:
    """Draw the graph of ``compiled`` into ``path``; returns (path, the picture's graph)."""
    path = Path(path)
    if path.suffix not in FORMATS:
        raise ValueError(f"{path}: the picture is written as {', '.join(FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    P = picture_graph(compiled)
    if path.suffix == ".dot":
        write_atomic(path, to_dot(compiled.spec.name, P))
    else:
        draw(compiled.spec.name, P, path)
    return path, P
