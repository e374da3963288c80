"""Real-world Dockerfiles (Jupyter Docker Stacks, docker-library/python) parse and plan.

The data lives outside the project (``../shared/reference-data/real-dockerfiles``, see its
README). Base images cannot be resolved here, so every ``FROM <image>`` is a provisional source.

Not included: ``docker-library-python/Dockerfile-{linux,windows}.template``. They are jq
templates (``{{ if is_alpine then ( -}}``…) that docker-library renders into the per-version
Dockerfiles, which are all included; the templates are not Dockerfiles.
"""

from __future__ import annotations

import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.frontend import instructions as ins
from engine.frontend.parser import parse
from engine.graph.ops import ImageSource, LocalSource
from engine.plan import PlanRequest, plan

REPO = Path(__file__).resolve().parents[2]
REAL = REPO.parent / "shared" / "reference-data" / "real-dockerfiles"
STACKS = REAL / "jupyter-docker-stacks"
PYTHON = REAL / "docker-library-python"
RECIPES = STACKS / "docs" / "using" / "recipe_code"
# Recipes that COPY a requirements.txt the user writes next to the Dockerfile.
NEEDS_REQUIREMENTS = {"pip_install.dockerfile", "mamba_install.dockerfile"}


@dataclass(frozen=True)
class Case:
    dockerfile: Path
    context: Path | None  # None: an empty context
    requirements: bool = False  # write a requirements.txt into a copy of the context

    @property
    def id(self) -> str:
        return str(self.dockerfile.relative_to(REAL))


def _cases() -> list[Case]:
    if not REAL.is_dir():
        return []
    cases: list[Case] = []
    for path in sorted(STACKS.rglob("*")):
        if not path.is_file():
            continue
        if path.parent == RECIPES and path.suffix == ".dockerfile":
            cases.append(Case(path, None, requirements=path.name in NEEDS_REQUIREMENTS))
        elif path.name == "Dockerfile":
            if path.parent.name in ("binder", ".devcontainer"):
                cases.append(Case(path, STACKS))
            else:
                # images/<name>/ (and images/<name>/cuda*/, examples/*): the Dockerfile's folder.
                cases.append(Case(path, path.parent))
    for path in sorted(PYTHON.glob("*_Dockerfile")):
        cases.append(Case(path, None))
    return cases


CASES = _cases()


def test_reference_data_present() -> None:
    assert REAL.is_dir(), (
        f"reference Dockerfiles missing: {REAL} (expected ../shared/reference-data/"
        "real-dockerfiles next to the repository)"
    )
    ids = {c.id for c in CASES}
    # The sets the README describes, so a wrong glob cannot silently test nothing.
    assert sum(i.startswith("jupyter-docker-stacks/images/") for i in ids) == 14
    assert sum(i.startswith("jupyter-docker-stacks/docs/using/recipe_code/") for i in ids) == 13
    assert sum(i.startswith("docker-library-python/") for i in ids) == 42
    assert "jupyter-docker-stacks/binder/Dockerfile" in ids
    assert "jupyter-docker-stacks/.devcontainer/Dockerfile" in ids
    # The templates are jq templates, not Dockerfiles.
    template = (PYTHON / "Dockerfile-linux.template").read_text()
    assert "{{" in template
    assert not any(i.endswith(".template") for i in ids)


def _context(case: Case, tmp_path: Path) -> Path:
    if case.context is None:
        ctx = tmp_path / "context"
        ctx.mkdir()
    elif case.requirements:
        ctx = tmp_path / "context"
        shutil.copytree(case.context, ctx)
    else:
        ctx = case.context
    if case.requirements:
        (ctx / "requirements.txt").write_text("flake8\n")
    return ctx


def _reachable_stages(text: str, name: str) -> list[ins.Stage]:
    """Stages the last stage needs (FROM <stage>, COPY --from, RUN --mount from=)."""
    _, stages = parse_stages_of(text, name)
    by_name = {s.name.lower(): i for i, s in enumerate(stages) if s.name}
    deps: dict[int, set[int]] = defaultdict(set)
    for i, st in enumerate(stages):
        base = by_name.get(st.base_name.lower())
        if base is not None and base < i:
            deps[i].add(base)
        for cmd in st.commands:
            src = cmd.from_ if isinstance(cmd, ins.CopyCommand) else ""
            if src:
                if src.isdigit():
                    deps[i].add(int(src))
                elif src.lower() in by_name:
                    deps[i].add(by_name[src.lower()])
    seen: set[int] = set()
    stack = [len(stages) - 1]
    while stack:
        i = stack.pop()
        if i not in seen:
            seen.add(i)
            stack.extend(deps[i])
    return [stages[i] for i in sorted(seen)]


