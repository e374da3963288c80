"""BuildGraph: dot source (clusters, nodes, edges, colours), SVG with and without ``dot``,
the HTML and text fallbacks. Definitions come from the real frontend (no build needed)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from engine.frontend.convert import convert
from engine.frontend.parser import parse
from engine.graph.vertex import Definition
from nbbuild import _graph
from nbbuild._graph import STATUS_COLORS, BuildGraph, Edge, Node, short_key

MULTI = """\
FROM busybox AS builder
WORKDIR /src
COPY a.txt .
RUN cat a.txt > out.txt
FROM busybox
COPY --from=builder /src/out.txt /out.txt
RUN cat /out.txt
"""

SINGLE = """\
FROM busybox
RUN echo hi
"""


def definition(text: str) -> Definition:
    return convert(parse(text))


def by_name(graph: BuildGraph, prefix: str) -> Node:
    return next(n for n in graph.nodes if n.name.startswith(prefix))


def node_line(source: str, node_id: str) -> str:
    return next(line for line in source.splitlines() if line.strip().startswith(f"{node_id} ["))


@pytest.fixture
def no_dot(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``dot`` is not on PATH (the graphviz binary is missing)."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


@pytest.fixture(autouse=True)
def fresh_svg_cache() -> None:
    _graph._svg_cache.clear()


# -- structure -------------------------------------------------------------------------------


def test_from_definition_has_a_node_per_vertex_with_statuses_and_keys() -> None:
    d = definition(MULTI)
    statuses = {v.digest: "cached" for v in d.vertices}
    keys = {v.digest: "sha256:" + "ab" * 32 for v in d.vertices}
    g = BuildGraph.from_definition(d, statuses, keys)
    assert [n.digest for n in g.nodes] == [v.digest for v in d.vertices]
    assert {n.status for n in g.nodes} == {"cached"}
    assert {n.short_key for n in g.nodes} == {"abababababab"}
    assert g.stages == ("builder", "stage-1")
    plain = BuildGraph.from_definition(d)
    assert {n.status for n in plain.nodes} == {"pending"}
    assert {n.key for n in plain.nodes} == {None}


def test_edges_follow_inputs_including_copy_from_across_stages() -> None:
    g = BuildGraph.from_definition(definition(MULTI))
    run = by_name(g, "[builder 4/4]")
    copy_from = by_name(g, "[stage-1 2/3]")
    copy_ctx = by_name(g, "[builder 3/4]")
    context = by_name(g, "[internal] load build context")
    workdir = by_name(g, "[builder 2/4]")
    assert Edge(run.digest, copy_from.digest, "from") in g.edges
    assert Edge(context.digest, copy_ctx.digest, "context") in g.edges
    assert Edge(workdir.digest, copy_ctx.digest, "chain") in g.edges
    # every input of every vertex is an edge
    assert len(g.edges) == sum(len(n.inputs) for n in g.nodes)

    ids = {n.digest: f"n{i}" for i, n in enumerate(g.nodes)}
    src = g.source
    assert re.search(rf"{ids[run.digest]} -> {ids[copy_from.digest]} \[.*style=dashed", src)
    assert re.search(rf"{ids[context.digest]} -> {ids[copy_ctx.digest]} \[.*style=dotted", src)
    chain = re.search(rf"{ids[workdir.digest]} -> {ids[copy_ctx.digest]} \[(.*)\]", src)
    assert chain is not None and "style" not in chain.group(1)


def test_source_has_a_cluster_per_stage_with_its_steps() -> None:
    g = BuildGraph.from_definition(definition(MULTI))
    src = g.source
    clusters = re.findall(r"subgraph (cluster_\d+) \{", src)
    assert clusters == ["cluster_0", "cluster_1"]
    assert 'label="stage builder"' in src
    assert 'label="stage stage-1"' in src
    # the builder's steps are inside the first cluster, stage-1's inside the second
    first = src[src.index("subgraph cluster_0") : src.index("subgraph cluster_1")]
    second = src[src.index("subgraph cluster_1") :].split("}", 1)[0]
    assert "WORKDIR /src" in first and "RUN cat a.txt" in first
    assert "COPY --from=builder" in second and "RUN cat /out.txt" in second
    # the context is a small node outside the clusters
    ctx = node_line(src, f"n{[n.internal for n in g.nodes].index(True)}")
    assert "label=context" in ctx and "shape=folder" in ctx
    assert "cluster" not in src[src.index(ctx) - 3 : src.index(ctx)]


def test_single_unnamed_stage_has_no_cluster() -> None:
    g = BuildGraph.from_definition(definition(SINGLE))
    assert g.stages == ()
    assert "subgraph" not in g.source
    assert len(g.nodes) == 2


def test_nodes_are_coloured_by_status() -> None:
    nodes = tuple(
        Node(
            digest=f"sha256:{i}",
            inputs=(f"sha256:{i - 1}",) if i else (),
            name=f"[{i + 1}/7] RUN step {status}",
            step=i + 1,
            total=7,
            instruction=f"RUN step {status}",
            status=status,
            key=f"sha256:{i:064x}",
        )
        for i, status in enumerate(
            ("cached", "executed", "failed", "running", "pending", "skipped", "canceled")
        )
    )
    src = BuildGraph(nodes).source
    for i, n in enumerate(nodes):
        fill, stroke = STATUS_COLORS[n.status]
        line = node_line(src, f"n{i}")
        assert f'fillcolor="{fill}"' in line, n.status
        assert f'color="{stroke}"' in line, n.status
        assert f"{n.short_key} · {n.status}" in line
    assert STATUS_COLORS["cached"][1] == "#2e7d32"  # green
    assert STATUS_COLORS["executed"][1] == "#1f5fbf"  # blue
    assert STATUS_COLORS["failed"][1] == "#c62828"  # red
    assert STATUS_COLORS["running"][1] == "#b7791f"  # amber
    assert STATUS_COLORS["pending"] == STATUS_COLORS["skipped"]  # grey
    assert STATUS_COLORS["canceled"][1] == "#424242"  # dark grey


def test_labels_are_escaped_and_truncated_and_dot_accepts_them() -> None:
    nasty = 'RUN echo "<b>&amp;</b>" \\n \\l \\N ' + "x" * 100
    g = BuildGraph(
        (
            Node(
                "sha256:a",
                (),
                "[1/1] " + nasty,
                step=1,
                total=1,
                instruction=nasty,
                status="executed",
            ),
        )
    )
    line = node_line(g.source, "n0")
    label = line.split("label=<", 1)[1].split("<br/>", 1)[0]
    assert "<b>" not in label
    assert "&lt;b&gt;&amp;amp;&lt;/b&gt;" in label
    assert label.endswith("…") and "x" * 60 not in label
    # the tooltip (a plain dot string) keeps backslashes literal
    assert "\\\\n \\\\l \\\\N" in line
    svg = g.svg()
    assert svg is not None and "<svg" in svg


def test_source_is_deterministic_and_names_no_digests() -> None:
    a = BuildGraph.from_definition(definition(MULTI)).source
    b = BuildGraph.from_definition(definition(MULTI)).source
    assert a == b
    assert "sha256:" not in a
    assert "0x" not in a


def test_short_key() -> None:
    assert short_key("sha256:" + "0123456789abcdef" * 4) == "0123456789ab"
    assert short_key(None) == ""
    assert short_key("") == ""


# -- svg, html, text -------------------------------------------------------------------------


def test_svg_with_dot_is_inline_ready_and_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    g = BuildGraph.from_definition(definition(MULTI), {}, {})
    svg = g.svg()
    assert svg is not None
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "<?xml" not in svg and "<!--" not in svg and "<!DOCTYPE" not in svg
    assert ' id="' not in svg
    assert "WORKDIR /src" in svg

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("dot ran again for the same source")

    monkeypatch.setattr(subprocess, "run", fail)
    again = BuildGraph.from_definition(definition(MULTI), {}, {})
    assert again.svg() == svg


def test_without_dot_svg_is_none_and_html_falls_back(no_dot: None) -> None:
    g = BuildGraph.from_definition(definition(MULTI))
    assert g.svg() is None
    html = g.to_html()
    assert "<svg" not in html
    assert "nbb-graph-fallback" in html
    assert "stage builder" in html and "stage stage-1" in html
    assert "← [builder 4/4]" in html and "← context" in html
    assert "<script" not in html
    bundle = g._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html"}


def test_broken_dot_falls_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    dot = fake / "dot"
    dot.write_text("#!/bin/sh\necho 'Error: syntax error' >&2\nexit 1\n")
    dot.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake))
    g = BuildGraph.from_definition(definition(SINGLE))
    assert g.svg() is None
    assert "nbb-graph-fallback" in g.to_html()


def test_svg_survives_a_dot_that_cannot_start(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("exec format error")

    monkeypatch.setattr(subprocess, "run", boom)
    assert BuildGraph.from_definition(definition(SINGLE)).svg() is None


def test_mimebundle_with_dot_has_svg_and_respects_include_exclude() -> None:
    g = BuildGraph.from_definition(definition(MULTI))
    bundle = g._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html", "image/svg+xml"}
    assert "<svg" in bundle["text/html"]
    assert g._repr_mimebundle_(include={"text/plain"}) == {"text/plain": g.to_text()}
    assert "image/svg+xml" not in g._repr_mimebundle_(exclude={"image/svg+xml"})


def test_to_text_lists_stages_steps_and_cross_stage_inputs() -> None:
    d = definition(MULTI)
    statuses = {v.digest: "executed" for v in d.vertices}
    text = BuildGraph.from_definition(d, statuses).to_text()
    lines = text.splitlines()
    assert lines[0] == "stage builder"
    assert lines[1].startswith("  [builder 1/4] FROM busybox AS builder")
    assert "stage stage-1" in lines
    copy_line = next(line for line in lines if "COPY --from" in line)
    assert copy_line.endswith("<- [builder 4/4]")
    assert next(line for line in lines if "COPY a.txt" in line).endswith("<- context")
    assert "executed" in copy_line
    assert BuildGraph(()).to_text() == "(empty build graph)"


def test_repr_is_deterministic() -> None:
    g = BuildGraph.from_definition(definition(MULTI))
    assert repr(g) == "BuildGraph(6 steps, 2 stages)"


def test_digraph_is_a_graphviz_digraph() -> None:
    import graphviz

    g = BuildGraph.from_definition(definition(MULTI)).digraph()
    assert isinstance(g, graphviz.Digraph)
    assert g.source == BuildGraph.from_definition(definition(MULTI)).source
