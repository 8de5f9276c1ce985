"""bpcompile graph: one node count with compile, a picture that stays within a fixed
width at any depth with every node labelled and nothing clipped, and a one-line
message naming the install command when matplotlib is missing."""

import builtins
import re
import struct
import sys
from pathlib import Path

import pytest

import bpcompile
from bpcompile import cli
from bpcompile.tools import draw

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ["tanh_regression", "digits_mlp", "seed002_network"]
MAX_PIXELS = 2000          # the widest a picture gets (draw.MAX_WIDTH inches at draw.DPI, with margins)


def deep_spec(tmp_path, depth=30) -> Path:
    lines = ["name: deep", "inputs:", "  x: [4]", "  y: [2]", "layers:", "  - {input: x}"]
    lines += ["  - {dense: 4, activation: tanh}"] * (depth - 1) + ["  - {dense: 2}"]
    lines.append(f"loss: sum((z{depth} - y)**2)")
    path = tmp_path / "deep.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def png_size(path) -> tuple:
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def run(capsys, *argv) -> tuple:
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ---------------------------------------------------------------------------
# one node count


@pytest.mark.parametrize("name", EXAMPLES)
def test_graph_counts_the_nodes_compile_counts(tmp_path, capsys, name):
    spec = ROOT / "examples" / f"{name}.yaml"
    rc, out, _ = run(capsys, "compile", spec, "-o", tmp_path)
    assert rc == 0
    compiled_nodes = int(re.search(r": (\d+) graph nodes \(\d+ forward, \d+ added by reverse mode\),", out).group(1))
    rc, out, _ = run(capsys, "graph", spec, "-o", tmp_path / "g.dot")
    assert rc == 0
    m = re.search(r": (\d+) graph nodes \((\d+) forward, (\d+) added by reverse mode\), as compile counts; "
                  r"drawn: (\d+) forward nodes", out)
    assert m, out
    total, forward, reverse, drawn = map(int, m.groups())
    assert total == compiled_nodes == forward + reverse
    c = bpcompile.compile(spec)
    assert total == c.stats()["nodes"]
    assert drawn == draw.picture_graph(c).number_of_nodes() <= forward
    dot = (tmp_path / "g.dot").read_text()
    assert len(re.findall(r"^  n\d+ \[label", dot, flags=re.M)) == drawn


# ---------------------------------------------------------------------------
# every node labelled


@pytest.mark.parametrize("name", [*EXAMPLES, "mlp_classifier", "softmax_ce_output", "deep_thin_chain"])
def test_every_node_says_what_it_is(name):
    c = bpcompile.compile(ROOT / "examples" / f"{name}.yaml")
    P = draw.picture_graph(c)
    bare = set(draw.SYMBOLS.values()) | {"map", "take", "index"}
    for n, d in P.nodes(data=True):
        first = d["label"].split("\n")[0]
        assert first and first not in bare, (n, d["label"])   # a name or an expression, not a bare symbol


def test_the_class_label_pick_is_labelled_by_what_it_picks():
    c = bpcompile.compile(ROOT / "examples" / "digits_mlp.yaml")
    labels = [d["label"] for _, d in draw.picture_graph(c).nodes(data=True)]
    assert "z2[label]" in labels and "[label]" not in labels
    assert "W1 @ x" in labels


def test_the_output_is_drawn_even_when_the_loss_does_not_read_it():
    spec = {"name": "m", "inputs": {"x": [3], "label": {"classes": 3}}, "params": {"W": [3, 3]},
            "graph": {"z": "W @ x", "p": "softmax(z)"}, "loss": "softmax_cross_entropy(z, label)", "output": "p"}
    P = draw.picture_graph(bpcompile.compile(spec))
    assert any(d["label"].startswith("p\n") for _, d in P.nodes(data=True))


# ---------------------------------------------------------------------------
# the layout


def test_ranks_follow_depth_and_rows_wrap(tmp_path):
    c = bpcompile.compile(deep_spec(tmp_path))
    P = draw.picture_graph(c)
    sizes = {n: (0.8, 0.5) for n in P.nodes}
    L = draw.Layout(P, sizes)
    for a, b in P.edges:
        assert L.layer[a] < L.layer[b] or (P.in_degree(a) == 0 and L.layer[a] == L.layer[b]), (a, b)
    assert L.rows > 1 and L.width <= draw.MAX_WIDTH
    # neighbouring ranks are neighbouring columns (the edge into the next row is a step down)
    for a, b in P.edges:
        if P.in_degree(a) and L.layer[b] == L.layer[a] + 1:
            assert abs(L.column[a] - L.column[b]) <= 1
    boxes = sorted((x, y) for x, y in L.pos.values())
    assert len(set(boxes)) == len(boxes)                 # no two nodes in one place


