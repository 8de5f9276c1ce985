"""``bpcompile graph``: the computational graph as the lecture diagrams draw it.

Inputs, params, one node per operation, the loss; forward edges in black and the
adjoint flow in red, running backwards, labelled with the local derivative.
``.dot`` is written as text; ``.svg`` and ``.png`` are drawn with matplotlib (the
``graph`` extra: ``pip install "bpcompile[graph]"``).

The picture is ranked by depth (a node's column is the longest path to it from
the leaves; a leaf stands one column before its first consumer) and stays within
a fixed width: a deep graph wraps into rows, read left to right, then right to
left, and so on, so that the edge from one row into the next is a short step
down.  Every node is labelled (its spec name, or else its expression) with its
shape.

What is a node: ``compile`` counts the nodes of the lowered graph, the forward
nodes and the nodes the reverse pass adds (``node_counts``).  The picture draws
the forward nodes the loss or the output reads, except constants, the batch size,
reshapes and broadcasts, which are read through; the nodes the reverse pass adds
are drawn as the red arrows.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import networkx as nx

from ..compiler import Compiled, write_atomic
from ..ir.equations import WINDOW_MACROS, Namer, show
from ..escape import dot_str
from ..ops import OUT, STRUCTURAL_OPS, arg_symbol, local_derivative

FORMATS = (".dot", ".svg", ".png")
# read through: the leaves of no interest, and the structural ops whose record says so
READ_THROUGH = tuple(op for op, record in STRUCTURAL_OPS.items() if not record.drawn)
HIDDEN_OPS = ("const", "batch_size", *READ_THROUGH)
COLORS = {"input": "#cfe8cf", "param": "#fbd9a5", "op": "#dbe6f6", "loss": "#f6c1c1"}
# the symbol under a named node, by its rule (a structural op's record may say its own)
SYMBOLS = {"add": "+", "sub": "-", "mul": "*", "div": "/", "neg": "-", "pow": "**"}
INSTALL = 'pip install "bpcompile[graph]"'

# The drawing, in inches (one data unit is one inch) and points.
FONT = 8                 # node labels
EDGE_FONT = 7            # local derivatives on the adjoint arrows
MAX_WIDTH = 17.0         # the picture wraps into rows rather than grow wider
MAX_LABEL = 24           # characters of a node's title shown in the picture (the .dot has all)
MAX_DERIVATIVE = 28      # characters of a local derivative shown in the picture
COLUMN_GAP = 0.75        # between the boxes of neighbouring columns
SLOT_GAP = 0.45          # between the boxes stacked in one column
ROW_GAP = 0.8            # between rows
DPI = 100


class MissingMatplotlib(ImportError):
    """Drawing .svg/.png needs matplotlib, which bpcompile does not require."""

    def __init__(self):
        super().__init__(f"drawing .svg/.png needs matplotlib: {INSTALL} (.dot needs nothing)")


def picture_graph(compiled: Compiled) -> nx.DiGraph:
    """The forward graph a reader sees: named values and operations, with the
    local derivative on each edge that the adjoint flows back along."""
    low, adj = compiled.lowered, compiled.adjoints
    G = low.graph
    namer = Namer(low)
    roots = {low.loss, low.output}
    keep = set(roots)
    for r in roots:
        keep |= nx.ancestors(G.g, r)
    keep = {n for n in keep if G.node(n)["op"] not in HIDDEN_OPS}
    P = nx.DiGraph()

    def shown(n):
        # read through the nodes the picture leaves out (reshapes, broadcasts)
        while G.node(n)["op"] in READ_THROUGH and G.node(n)["args"]:
            n = G.node(n)["args"][0]
        return n

    for n in sorted(keep):
        node = G.node(n)
        op = node["op"]
        name = namer.name(n)
        kind = op if op in ("input", "param") else ("loss" if n in (low.loss, low.example_loss) else "op")
        rule = node["rule"]
        record = STRUCTURAL_OPS.get(op)
        symbol = record.symbol if record is not None and record.symbol else SYMBOLS.get(rule, rule)
        if G.macros.get(n, ("",))[0] in WINDOW_MACROS:
            symbol = G.macros[n][0]    # a convolution or a pooling, by its function's name
        if kind in ("input", "param"):
            label = name
        elif name is not None:
            label = f"{name}\n{symbol}"
        else:
            # an anonymous operation is labelled by what it computes: W1 @ x, z2[label]
            label = show(namer.sym(n)) or symbol
        shape = "x".join(map(str, node["shape"])) or "scalar"
        P.add_node(n, label=label, kind=kind, shape=shape, differentiated=n in adj.bar)
    for n in sorted(keep):
        node = G.node(n)
        for pos, a in enumerate(node["args"]):
            a = shown(a)
            if a not in keep or P.has_edge(a, n):
                continue
            flows = n in adj.bar and a in adj.bar
            P.add_edge(a, n, adjoint=flows, derivative=_local_derivative(G, namer, n, pos) if flows else "")
    return P


def node_counts(compiled: Compiled, P: nx.DiGraph | None = None) -> dict:
    """What is counted, and what is drawn.

    ``nodes`` is what ``compile`` reports: every node of the lowered graph, of
    which ``forward`` are made by lowering the spec and ``reverse`` by the reverse
    pass.  ``drawn`` are the forward nodes in the picture, ``forward_edges`` and
    ``adjoint_edges`` its arrows."""
    if P is None:
        P = picture_graph(compiled)
    total = len(compiled.lowered.graph)
    forward = compiled.lowered.forward_nodes
    adjoint_edges = sum(1 for _, _, d in P.edges(data=True) if d["adjoint"])
    return {"nodes": total, "forward": forward, "reverse": total - forward, "drawn": P.number_of_nodes(),
            "forward_edges": P.number_of_edges(), "adjoint_edges": adjoint_edges}


def summary(counts: dict) -> str:
    """The counts in words, the same for the command line and the picture."""
    return (f"{counts['nodes']} graph nodes ({counts['forward']} forward, {counts['reverse']} added by reverse "
            f"mode), as compile counts; drawn: {counts['drawn']} forward nodes (constants, the batch size, "
            f"reshapes and broadcasts read through), {counts['forward_edges']} forward edges, "
            f"{counts['adjoint_edges']} adjoint edges")


def _local_derivative(G, namer, n, pos) -> str:
    node = G.node(n)
    if node["op"] != "map":
        return STRUCTURAL_OPS[node["op"]].label(G, n, pos, namer.atom)
    d = local_derivative(node["attrs"][0], pos)
    subs = {arg_symbol(i): namer.sym(a) for i, a in enumerate(node["args"])}
    subs[OUT] = namer.sym(n)
    return show(d.xreplace(subs))


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


# ---------------------------------------------------------------------------
# the layout


def layers(P: nx.DiGraph) -> dict:
    """Rank of each node by depth: the longest path to it from a leaf, with each
    leaf moved right next to its first consumer (a bias beside its sum, as in the
    lectures).  Ranks are 0, 1, 2, ... with none empty."""
    layer = {}
    for n in nx.lexicographical_topological_sort(P):
        layer[n] = max((layer[p] + 1 for p in P.predecessors(n)), default=0)
    for n in P.nodes:
        if P.in_degree(n) == 0 and P.out_degree(n):
            layer[n] = max(0, min(layer[c] for c in P.successors(n)) - 1)
    used = sorted(set(layer.values()))
    dense = {r: i for i, r in enumerate(used)}
    return {n: dense[r] for n, r in layer.items()}


def _order(P: nx.DiGraph, layer: dict) -> list:
    """The nodes of each rank, top to bottom, ordered to keep edges from crossing
    (a few sweeps of the barycentre heuristic; deterministic)."""
    depth = max(layer.values(), default=-1) + 1
    ranks = [sorted(n for n in P.nodes if layer[n] == k) for k in range(depth)]
    for sweep in range(4):
        down = sweep % 2 == 0
        index = {n: i for rank in ranks for i, n in enumerate(rank)}
        seq = range(1, depth) if down else range(depth - 2, -1, -1)
        for k in seq:
            def centre(n, k=k):
                near = [m for m in (P.predecessors(n) if down else P.successors(n))
                        if layer[m] == (k - 1 if down else k + 1)]
                if not near:
                    return index[n]
                return sum(index[m] for m in near) / len(near)
            ranks[k] = sorted(ranks[k], key=lambda n: (centre(n), index[n], n))
            index.update({n: i for i, n in enumerate(ranks[k])})
    return ranks


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _node_text(d: dict) -> str:
    lines = [_clip(line, MAX_LABEL) for line in d["label"].split("\n")]
    return "\n".join([*lines, f"[{_clip(d['shape'], MAX_LABEL - 2)}]"])


class Layout:
    """Where each node goes (box centres, in inches), and the size of each box.

    Ranks go into columns, ``columns`` to a row; even rows run left to right, odd
    rows right to left (the edge into the next row is a short step down).  A
    column is as wide as its widest box; as many columns go in a row as fit in
    MAX_WIDTH, and the rows are balanced."""

    def __init__(self, P: nx.DiGraph, sizes: dict):
        self.P = P
        self.sizes = sizes                        # node -> (width, height) of its box
        layer = layers(P) if P.number_of_nodes() else {}
        depth = max(layer.values(), default=-1) + 1
        widest = {}
        for n, k in layer.items():
            widest[k] = max(widest.get(k, 0.0), sizes[n][0])
        self.columns = self._fit(depth, widest)
        self.rows = max(1, math.ceil(depth / self.columns))
        # a leaf stays in the row of its first consumer: beside it, or (at a row's start,
        # where the edge from the row before comes in from above) below it
        moved = set()
        for n in P.nodes:
            if P.in_degree(n) == 0 and P.out_degree(n):
                first = min(layer[c] for c in P.successors(n))
                if layer[n] // self.columns != first // self.columns:
                    layer[n] = first
                    moved.add(n)
        self.layer = layer
        ranks = _order(P, layer) if layer else []
        ranks = [[n for n in rank if n not in moved] + [n for n in rank if n in moved] for rank in ranks]
        self.row = {n: k // self.columns for n, k in layer.items()}
        self.column = {n: self._column(k) for n, k in layer.items()}
        col_w = [0.0] * self.columns
        for n, c in self.column.items():
            col_w[c] = max(col_w[c], sizes[n][0])
        x, self.col_x = 0.0, []
        for w in col_w:
            self.col_x.append(x + w / 2)
            x += w + COLUMN_GAP
        self.width = x - COLUMN_GAP
        box_h = max((h for _, h in sizes.values()), default=0.4)
        self.slot = box_h + SLOT_GAP
        self.pos = {}
        # rows stack as closely as their columns allow: a row's band sits ROW_GAP below
        # the lowest box of the row above in each column it shares (or neighbours)
        above = {}                              # column -> the lowest box edge so far
        bottom = 0.0
        for r in range(self.rows):
            in_row = ranks[r * self.columns:(r + 1) * self.columns]
            rel = {}
            for rank in in_row:
                for i, n in enumerate(rank):
                    rel[n] = ((len(rank) - 1) / 2 - i) * self.slot
            tops = {}
            for n, y in rel.items():
                c = self.column[n]
                tops[c] = max(tops.get(c, -math.inf), y + sizes[n][1] / 2)
            if r == 0:
                centre = -max(tops.values(), default=0.0)
            else:
                centre = min((above[c2] - ROW_GAP - t for c, t in tops.items()
                              for c2 in (c - 1, c, c + 1) if c2 in above),
                             default=bottom - ROW_GAP - max(tops.values()))
            for n, y in rel.items():
                self.pos[n] = (self.col_x[self.column[n]], centre + y)
                c = self.column[n]
                low = centre + y - sizes[n][1] / 2
                above[c] = min(above.get(c, math.inf), low)
                bottom = min(bottom, low)
        self.height = -bottom

    def _column(self, k: int, columns: int | None = None) -> int:
        columns = columns or self.columns
        r, c = divmod(k, columns)
        return c if r % 2 == 0 else columns - 1 - c

    def _fit(self, depth: int, widest: dict) -> int:
        """The most columns whose row fits in MAX_WIDTH (at least one), balanced over the rows."""
        if depth == 0:
            return 1
        narrowest = min(widest.values())
        best = 1
        for columns in range(1, min(depth, int(MAX_WIDTH / (narrowest + COLUMN_GAP)) + 1) + 1):
            w = [0.0] * columns
            for k in range(depth):
                c = self._column(k, columns)
                w[c] = max(w[c], widest[k])
            if sum(w) + COLUMN_GAP * (columns - 1) <= MAX_WIDTH:
                best = columns
        rows = math.ceil(depth / best)
        return math.ceil(depth / rows)

    def reversed_row(self, n) -> bool:
        return self.row[n] % 2 == 1

    def span(self, a, b) -> int:
        """How many columns the edge a -> b crosses (0: neighbours in one row; -1: between rows)."""
        if self.row[a] != self.row[b]:
            return -1
        return abs(self.column[a] - self.column[b]) - 1


def _arc(p, q, bulge: float) -> float:
    """matplotlib's arc3 ``rad`` that bows the arc from p to q by ``bulge`` inches
    at its middle (positive: to the left of the direction of travel... as arc3 has it)."""
    length = math.hypot(q[0] - p[0], q[1] - p[1])
    return 0.0 if length == 0 else 2 * bulge / length


def _middle(p, q, rad: float) -> tuple:
    """The middle point of matplotlib's arc3 curve from p to q."""
    dx, dy = q[0] - p[0], q[1] - p[1]
    return ((p[0] + q[0]) / 2 + 0.5 * rad * dy, (p[1] + q[1]) / 2 - 0.5 * rad * dx)


