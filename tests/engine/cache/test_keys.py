"""Cache-key rules (reference §6 "our own must-haves" that need no execution).

Each test changes one thing and asserts exactly which vertices' keys change, comparing two
plans of the same build. Vertices are identified by their step name (``[stage k/n] …``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import pytest

from engine.frontend.convert import ResolvedImage
from engine.graph.image import ImageConfig
from engine.graph.ops import Platform
from engine.plan import Plan, PlanRequest, plan

BASE_CHAIN = "sha256:" + "ab" * 32

DEPFIRST = """\
FROM busybox AS builder
WORKDIR /app
COPY deps.txt lock.txt ./
RUN install-deps
ARG VERSION=1.0
COPY . .
RUN build --version=$VERSION
FROM busybox
COPY --from=builder /app/out /out
CMD ["/out"]
"""


def resolver(ref: str, platform: Platform) -> ResolvedImage | None:
    if ref == "docker.io/library/busybox:latest":
        return ResolvedImage(ref=ref, chain_id=BASE_CHAIN, config=ImageConfig(env=("PATH=/bin",)))
    return None


def make_context(root: Path, files: Mapping[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    return make_context(
        tmp_path / "ctx",
        {
            "deps.txt": "alpha 1.0\n",
            "lock.txt": "alpha sha256:00\n",
            "src/main.txt": "hello\n",
            "src/util.txt": "util\n",
        },
    )


def do_plan(ctx: Path, dockerfile: str, store: Path, **kw: object) -> Plan:
    request = PlanRequest(dockerfile=dockerfile, context=ctx, **kw)  # type: ignore[arg-type]
    return plan(request, store_root=store, resolve_image=resolver)


def keys(p: Plan) -> dict[str, str | None]:
    """Step keys by step position (``[builder 6/6]``): names show expanded build args."""
    out: dict[str, str | None] = {}
    for v in p.definition.vertices:
        if v.meta.step is not None:
            out[v.meta.name.split("]")[0] + "]"] = p.keys[v.digest].cache_key
    return out


def changed(a: Plan, b: Plan) -> list[str]:
    ka, kb = keys(a), keys(b)
    assert list(ka) == list(kb), "the steps themselves changed"
    return [name for name in ka if ka[name] != kb[name]]


def test_all_keys_known_with_resolved_base(ctx: Path, tmp_path: Path) -> None:
    p = do_plan(ctx, DEPFIRST, tmp_path / "store")
    for v in p.definition.vertices:
        k = p.keys[v.digest]
        if v.meta.step is not None:
            assert k.status == "known", v.meta.name
            assert k.cache_key is not None and k.cache_key.startswith("sha256:")
            assert not k.provisional


def test_keys_are_deterministic_across_stores(ctx: Path, tmp_path: Path) -> None:
    a = do_plan(ctx, DEPFIRST, tmp_path / "s1")
    b = do_plan(ctx, DEPFIRST, tmp_path / "s2")
    assert keys(a) == keys(b)
    assert changed(a, b) == []


def test_touch_only_changes_nothing(ctx: Path, tmp_path: Path) -> None:
    before = do_plan(ctx, DEPFIRST, tmp_path / "store")
    for f in ctx.rglob("*"):
        os.utime(f, (1_000_000, 1_000_000))
    after = do_plan(ctx, DEPFIRST, tmp_path / "store")
    assert changed(before, after) == []


def test_chmod_x_changes_that_copy_and_everything_after(ctx: Path, tmp_path: Path) -> None:
    before = do_plan(ctx, DEPFIRST, tmp_path / "store")
    (ctx / "deps.txt").chmod(0o755)
    after = do_plan(ctx, DEPFIRST, tmp_path / "store")
    assert changed(before, after) == [
        "[builder 3/6]",
        "[builder 4/6]",
        "[builder 5/6]",
        "[builder 6/6]",
        "[stage-1 2/2]",
    ]


def test_chown_of_context_file_changes_nothing(ctx: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test needs root (CI runs as root) to chown a file")
    before = do_plan(ctx, DEPFIRST, tmp_path / "store")
    os.chown(ctx / "deps.txt", 1234, 1234)
    after = do_plan(ctx, DEPFIRST, tmp_path / "store")
    assert changed(before, after) == []


def test_file_read_only_by_late_copy_keeps_dependency_steps(ctx: Path, tmp_path: Path) -> None:
    before = do_plan(ctx, DEPFIRST, tmp_path / "store")
    (ctx / "src" / "main.txt").write_text("hello, edited\n")
    after = do_plan(ctx, DEPFIRST, tmp_path / "store")
    assert changed(before, after) == [
        "[builder 5/6]",
        "[builder 6/6]",
        "[stage-1 2/2]",
    ]


def test_dockerignored_file_changes_nothing(ctx: Path, tmp_path: Path) -> None:
    (ctx / ".dockerignore").write_text("src/util.txt\n")
    before = do_plan(ctx, DEPFIRST, tmp_path / "store")
    (ctx / "src" / "util.txt").write_text("changed, but ignored\n")
    after = do_plan(ctx, DEPFIRST, tmp_path / "store")
    assert changed(before, after) == []


def test_dockerfile_comment_and_blank_line_change_nothing(ctx: Path, tmp_path: Path) -> None:
    before = do_plan(ctx, DEPFIRST, tmp_path / "store")
    edited = DEPFIRST.replace("RUN install-deps\n", "# install dependencies first\n\nRUN install-deps\n")
    after = do_plan(ctx, edited, tmp_path / "store")
    assert changed(before, after) == []


def test_unrelated_env_changes_all_later_runs(ctx: Path, tmp_path: Path) -> None:
    before = do_plan(ctx, DEPFIRST, tmp_path / "store")
    edited = DEPFIRST.replace("RUN install-deps\n", "RUN install-deps\nENV UNRELATED=1\n")
    after = do_plan(ctx, edited, tmp_path / "store")
    assert changed(before, after) == [
        "[builder 6/6]",
        "[stage-1 2/2]",
    ]


def test_label_changes_no_key_but_the_config(ctx: Path, tmp_path: Path) -> None:
    before = do_plan(ctx, DEPFIRST, tmp_path / "store")
    edited = DEPFIRST.replace('CMD ["/out"]\n', 'CMD ["/out"]\nLABEL org.example.version=2\n')
    edited = edited.replace("RUN install-deps\n", "RUN install-deps\nLABEL stage=builder\n")
    after = do_plan(ctx, edited, tmp_path / "store")
    assert changed(before, after) == []
    assert before.definition.config != after.definition.config
    assert after.definition.config.to_json()["config"]["Labels"] == {"org.example.version": "2"}


def test_build_arg_changes_from_first_run_after_its_arg(ctx: Path, tmp_path: Path) -> None:
    before = do_plan(ctx, DEPFIRST, tmp_path / "store", build_args={"VERSION": "1.2"})
    after = do_plan(ctx, DEPFIRST, tmp_path / "store", build_args={"VERSION": "1.3"})
    # The ARG is on line 5; the COPY after it is a file op and does not see ARGs.
    assert changed(before, after) == [
        "[builder 6/6]",
        "[stage-1 2/2]",
    ]


def test_unused_build_arg_changes_nothing(ctx: Path, tmp_path: Path) -> None:
    before = do_plan(ctx, DEPFIRST, tmp_path / "store", build_args={"OTHER": "1"})
    after = do_plan(ctx, DEPFIRST, tmp_path / "store", build_args={"OTHER": "2"})
    assert changed(before, after) == []


def test_proxy_build_arg_is_out_of_the_key_unless_declared(ctx: Path, tmp_path: Path) -> None:
    a = do_plan(ctx, DEPFIRST, tmp_path / "store", build_args={"HTTP_PROXY": "http://a:3128"})
    b = do_plan(ctx, DEPFIRST, tmp_path / "store", build_args={"HTTP_PROXY": "http://b:3128"})
    assert changed(a, b) == []
    declared = DEPFIRST.replace("ARG VERSION=1.0\n", "ARG VERSION=1.0\nARG HTTP_PROXY\n")
    c = do_plan(ctx, declared, tmp_path / "store", build_args={"HTTP_PROXY": "http://a:3128"})
    d = do_plan(ctx, declared, tmp_path / "store", build_args={"HTTP_PROXY": "http://b:3128"})
    assert "[builder 6/6]" in changed(c, d)


def test_xattr_user_changes_key_security_selinux_does_not(ctx: Path, tmp_path: Path) -> None:
    target = ctx / "deps.txt"
    before = do_plan(ctx, DEPFIRST, tmp_path / "store")
    os.setxattr(target, "security.selinux", b"system_u:object_r:foo_t:s0")
    mid = do_plan(ctx, DEPFIRST, tmp_path / "store")
    assert changed(before, mid) == []
    os.setxattr(target, "user.foo", b"bar")
    after = do_plan(ctx, DEPFIRST, tmp_path / "store")
    assert "[builder 3/6]" in changed(mid, after)


def test_wildcard_rename_misses(tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "ctx", {"file1": "same\n"})
    df = "FROM busybox\nCOPY file* /files/\nRUN ls /files\n"
    before = do_plan(ctx, df, tmp_path / "store")
    (ctx / "file1").rename(ctx / "file2")
    after = do_plan(ctx, df, tmp_path / "store")
    assert changed(before, after) == ["[2/3]", "[3/3]"]


def test_same_bytes_from_two_directories_share_the_content_key(tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "ctx", {"a/x.txt": "same\n", "b/x.txt": "same\n"})
    a = do_plan(ctx, "FROM busybox\nCOPY a/x.txt /d\n", tmp_path / "store")
    b = do_plan(ctx, "FROM busybox\nCOPY b/x.txt /d\n", tmp_path / "store")
    assert list(keys(a).values()) == list(keys(b).values())


def test_cache_mount_id_and_contents_stay_out_of_the_key(ctx: Path, tmp_path: Path) -> None:
    def df(mount: str) -> str:
        return f"FROM busybox\nRUN --mount={mount} make\n"

    a = do_plan(ctx, df("type=cache,target=/root/.cache,id=one"), tmp_path / "store")
    b = do_plan(ctx, df("type=cache,target=/root/.cache,id=two"), tmp_path / "store")
    assert changed(a, b) == []
    c = do_plan(ctx, df("type=cache,target=/root/.cache2,id=one"), tmp_path / "store")
    assert changed(a, c) == ["[2/2]"]


def test_copy_from_stage_content_key_is_pending_never_invented(ctx: Path, tmp_path: Path) -> None:
    p = do_plan(ctx, DEPFIRST, tmp_path / "store")
    (copy,) = [v for v in p.definition.vertices if v.meta.name.startswith("[stage-1 2/2]")]
    key = p.keys[copy.digest]
    assert key.status == "known"  # the definition key through the builder chain
    assert [(c.input, c.status, c.checksum) for c in key.content] == [(1, "pending", None)]
    # A context COPY's content candidate is known at plan time.
    (ctx_copy,) = [v for v in p.definition.vertices if v.meta.name.startswith("[builder 3/6]")]
    assert [c.status for c in p.keys[ctx_copy.digest].content] == ["known"]


def test_no_cache_marks_vertices_and_stops_key_propagation(ctx: Path, tmp_path: Path) -> None:
    p = do_plan(ctx, DEPFIRST, tmp_path / "store", no_cache_filter=("builder",))
    marked = {v.meta.name.split("]")[0] + "]" for v in p.definition.vertices if v.meta.ignore_cache}
    # BuildKit sets IgnoreCache on RUN and COPY/ADD of the filtered stages only.
    assert marked == {"[builder 3/6]", "[builder 4/6]", "[builder 5/6]", "[builder 6/6]"}
    assert not any(name.startswith("[stage-1") for name in marked)
    (copy,) = [v for v in p.definition.vertices if v.meta.name.startswith("[stage-1 2/2]")]
    # Its input from the no-cache stage does not propagate a key: only content can match.
    assert p.keys[copy.digest].status == "pending"
    full = do_plan(ctx, DEPFIRST, tmp_path / "store", no_cache=True)
    runs_and_copies = [
        v for v in full.definition.vertices if v.meta.instruction[:4].rstrip() in ("RUN", "COPY", "ADD")
    ]
    assert runs_and_copies and all(v.meta.ignore_cache for v in runs_and_copies)


def test_provisional_base_is_marked(ctx: Path, tmp_path: Path) -> None:
    p = do_plan(ctx, "FROM example.org/unknown:1\nRUN true\n", tmp_path / "store")
    for v in p.definition.vertices:
        assert p.keys[v.digest].provisional


def test_same_layers_different_tag_same_key(ctx: Path, tmp_path: Path) -> None:
    def same(ref: str, platform: Platform) -> ResolvedImage | None:
        return ResolvedImage(ref=ref, chain_id=BASE_CHAIN, config=ImageConfig(env=("PATH=/bin",)))

    a = plan(PlanRequest("FROM busybox:1\nRUN true\n", ctx), store_root=tmp_path / "s", resolve_image=same)
    b = plan(PlanRequest("FROM busybox:2\nRUN true\n", ctx), store_root=tmp_path / "s", resolve_image=same)
    ka, kb = keys(a), keys(b)
    assert list(ka.values()) == list(kb.values())


def test_add_url_key_known_only_with_checksum(ctx: Path, tmp_path: Path) -> None:
    url = "https://example.invalid/tool.tar.gz"
    pinned = "sha256:" + "0" * 64
    a = do_plan(ctx, f"FROM busybox\nADD --checksum={pinned} {url} /opt/\nRUN true\n", tmp_path / "s")
    b = do_plan(ctx, f"FROM busybox\nADD {url} /opt/\nRUN true\n", tmp_path / "s")
    assert all(k is not None for k in keys(a).values())
    kb = keys(b)
    assert kb["[1/3]"] is not None
    assert kb["[2/3]"] is None
    assert kb["[3/3]"] is None


def test_add_git_key_known_only_with_full_commit(ctx: Path, tmp_path: Path) -> None:
    sha = "1" * 40
    a = do_plan(ctx, f"FROM busybox\nADD https://example.invalid/r.git#{sha} /src\n", tmp_path / "s")
    b = do_plan(ctx, "FROM busybox\nADD https://example.invalid/r.git#main /src\n", tmp_path / "s")
    assert all(k is not None for k in keys(a).values())
    assert keys(b)["[2/2]"] is None


def test_every_known_key_preimage_is_stored(ctx: Path, tmp_path: Path) -> None:
    from engine.cache.preimages import load_preimage
    from engine.store.metadb import open_meta_db

    p = do_plan(ctx, DEPFIRST, tmp_path / "store")
    with open_meta_db(tmp_path / "store") as db:
        for v in p.definition.vertices:
            key = p.keys[v.digest]
            if key.cache_key is None:
                continue
            stored = load_preimage(db, key.cache_key)
            assert stored is not None, v.meta.name
            assert stored == json.loads(json.dumps(key.preimage))
            assert stored["op"]["type"] in (
                "buildkit.source.v0",
                "buildkit.exec.v0",
                "buildkit.file.v0",
                "buildkit.merge.v0",
            )