@pytest.mark.parametrize("depth", [30])
def test_thirty_layers_stay_within_a_fixed_width(tmp_path, capsys, depth):
    pytest.importorskip("matplotlib")
    out = tmp_path / "deep.png"
    rc, _, err = run(capsys, "graph", deep_spec(tmp_path, depth), "-o", out)
    assert rc == 0, err
    width, height = png_size(out)
    assert width <= MAX_PIXELS and height <= 3 * MAX_PIXELS, (width, height)


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_pictures_are_bounded(tmp_path, capsys, name):
    pytest.importorskip("matplotlib")
    out = tmp_path / "g.png"
    rc, _, err = run(capsys, "graph", ROOT / "examples" / f"{name}.yaml", "-o", out)
    assert rc == 0, err
    width, height = png_size(out)
    assert width <= MAX_PIXELS and height <= MAX_PIXELS, (width, height)


@pytest.mark.parametrize("name", ["digits_mlp", "seed002_network"])
def test_nothing_is_clipped_and_every_node_is_written(name):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    c = bpcompile.compile(ROOT / "examples" / f"{name}.yaml")
    P = draw.picture_graph(c)
    fig = draw.figure(c.spec.name, P, "a note")
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        (ax,) = fig.axes
        frame = fig.bbox
        artists = [*ax.patches, *ax.texts]
        assert len(ax.patches) == P.number_of_nodes() + P.number_of_edges() + \
            sum(1 for _, _, d in P.edges(data=True) if d["adjoint"])
        for artist in artists:
            assert not artist.get_clip_on()
            box = artist.get_window_extent(renderer)
            assert frame.x0 - 1 <= box.x0 and box.x1 <= frame.x1 + 1, artist
            assert frame.y0 - 1 <= box.y0 and box.y1 <= frame.y1 + 1, artist
        texts = [t.get_text() for t in ax.texts]
        for _, d in P.nodes(data=True):
            assert draw._node_text(d) in texts
    finally:
        plt.close(fig)


def test_label_text_is_not_read_as_mathtext(tmp_path):
    pytest.importorskip("matplotlib")
    import networkx as nx
    P = nx.DiGraph()
    P.add_node(0, label="$\\frac{$", kind="input", shape="3")
    P.add_node(1, label="a$b$\n$$", kind="op", shape="scalar")
    P.add_edge(0, 1, adjoint=True, derivative="$\\sqrt{")
    out = tmp_path / "m.png"
    draw.draw("$x$", P, out)
    assert png_size(out)[0] > 0


def test_svg_is_byte_identical_between_runs(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    spec = ROOT / "examples" / "tanh_regression.yaml"
    for name in ("a.svg", "b.svg"):
        assert run(capsys, "graph", spec, "-o", tmp_path / name)[0] == 0
    assert (tmp_path / "a.svg").read_bytes() == (tmp_path / "b.svg").read_bytes()


# ---------------------------------------------------------------------------
# matplotlib is an extra of its own


def test_the_graph_extra_declares_matplotlib():
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(r.startswith("matplotlib") for r in extras["graph"])
    assert any(r.startswith("matplotlib") for r in extras["test"])


@pytest.fixture
def no_matplotlib(monkeypatch):
    for mod in list(sys.modules):
        if mod == "matplotlib" or mod.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, mod)
    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_missing_matplotlib_names_the_install_command(tmp_path, capsys, no_matplotlib, suffix):
    out = tmp_path / f"g{suffix}"
    rc, stdout, err = run(capsys, "graph", ROOT / "examples" / "tanh_regression.yaml", "-o", out)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert 'pip install "bpcompile[graph]"' in err
    assert "Traceback" not in err and stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_dot_needs_no_matplotlib(tmp_path, capsys, no_matplotlib):
    rc, out, err = run(capsys, "graph", ROOT / "examples" / "tanh_regression.yaml", "-o", tmp_path / "g.dot")
    assert rc == 0, err
    assert (tmp_path / "g.dot").read_text().startswith("digraph")