def _import_pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
    except ImportError:
        raise MissingMatplotlib() from None
    return plt, FancyArrowPatch, FancyBboxPatch


def _measure(plt, P: nx.DiGraph) -> dict:
    """The size in inches of each node's box, from its label as matplotlib sets it."""
    fig = plt.figure(figsize=(4, 4), dpi=DPI)
    try:
        renderer = fig.canvas.get_renderer()
        sizes = {}
        for n, d in P.nodes(data=True):
            t = fig.text(0, 0, _node_text(d), fontsize=FONT, ha="center", va="center",
                         linespacing=1.25, parse_math=False)
            box = t.get_window_extent(renderer)
            sizes[n] = (box.width / DPI + 0.22, box.height / DPI + 0.16)
            t.remove()
        return sizes
    finally:
        plt.close(fig)


def figure(name: str, P: nx.DiGraph, note: str = ""):
    """The picture as a matplotlib figure (the caller closes it): every artist
    unclipped and inside the figure."""
    plt, FancyArrowPatch, FancyBboxPatch = _import_pyplot()
    sizes = _measure(plt, P)
    L = Layout(P, sizes)
    margin = 0.55
    width = max(L.width, 6.0) + 2 * margin
    title = textwrap.wrap(f"{name}: forward (black) and the adjoint flow (red, dashed, labelled with the "
                          "local derivative)", max(20, int((width - margin) / 0.085)))
    notes = textwrap.wrap(note, max(20, int((width - margin) / 0.06)))
    header = 0.3 + 0.2 * len(title) + 0.14 * len(notes) + 0.25
    height = L.height + margin + header
    fig = plt.figure(figsize=(width, height), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(-margin, width - margin)
    ax.set_ylim(-L.height - margin, header)
    ax.set_aspect("equal")
    ax.axis("off")

    patches = {}
    for n, d in P.nodes(data=True):
        (x, y), (w, h) = L.pos[n], sizes[n]
        box = FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.08",
                             facecolor=COLORS[d["kind"]], edgecolor="#555555", linewidth=0.8,
                             zorder=3, clip_on=False)
        ax.add_patch(box)
        patches[n] = box
        ax.text(x, y, _node_text(d), fontsize=FONT, ha="center", va="center", linespacing=1.25,
                zorder=4, clip_on=False, parse_math=False)

    # arc3 bows an arc to the right of its direction of travel for rad > 0: along a row
    # read left to right the adjoint (running right to left) bows up and a long forward
    # edge bows down; a row read right to left is drawn the same way up
    for a, b in P.edges:
        p, q = L.pos[a], L.pos[b]
        span = L.span(a, b)
        length = math.hypot(q[0] - p[0], q[1] - p[1])
        sign = -1 if L.reversed_row(a) else 1
        rad = 0.0 if span == 0 else sign * _arc(p, q, min(0.35, 0.12 * length))
        ax.add_patch(FancyArrowPatch(p, q, patchA=patches[a], patchB=patches[b], arrowstyle="-|>",
                                     mutation_scale=10, color="#333333", linewidth=0.9,
                                     connectionstyle=f"arc3,rad={rad:.4f}", zorder=2, clip_on=False))
    for a, b, d in P.edges(data=True):
        if not d["adjoint"]:
            continue
        p, q = L.pos[b], L.pos[a]          # the adjoint runs backwards
        length = math.hypot(q[0] - p[0], q[1] - p[1])
        sign = -1 if L.reversed_row(a) else 1
        rad = sign * _arc(p, q, min(0.4, 0.2 * length))
        ax.add_patch(FancyArrowPatch(p, q, patchA=patches[b], patchB=patches[a], arrowstyle="-|>",
                                     mutation_scale=9, color="#cc2222", linewidth=0.9, linestyle=(0, (4, 2)),
                                     connectionstyle=f"arc3,rad={rad:.4f}", zorder=1, clip_on=False))
        if d["derivative"]:
            mx, my = _middle(p, q, rad)
            ax.text(mx, my, _clip(d["derivative"], MAX_DERIVATIVE), fontsize=EDGE_FONT, color="#cc2222",
                    ha="center", va="center", zorder=2.5, clip_on=False, parse_math=False,
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.85})

    ax.text(0, header - 0.2, "\n".join(title), fontsize=10, ha="left", va="top", linespacing=1.3,
            clip_on=False, parse_math=False)
    if notes:
        ax.text(0, header - 0.25 - 0.2 * len(title), "\n".join(notes), fontsize=7, color="#555555", ha="left",
                va="top", linespacing=1.3, clip_on=False, parse_math=False)
    return fig


def draw(name: str, P: nx.DiGraph, path: Path, note: str = "") -> None:
    plt = _import_pyplot()[0]
    fig = figure(name, P, note)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        with plt.rc_context({"svg.hashsalt": "bpcompile", "svg.fonttype": "path"}):   # byte-identical files
            fig.savefig(tmp, dpi=DPI, bbox_inches="tight", pad_inches=0.15,
                        metadata={"Date": None} if path.suffix == ".svg" else {"Software": None})
        tmp.replace(path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()


def write(compiled: Compiled, path) -> tuple:
    """Draw the graph of ``compiled`` into ``path``; returns (path, the picture's
    graph, its node_counts).  Raises MissingMatplotlib (an ImportError) for .svg or
    .png without matplotlib, before anything is written."""
    path = Path(path)
    if path.suffix not in FORMATS:
        raise ValueError(f"{path}: the picture is written as {', '.join(FORMATS)}")
    if path.suffix != ".dot":
        _import_pyplot()
    P = picture_graph(compiled)
    counts = node_counts(compiled, P)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".dot":
        write_atomic(path, to_dot(compiled.spec.name, P))
    else:
        draw(compiled.spec.name, P, path, note=summary(counts))
    return path, P, counts
