"""The build graph as a picture: graphviz source, inline SVG, and fallbacks without ``dot``.

:class:`BuildGraph` holds one :class:`Node` per vertex of a build (its inputs, stage, step,
instruction, status and cache key) and draws it:

- :attr:`BuildGraph.source`: graphviz ``dot`` text, deterministic (node ids follow the
  vertices' order, never digests or addresses), with a ``cluster_`` subgraph per stage, one
  box per step labelled with its instruction and short cache key and coloured by status
  (:data:`STATUS_COLORS`), and edges from each vertex's inputs: solid along a stage's chain,
  dashed from a secondary input (``COPY --from``, ``RUN --mount=from=``), dotted from the
  build context (BuildKit's ``[internal] load build context``, drawn as a small node);
- :meth:`BuildGraph.svg`: the SVG ``dot`` makes of it, cached by the source's digest; None
  when ``dot`` is not on ``PATH`` or fails (never an exception);
- :meth:`BuildGraph.to_html`: the SVG inline, else a static HTML rendering of the same graph;
- :meth:`BuildGraph.to_text`: an indented list by stage, for ``text/plain``.

Displaying a ``graphviz.Digraph`` in Jupyter runs ``dot`` in the display formatter and turns a
missing binary into a traceback (and a failed nbval cell); this class checks for ``dot``
itself and always has something to show.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, Protocol

from engine.events import INTERNAL_PREFIX
from nbbuild._html import (
    STATUS_COLORS,
    badge,
    box,
    clean,
    colors,
    esc,
    filter_bundle,
    truncate,
)

if TYPE_CHECKING:
    import graphviz

    from engine.graph.vertex import Definition

__all__ = ["STATUS_COLORS", "BuildGraph", "Edge", "Node", "short_key"]

EdgeKind = Literal["chain", "from", "context"]

_LABEL_WIDTH = 48
_DOT_TIMEOUT = 30.0
_SVG_CACHE_SIZE = 64
_svg_cache: OrderedDict[str, str] = OrderedDict()
_svg_lock = threading.Lock()

_EDGE_STYLE: Mapping[EdgeKind, dict[str, str]] = {
    "chain": {"color": "#555555"},
    "from": {"style": "dashed", "color": "#6a1b9a"},
    "context": {"style": "dotted", "color": "#9e9e9e"},
}


def short_key(key: str | None) -> str:
    """The first 12 hex digits of a ``sha256:…`` key ("" for None), as docker shows ids."""
    if not key:
        return ""
    return key.split(":", 1)[-1][:12]


def _dot_text(text: str) -> str:
    # A plain (not HTML-like) dot string: entities escaped, and backslashes doubled so dot
    # does not read ``\n``, ``\l`` or ``\N`` in an instruction as its own escapes.
    return esc(text).replace("\\", "\\\\")


def _label_of(name: str) -> str:
    # "[builder 2/4] RUN make" -> "builder 2/4"; "[internal] load build context" -> "internal"
    if name.startswith("[") and "]" in name:
        return name[1 : name.index("]")]
    return name


class _NodeSource(Protocol):
    @property
    def digest(self) -> str: ...
    @property
    def inputs(self) -> tuple[str, ...]: ...
    @property
    def name(self) -> str: ...
    @property
    def stage(self) -> str: ...
    @property
    def step(self) -> int | None: ...
    @property
    def total(self) -> int | None: ...
    @property
    def instruction(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def key(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Node:
    """One vertex of the graph.

    Attributes:
        digest: the vertex's op digest.
        inputs: digests of its inputs, in the op's order (the first is the stage's chain).
        name: BuildKit's progress name (``[builder 2/4] RUN make``).
        stage: the stage as shown ("" for a single unnamed stage and for internal vertices).
        step: k in ``[stage k/n]``; None for vertices that are not Dockerfile steps.
        total: n in ``[stage k/n]``.
        instruction: the instruction as written (first line).
        status: one of :data:`engine.events.STATUSES`.
        key: its cache key, when known.
    """

    digest: str
    inputs: tuple[str, ...]
    name: str
    stage: str = ""
    step: int | None = None
    total: int | None = None
    instruction: str = ""
    status: str = "pending"
    key: str | None = None

    @property
    def internal(self) -> bool:
        """True for BuildKit's ``[internal] …`` vertices (the build context)."""
        return self.name.startswith(INTERNAL_PREFIX)

    @property
    def label(self) -> str:
        """The bracketed part of the name: ``builder 2/4``."""
        return _label_of(self.name)

    @property
    def short_key(self) -> str:
        """The first 12 hex digits of the key."""
        return short_key(self.key)

    @property
    def title(self) -> str:
        """What the node shows: the instruction, or for internal vertices what they load."""
        if self.internal:
            rest = self.name[len(INTERNAL_PREFIX) :].strip()
            return "context" if rest == "load build context" else rest
        return clean(self.instruction or self.name)