def parse_stages_of(
    text: str, name: str
) -> tuple[tuple[ins.ArgCommand, ...], tuple[ins.Stage, ...]]:
    return ins.parse_stages(parse(text, filename=name))


def _expected_steps(stage: ins.Stage) -> int:
    """Vertices with a step number: FROM image, each RUN/COPY/ADD and WORKDIR (not /)."""
    n = 0
    for cmd in stage.commands:
        is_copy_or_run = isinstance(cmd, ins.RunCommand | ins.CopyCommand | ins.AddCommand)
        is_mkdir = isinstance(cmd, ins.WorkdirCommand) and cmd.path.strip("\"'") != "/"
        n += is_copy_or_run or is_mkdir
    return n


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_real_dockerfile_plans(case: Case, tmp_path: Path) -> None:
    text = case.dockerfile.read_text()
    result = plan(
        PlanRequest(
            dockerfile=text,
            context=_context(case, tmp_path),
            dockerfile_name=case.dockerfile.name,
            dockerfile_path=case.dockerfile,
        ),
        store_root=tmp_path / "store",
    )
    definition = result.definition
    vertices = definition.vertices
    assert definition.target is not None
    assert vertices[-1].digest == definition.target
    # Every vertex is keyed.
    assert set(result.keys) == {v.digest for v in vertices}
    # Every vertex except the build-context source points at its Dockerfile line.
    lines = text.splitlines()
    for v in vertices:
        if isinstance(v.op, LocalSource):
            continue
        assert v.meta.line is not None, v.meta.name
        assert 1 <= v.meta.line <= len(lines)
    # Base images cannot be resolved here: provisional sources, named as BuildKit names them.
    images = [v for v in vertices if isinstance(v.op, ImageSource)]
    assert images, "a FROM image must be in the graph"
    for v in images:
        assert v.op.provisional
        assert v.meta.name.split("] ", 1)[-1] == f"FROM {v.op.ref}"
        assert lines[v.meta.line - 1].upper().startswith("FROM") if v.meta.line else False

    reachable = _reachable_stages(text, case.dockerfile.name)
    steps = [v for v in vertices if v.meta.step is not None]
    image_bases = sum(1 for st in reachable if st.base_name.lower() != "scratch")
    expected = sum(_expected_steps(st) for st in reachable)
    non_from = [v for v in steps if not isinstance(v.op, ImageSource)]
    assert len(non_from) == expected
    assert len(steps) >= expected + min(image_bases, 1)
    # Within each stage, steps are numbered 1..n, each once, n being the shown total.
    by_stage: dict[str, list[int]] = defaultdict(list)
    totals: dict[str, set[int | None]] = defaultdict(set)
    for v in steps:
        by_stage[v.meta.stage].append(v.meta.step or 0)
        totals[v.meta.stage].add(v.meta.total)
    for stage, numbers in by_stage.items():
        assert len(totals[stage]) == 1, stage
        (total,) = totals[stage]
        assert sorted(numbers) == list(range(1, len(numbers) + 1)), stage
        assert total == len(numbers), stage
        width = len(str(total))
        for v in steps:
            if v.meta.stage == stage:
                prefix = f"[{stage + ' ' if stage else ''}{v.meta.step:>{width}}/{total}] "
                assert v.meta.name.startswith(prefix), v.meta.name
    # Every RUN/COPY/ADD line of the reachable stages has its vertex.
    step_lines = Counter(v.meta.line for v in non_from)
    for st in reachable:
        for cmd in st.commands:
            if isinstance(cmd, ins.RunCommand | ins.CopyCommand | ins.AddCommand):
                assert step_lines[cmd.line] >= 1, cmd.source_code
    # The image config: PATH always set (not on Windows), CMD/ENTRYPOINT when written.
    config = definition.config
    if "windows" not in case.id:
        assert config.get_env("PATH") is not None
    last = reachable[-1]
    if any(isinstance(c, ins.CmdCommand) for c in last.commands):
        assert config.cmd
    if any(isinstance(c, ins.EntrypointCommand) for c in last.commands):
        assert config.entrypoint