@dataclass(frozen=True, slots=True)
class Edge:
    """An input edge: ``src`` feeds ``dst``; ``kind`` is chain, from or context."""

    src: str
    dst: str
    kind: EdgeKind


@dataclass(frozen=True)
class BuildGraph:
    """The vertices of one build with their statuses, ready to draw.

    Build one with :meth:`from_definition` (a :class:`~engine.graph.vertex.Definition` and
    statuses) or :meth:`from_steps` (anything with the :class:`Node` fields, such as the
    result's steps or the live view's vertices).

    Attributes:
        nodes: the vertices in dependency order (inputs first).
    """

    nodes: tuple[Node, ...]

    @classmethod
    def from_definition(
        cls,
        definition: Definition,
        statuses: Mapping[str, str] | None = None,
        keys: Mapping[str, str | None] | None = None,
    ) -> BuildGraph:
        """The graph of ``definition``; statuses and keys by digest (default pending, none)."""
        statuses = statuses or {}
        keys = keys or {}
        return cls(
            tuple(
                Node(
                    digest=v.digest,
                    inputs=tuple(v.inputs),
                    name=v.meta.name,
                    stage=v.meta.stage,
                    step=v.meta.step,
                    total=v.meta.total,
                    instruction=v.meta.instruction,
                    status=statuses.get(v.digest, "pending"),
                    key=keys.get(v.digest),
                )
                for v in definition.vertices
            )
        )

    @classmethod
    def from_steps(cls, steps: Iterable[_NodeSource]) -> BuildGraph:
        """The graph of steps (or vertex events) that carry digests and inputs."""
        return cls(
            tuple(
                Node(
                    digest=s.digest,
                    inputs=tuple(s.inputs),
                    name=s.name,
                    stage=s.stage,
                    step=s.step,
                    total=s.total,
                    instruction=s.instruction,
                    status=s.status,
                    key=s.key,
                )
                for s in steps
            )
        )

    # -- structure -------------------------------------------------------------------------

    @cached_property
    def _ids(self) -> dict[str, str]:
        return {n.digest: f"n{i}" for i, n in enumerate(self.nodes)}

    @cached_property
    def _by_digest(self) -> dict[str, Node]:
        return {n.digest: n for n in self.nodes}

    @property
    def stages(self) -> tuple[str, ...]:
        """Named stages in the order they first appear ("" is not a stage)."""
        out: dict[str, None] = {}
        for n in self.nodes:
            if n.stage and not n.internal:
                out.setdefault(n.stage)
        return tuple(out)

    @property
    def edges(self) -> tuple[Edge, ...]:
        """Input edges between nodes of this graph, in node then input order."""
        out = []
        for n in self.nodes:
            for index, src in enumerate(n.inputs):
                source = self._by_digest.get(src)
                if source is None:
                    continue
                kind: EdgeKind = "context" if source.internal else "from" if index > 0 else "chain"
                out.append(Edge(src, n.digest, kind))
        return tuple(out)

    # -- graphviz --------------------------------------------------------------------------

    def _node_attrs(self, node: Node) -> dict[str, str]:
        if node.internal:
            return {
                "label": _dot_text(truncate(node.title, 24)),
                "shape": "folder",
                "fontsize": "8",
                "style": "filled",
                "fillcolor": "#f7f7f7",
                "color": "#9e9e9e",
                "height": "0.25",
                "tooltip": _dot_text(node.name),
            }
        fill, stroke = colors(node.status)
        step = f"{node.step}/{node.total} " if node.step is not None else ""
        title = esc(truncate(node.title, _LABEL_WIDTH))
        sub = f"{node.short_key} · {node.status}" if node.short_key else node.status
        label = f'<{esc(step)}{title}<br/><font point-size="8" color="#555555">{esc(sub)}</font>>'
        return {
            "label": label,
            "fillcolor": fill,
            "color": stroke,
            "tooltip": _dot_text(node.name),
        }

    def digraph(self) -> graphviz.Digraph:
        """This graph as a ``graphviz.Digraph`` (to restyle or render it yourself)."""
        import graphviz

        g = graphviz.Digraph(
            "build",
            graph_attr={"rankdir": "TB", "nodesep": "0.25", "ranksep": "0.35", "fontsize": "10"},
            node_attr={
                "shape": "box",
                "style": "rounded,filled",
                "fontname": "Helvetica",
                "fontsize": "10",
                "margin": "0.08,0.04",
            },
            edge_attr={"arrowsize": "0.6"},
        )
        ids = self._ids
        stages = self.stages
        for index, stage in enumerate(stages):
            with g.subgraph(name=f"cluster_{index}") as sub:
                sub.attr(
                    label=f"stage {esc(stage)}",
                    style="rounded,dashed",
                    color="#bbbbbb",
                    fontname="Helvetica",
                    fontsize="10",
                    fontcolor="#555555",
                )
                for n in self.nodes:
                    if n.stage == stage and not n.internal:
                        sub.node(ids[n.digest], **self._node_attrs(n))
        for n in self.nodes:
            if n.internal or not n.stage:
                g.node(ids[n.digest], **self._node_attrs(n))
        for e in self.edges:
            g.edge(ids[e.src], ids[e.dst], **_EDGE_STYLE[e.kind])
        return g

    @cached_property
    def source(self) -> str:
        """The graph in ``dot`` language: deterministic for the same nodes."""
        text: str = self.digraph().source
        return text

    @property
    def digest(self) -> str:
        """sha256 of :attr:`source` (the SVG cache key)."""
        return hashlib.sha256(self.source.encode()).hexdigest()

    def svg(self) -> str | None:
        """The graph as SVG (without XML prolog, comments or ids), or None without ``dot``.

        Runs ``dot`` once per distinct source (the result is cached); never raises.
        """
        dot = shutil.which("dot")
        if dot is None:
            return None
        try:
            key = self.digest
        except Exception:  # the graphviz package itself failed: nothing to draw
            return None
        with _svg_lock:
            cached = _svg_cache.get(key)
            if cached is not None:
                _svg_cache.move_to_end(key)
                return cached
        try:
            proc = subprocess.run(
                [dot, "-Tsvg"],
                input=self.source.encode(),
                capture_output=True,
                timeout=_DOT_TIMEOUT,
                check=False,
            )
        except Exception:  # OSError, TimeoutExpired: show the fallback instead
            return None
        if proc.returncode != 0:
            return None
        svg = _clean_svg(proc.stdout.decode("utf-8", "replace"))
        if svg is None:
            return None
        with _svg_lock:
            _svg_cache[key] = svg
            while len(_svg_cache) > _SVG_CACHE_SIZE:
                _svg_cache.popitem(last=False)
        return svg

    # -- other renderings ------------------------------------------------------------------

    def to_html(self) -> str:
        """Inline SVG when ``dot`` works, else a static HTML drawing of the stages."""
        svg = self.svg()
        if svg is not None:
            return f'<div class="nbb-graph" style="overflow-x:auto;max-width:100%">{svg}</div>'
        return self.fallback_html()

    def fallback_html(self) -> str:
        """The graph without graphviz: one column per stage, a box per step, inputs listed."""
        groups: dict[str, list[Node]] = {}
        for n in self.nodes:
            if not n.internal:
                groups.setdefault(n.stage, []).append(n)
        by_digest = self._by_digest
        columns = []
        for stage, nodes in groups.items():
            cards = []
            for n in nodes:
                fill, stroke = colors(n.status)
                feeds = []
                for e in self.edges:
                    if e.dst != n.digest or e.kind == "chain":
                        continue
                    src = by_digest[e.src]
                    what = "context" if e.kind == "context" else f"[{src.label}]"
                    feeds.append(f'<div style="color:#6a1b9a;font-size:11px">← {esc(what)}</div>')
                step = f"{n.step}/{n.total} " if n.step is not None else ""
                cards.append(
                    f'<div style="background:{fill};border:1px solid {stroke};border-radius:4px;'
                    f'padding:3px 6px;margin:0 0 4px 0" title="{esc(n.name)}">'
                    f"{''.join(feeds)}"
                    f'<div style="font-size:12px">{esc(step)}'
                    f"{esc(truncate(n.title, _LABEL_WIDTH))}</div>"
                    f'<div style="font-size:11px;color:#555">'
                    f"<code>{esc(n.short_key)}</code> {badge(n.status)}</div></div>"
                )
            head = f"stage {stage}" if stage else "steps"
            columns.append(
                '<div style="border:1px dashed #bbb;border-radius:6px;padding:4px 6px;'
                'min-width:14em">'
                f'<div style="font-size:11px;color:#555;margin-bottom:3px">{esc(head)}</div>'
                f"{''.join(cards)}</div>"
            )
        return (
            '<div class="nbb-graph nbb-graph-fallback" style="display:flex;flex-wrap:wrap;'
            f'gap:8px;align-items:flex-start">{"".join(columns)}</div>'
        )

    def to_text(self) -> str:
        """An indented list by stage: step, status, short key, and non-chain inputs."""
        if not self.nodes:
            return "(empty build graph)"
        by_digest = self._by_digest
        rows: list[tuple[str, list[tuple[str, str, str, str]]]] = []
        groups: dict[str, list[Node]] = {}
        for n in self.nodes:
            if not n.internal:
                groups.setdefault(n.stage, []).append(n)
        for stage, nodes in groups.items():
            items = []
            for n in nodes:
                feeds = [
                    "context" if e.kind == "context" else f"[{by_digest[e.src].label}]"
                    for e in self.edges
                    if e.dst == n.digest and e.kind != "chain"
                ]
                items.append(
                    (
                        truncate(f"[{n.label}] {n.title}", 60),
                        n.status,
                        n.short_key,
                        f"<- {', '.join(feeds)}" if feeds else "",
                    )
                )
            rows.append((stage, items))
        w0 = max(len(i[0]) for _, items in rows for i in items)
        w1 = max(len(i[1]) for _, items in rows for i in items)
        w2 = max(len(i[2]) for _, items in rows for i in items)
        lines = []
        for stage, items in rows:
            indent = "  " if stage else ""
            if stage:
                lines.append(f"stage {stage}")
            for a, b, c, d in items:
                lines.append(f"{indent}{a:<{w0}}  {b:<{w1}}  {c:<{w2}}  {d}".rstrip())
        return "\n".join(lines)

    def __repr__(self) -> str:
        steps = sum(1 for n in self.nodes if not n.internal)
        return f"BuildGraph({steps} steps, {len(self.stages)} stages)"

    def _repr_mimebundle_(
        self, include: Any = None, exclude: Any = None, **kwargs: Any
    ) -> dict[str, str]:
        """``text/plain`` (the list), ``text/html`` and, with ``dot``, ``image/svg+xml``."""
        return filter_bundle(
            {
                "text/plain": lambda: self.to_text(),
                "text/html": lambda: box(self.to_html(), css_class="nbb-graph-view"),
                "image/svg+xml": lambda: self.svg(),
            },
            include,
            exclude,
        )


_PROLOG = re.compile(r"^.*?(?=<svg\b)", re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_ID_ATTR = re.compile(r'\sid="[^"]*"')


def _clean_svg(text: str) -> str | None:
    """``dot``'s SVG made fit to inline: no prolog, no comments (they name the graphviz
    version), no ids (several graphs on one page must not clash)."""
    if "<svg" not in text:
        return None
    text = _PROLOG.sub("", text, count=1)
    text = _COMMENT.sub("", text)
    text = _ID_ATTR.sub("", text)
    return text.strip()
