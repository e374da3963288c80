"""Named build contexts (``--build-context NAME=DIR|docker-image://REF|oci-layout://DIR``)
through real builds: what they override, caching, .dockerignore, OCI layout selection and the
errors (fixtures in tests/buildkit_base.py). BuildKit's own tests: ``testNamedImageContext*``,
``testNamedLocalContext``, ``testNamedOCILayoutContext``, ``testNamedFilteredContext``."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import tarfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from engine.errors import ContextError, DockerfileError, NbbuildError
from engine.frontend.convert import BuildOptions, convert, host_platform
from engine.frontend.namedcontext import context_key, lookup, parse_oci_layout, prepare_contexts
from engine.frontend.parser import parse
from engine.graph.ops import ExecOp, FileOp, ImageSource, LocalSource, Platform


def _load_base() -> ModuleType:
    name = "nbbuild_tests_buildkit_base"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).resolve().parents[1] / "buildkit_base.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


base = _load_base()
busybox_archive = base.busybox_archive
bk = base.bk

OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def _status(result: Any, prefix: str) -> str:
    return str(result.step(prefix).status)


def _ran(result: Any) -> list[str]:
    """Names of the steps that executed (not cached); loading a local context (done on every
    build, as BuildKit's transfer is) is not a step."""
    return [
        s.name
        for s in result.steps
        if s.status == "executed"
        and not s.name.endswith("load from client")
        and not s.name.startswith("[internal]")
    ]


def _out(bk: Any, name: str) -> Path:
    return Path(bk.tmp) / name


def _files(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            path = Path(dirpath) / f
            out[str(path.relative_to(root))] = path.read_text()
    return out


# ----------------------------------------------------------------------------- local directories


def test_local_context_overrides_a_stage_of_that_name(bk: Any) -> None:
    # testNamedLocalContext: the stage "base" never runs (its RUN would fail); COPY --from=base
    # reads the directory, filtered by the directory's own .dockerignore.
    other = _out(bk, "other")
    bk.write({"out": "dummy-result", "out2": "ignored", ".dockerignore": "out2\n"}, ctx=other)
    dest = _out(bk, "dest")
    result = bk.build(
        "FROM busybox AS base\nRUN false\nFROM scratch\nCOPY --from=base /o* /\n",
        build_contexts={"base": str(other)},
        outputs=[f"type=local,dest={dest}"],
    )
    assert _files(dest) == {"out": "dummy-result"}
    names = [s.name for s in result.steps]
    assert "[context base] load from client" in names
    assert not any("RUN false" in n for n in names)

    # a stage built FROM the replaced stage starts from the directory
    result = bk.build(
        "FROM busybox AS base\nRUN false\nFROM base\nCOPY --from=busybox /bin /bin\n"
        "RUN cat /out && test ! -e /out2\n",
        build_contexts={"base": str(other)},
    )
    assert result.step("[stage-1 2/2]").logs == b"dummy-result"


def test_local_context_ignores_the_main_dockerignore_and_vice_versa(bk: Any) -> None:
    other = _out(bk, "other")
    bk.write({"a": "named a", "b": "named b"}, ctx=other)
    bk.write({"a": "main a", "b": "main b", ".dockerignore": "a\n"})
    dest = _out(bk, "dest")
    bk.build(
        "FROM scratch\nCOPY --from=lib /a /b /lib/\nCOPY b /main/\n",
        build_contexts={"lib": str(other)},
        outputs=[f"type=local,dest={dest}"],
    )
    assert _files(dest) == {"lib/a": "named a", "lib/b": "named b", "main/b": "main b"}


def test_local_context_change_reruns_only_what_reads_it(bk: Any) -> None:
    other = _out(bk, "other")
    bk.write({"data.txt": "one\n", "notes.md": "x\n", ".dockerignore": "*.md\n"}, ctx=other)
    bk.write({"app.txt": "app\n"})
    dockerfile = (
        "FROM busybox AS app\n"
        "COPY app.txt /app.txt\n"
        "RUN cat /app.txt > /app.out\n"
        "FROM busybox\n"
        "COPY --from=data /data.txt /data.txt\n"
        "COPY --from=app /app.out /app.out\n"
        "RUN cat /app.out /data.txt\n"
    )
    contexts = {"data": str(other)}
    first = bk.build(dockerfile, build_contexts=contexts)
    assert first.step("[stage-1 4/4]").logs == b"app\none\n"

    # an ignored file of the named context changes nothing
    bk.write({"notes.md": "y\n"}, ctx=other)
    assert _ran(bk.build(dockerfile, build_contexts=contexts)) == []

    # a file it reads: only the COPY --from=data and what follows run again
    bk.write({"data.txt": "two\n"}, ctx=other)
    third = bk.build(dockerfile, build_contexts=contexts)
    assert _ran(third) == [
        "[stage-1 2/4] COPY --from=data /data.txt /data.txt",
        "[stage-1 3/4] COPY --from=app /app.out /app.out",
        "[stage-1 4/4] RUN cat /app.out /data.txt",
    ]
    assert _status(third, "[app 3/3]") == "cached"
    assert third.step("[stage-1 4/4]").logs == b"app\ntwo\n"

    # a main-context file: the named context's COPY stays cached
    bk.write({"app.txt": "app2\n"})
    fourth = bk.build(dockerfile, build_contexts=contexts)
    assert _status(fourth, "[stage-1 2/4]") == "cached"
    assert _ran(fourth) == [
        "[app 2/3] COPY app.txt /app.txt",
        "[app 3/3] RUN cat /app.txt > /app.out",
        "[stage-1 3/4] COPY --from=app /app.out /app.out",
        "[stage-1 4/4] RUN cat /app.out /data.txt",
    ]

    # the same content in another directory is the same cache
    moved = _out(bk, "moved")
    bk.write({"data.txt": "two\n"}, ctx=moved)
    fifth = bk.build(dockerfile, build_contexts={"data": str(moved)})
    assert _ran(fifth) == []


def test_from_a_local_context_uses_the_directory_as_root(bk: Any) -> None:
    # testNamedFilteredContext's image_source: FROM <local context>, then COPY and RUN on it
    other = _out(bk, "other")
    bk.write({"foo": "foo-content", "skip": "x", ".dockerignore": "skip\n"}, ctx=other)
    dockerfile = (
        "FROM foo AS image_source\n"
        "COPY --from=busybox / /\n"
        "RUN cat /foo > /bar && test ! -e /skip\n"
        "FROM image_source\n"
        "RUN cat /bar\n"
    )
    result = bk.build(dockerfile, build_contexts={"foo": str(other)})
    assert result.step("[stage-1 1/1]").logs == b"foo-content"
    # the empty image config of a directory (BuildKit's emptyImage): busybox's PATH is not
    # inherited, the default one is set
    assert (
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        in (result.config["config"]["Env"])
    )

    bk.write({"skip": "changed"}, ctx=other)
    assert _ran(bk.build(dockerfile, build_contexts={"foo": str(other)})) == []
    bk.write({"foo": "new"}, ctx=other)
    again = bk.build(dockerfile, build_contexts={"foo": str(other)})
    assert "[context foo] copy into a layer" in _ran(again)
    assert again.step("[stage-1 1/1]").logs == b"new"


def test_target_replaced_by_a_local_context_exports_the_directory(bk: Any) -> None:
    other = _out(bk, "other")
    bk.write({"x/y": "why", "ign": "no", ".dockerignore": "ign\n"}, ctx=other)
    dest = _out(bk, "dest")
    bk.build(
        "FROM busybox AS base\nRUN false\n",
        build_contexts={"base": str(other)},
        outputs=[f"type=local,dest={dest}"],
    )
    assert _files(dest) == {"x/y": "why", ".dockerignore": "ign\n"}


# ----------------------------------------------------------------------------- docker-image://


def test_image_context_keyed_by_an_image_name(bk: Any) -> None:
    # testNamedImageContext: "context:busybox" = docker-image://alpine makes FROM busybox use it;
    # here FROM alpine (in any spelling) uses the local busybox.
    bk.build("FROM busybox\nRUN echo replaced > /marker\n", tags=("other:1",))
    for i, spelling in enumerate(("alpine", "alpine:latest", "docker.io/library/alpine")):
        result = bk.build(
            f"FROM {spelling}\nRUN cat /marker\n",
            build_contexts={"alpine": "docker-image://other:1"},
        )
        run = result.step("[1/2] RUN cat /marker")  # FROM counts, but has no number
        if i == 0:
            assert run.logs == b"replaced\n"
        else:
            assert run.status == "cached"  # the same image, so the same step
        assert "[context alpine] other:1" in [s.name for s in result.steps]
    # COPY --from=<image name> too
    dest = _out(bk, "dest")
    bk.build(
        "FROM scratch\nCOPY --from=alpine /marker /m\n",
        build_contexts={"alpine": "docker-image://other:1"},
        outputs=[f"type=local,dest={dest}"],
    )
    assert _files(dest) == {"m": "replaced\n"}
    # a tagged name is its own key
    with pytest.raises(ContextError) as err:
        bk.build("FROM alpine:3.20\n", build_contexts={"alpine:3.20": "docker-image://missing:1"})
    assert "missing:1" in str(err.value) and "not in the local image store" in str(err.value)


def test_image_context_overrides_a_stage_and_brings_its_config(bk: Any) -> None:
    bk.build("FROM busybox\nENV PATH=/foobar:$PATH\nENV FOOBAR=foobar\n", tags=("envs:1",))
    dest = _out(bk, "dest")
    bk.build(
        "FROM busybox AS base\n"
        "RUN env | grep PATH > /env_path\n"
        "RUN env | grep FOOBAR > /env_foobar\n"
        "FROM scratch\n"
        "COPY --from=base /env_path /env_foobar /\n",
        build_contexts={"busybox": "docker-image://envs:1"},
        outputs=[f"type=local,dest={dest}"],
    )
    files = _files(dest)
    assert files["env_foobar"] == "FOOBAR=foobar\n"
    assert "/foobar:" in files["env_path"]


def test_image_context_onbuild_triggers_fire(bk: Any) -> None:
    bk.build("FROM busybox\nONBUILD RUN echo fired > /trigger\n", tags=("trig:1",))
    dest = _out(bk, "dest")
    bk.build(
        "FROM base AS b\nRUN cat /trigger\nFROM scratch\nCOPY --from=b /trigger /\n",
        build_contexts={"base": "docker-image://trig:1"},
        outputs=[f"type=local,dest={dest}"],
    )
    assert _files(dest) == {"trigger": "fired\n"}


def test_replacing_a_stage_based_on_another_stage(bk: Any) -> None:
    # moby/buildkit#5578: the replaced stage's own FROM (another stage) does not matter
    bk.build("FROM busybox\nRUN touch /from-image\n", tags=("img:1",))
    result = bk.build(
        "FROM busybox AS parent\n"
        "FROM parent AS base\n"
        "RUN echo base > /out\n"
        "FROM base\n"
        "RUN [ -f /from-image ]\n"
        "RUN [ ! -f /out ]\n",
        build_contexts={"base": "docker-image://img:1"},
    )
    assert not any("echo base" in s.name for s in result.steps)


def test_image_context_scratch_is_empty(bk: Any) -> None:
    # testNamedImageContextScratch
    dest = _out(bk, "dest")
    bk.build(
        "FROM busybox AS build\nCOPY <<EOF /out\nhello world!\nEOF\n",
        build_contexts={"busybox": "docker-image://scratch"},
        outputs=[f"type=local,dest={dest}"],
    )
    assert _files(dest) == {"out": "hello world!\n"}


def test_platform_specific_key_wins(bk: Any) -> None:
    bk.build("FROM busybox\nRUN echo generic > /which\n", tags=("generic:1",))
    bk.build("FROM busybox\nRUN echo specific > /which\n", tags=("specific:1",))
    plat = host_platform()
    variant = plat.variant or ("v8" if plat.architecture == "arm64" else "")
    key = f"base::{plat.os}/{plat.architecture}" + (f"/{variant}" if variant else "")
    result = bk.build(
        "FROM busybox AS base\nFROM base\nRUN cat /which\n",
        build_contexts={"base": "docker-image://generic:1", key: "docker-image://specific:1"},
    )
    assert result.step("[stage-1 1/1]").logs == b"specific\n"


def test_image_context_cache_follows_the_image_layers(bk: Any) -> None:
    bk.build("FROM busybox\nRUN echo v1 > /v\n", tags=("dep:1",))
    dockerfile = "FROM busybox\nCOPY --from=dep /v /v\nRUN cat /v\n"
    contexts = {"dep": "docker-image://dep:1"}
    assert len(_ran(bk.build(dockerfile, build_contexts=contexts))) == 2
    assert _ran(bk.build(dockerfile, build_contexts=contexts)) == []
    # the same layers under another name: still cached (the key is the ChainID)
    bk.build("FROM busybox\nRUN echo v1 > /v\n", tags=("dep:copy",))
    assert _ran(bk.build(dockerfile, build_contexts={"dep": "docker-image://dep:copy"})) == []
    bk.build("FROM busybox\nRUN echo v2 > /v\n", tags=("dep:1",))
    result = bk.build(dockerfile, build_contexts=contexts)
    # (a --from=<image> source is a second state: the lone stage keeps its name, as BuildKit's)
    assert result.step("[stage-0 3/3]").logs == b"v2\n"


# ----------------------------------------------------------------------------- oci-layout://


def _layout_from_build(bk: Any, dockerfile: str, name: str, *, tag: str = "img:v1") -> Path:
    """Build ``dockerfile`` into an OCI layout directory (an oci output, unpacked)."""
    tar = _out(bk, f"{name}.tar")
    bk.build(dockerfile, tags=(tag,), outputs=[f"type=oci,dest={tar}"])
    layout = _out(bk, name)
    layout.mkdir()
    with tarfile.open(tar) as t:
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4+ (Debian 12's 3.11.2 has none)
            t.extractall(layout, filter="data")
        else:
            t.extractall(layout)  # our own build's output
    return layout


def _index(layout: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((layout / "index.json").read_text())
    return doc


def _put_blob(layout: Path, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
    return digest


OCI_IMAGE = (
    "FROM busybox\nWORKDIR /test\nRUN echo -n first > out\nRUN echo -n second > out2\nENV foo=bar\n"
)


def test_oci_layout_context(bk: Any) -> None:
    # testNamedOCILayoutContext: "base" and "foo" both come from the layout
    layout = _layout_from_build(bk, OCI_IMAGE, "layout")
    (manifest,) = _index(layout)["manifests"]
    dockerfile = (
        "FROM busybox AS base\n"
        "RUN cat /etc/alpine-release > out\n"
        "FROM foo AS imported\n"
        "RUN echo -n $foo > outfoo\n"
        "FROM scratch\n"
        "COPY --from=base /test/o* /\n"
        "COPY --from=imported /test/outfoo /\n"
    )
    for value in (
        f"oci-layout://{layout}",
        f"oci-layout://{layout}:v1",
        f"oci-layout://{layout}@{manifest['digest']}",
    ):
        dest = _out(bk, "dest")
        result = bk.build(
            dockerfile,
            build_contexts={"base": value, "foo": value},
            outputs=[f"type=local,dest={dest}"],
        )
        assert _files(dest) == {"out": "first", "out2": "second", "outfoo": "bar"}
        assert "[context base] OCI load from client" in [s.name for s in result.steps]
        for f in dest.iterdir():
            f.unlink()
        dest.rmdir()


def test_oci_layout_relative_path_and_cache(bk: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = _layout_from_build(bk, OCI_IMAGE, "layout")
    monkeypatch.chdir(layout.parent)
    dockerfile = "FROM base\nRUN cat /test/out\n"
    contexts = {"base": "oci-layout://layout:v1"}
    first = bk.build(dockerfile, build_contexts=contexts)
    assert first.step("[1/2] RUN").logs == b"first"
    assert _ran(bk.build(dockerfile, build_contexts=contexts)) == []
    # the layout holds the image the tag was built as: same layers, same cache
    plain = bk.build("FROM img:v1\nRUN cat /test/out\n")
    assert _ran(plain) == []


def test_oci_layout_selects_by_tag_and_platform(bk: Any) -> None:
    one = _layout_from_build(bk, "FROM busybox\nRUN echo one > /which\n", "one", tag="x:one")
    two = _layout_from_build(bk, "FROM busybox\nRUN echo two > /which\n", "two", tag="x:two")
    # merge the second layout's blobs and index entry into the first
    for blob in (two / "blobs" / "sha256").iterdir():
        (one / "blobs" / "sha256" / blob.name).write_bytes(blob.read_bytes())
    index = _index(one)
    index["manifests"] += _index(two)["manifests"]
    (one / "index.json").write_text(json.dumps(index))
    dockerfile = "FROM scratch\nCOPY --from=ctx /which /\n"

    def which(value: str) -> str:
        dest = _out(bk, "dest")
        bk.build(dockerfile, build_contexts={"ctx": value}, outputs=[f"type=local,dest={dest}"])
        text = (dest / "which").read_text()
        (dest / "which").unlink()
        return text

    assert which(f"oci-layout://{one}:one") == "one\n"
    assert which(f"oci-layout://{one}:two") == "two\n"
    # two images and none tagged latest: the tag must be given
    with pytest.raises(ContextError) as err:
        bk.build(dockerfile, build_contexts={"ctx": f"oci-layout://{one}"})
    assert 'none is tagged "latest"' in str(err.value) and "one, two" in str(err.value)
    with pytest.raises(ContextError) as err:
        bk.build(dockerfile, build_contexts={"ctx": f"oci-layout://{one}:three"})
    assert 'no image tagged "three"' in str(err.value) and "(tags: one, two)" in str(err.value)
    assert "build context 'ctx'" in str(err.value)

    # a multi-platform index: the host's manifest is chosen
    plat = host_platform()
    other = Platform("linux", "s390x")
    one_desc = next(
        m
        for m in _index(one)["manifests"]
        if m["annotations"]["org.opencontainers.image.ref.name"] == "one"
    )
    two_desc = next(
        m
        for m in _index(one)["manifests"]
        if m["annotations"]["org.opencontainers.image.ref.name"] == "two"
    )
    nested = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": one_desc["mediaType"],
                "digest": one_desc["digest"],
                "size": one_desc["size"],
                "platform": other.to_json(),
            },
            {
                "mediaType": two_desc["mediaType"],
                "digest": two_desc["digest"],
                "size": two_desc["size"],
                "platform": plat.to_json(),
            },
        ],
    }
    raw = json.dumps(nested).encode()
    digest = _put_blob(one, raw)
    index["manifests"].append(
        {
            "mediaType": OCI_INDEX,
            "digest": digest,
            "size": len(raw),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }
    )
    (one / "index.json").write_text(json.dumps(index))
    assert which(f"oci-layout://{one}:multi") == "two\n"
    assert which(f"oci-layout://{one}@{digest}") == "two\n"
    # an index without this platform
    nested["manifests"] = nested["manifests"][:1]
    raw = json.dumps(nested).encode()
    digest = _put_blob(one, raw)
    with pytest.raises(ContextError) as err:
        bk.build(dockerfile, build_contexts={"ctx": f"oci-layout://{one}@{digest}"})
    assert f"has no image for {plat}" in str(err.value) and "linux/s390x" in str(err.value)


def test_oci_layout_errors(bk: Any) -> None:
    dockerfile = "FROM ctx\nRUN true\n"
    missing = _out(bk, "nope")
    with pytest.raises(ContextError) as err:
        bk.build(dockerfile, build_contexts={"ctx": f"oci-layout://{missing}"})
    assert "does not exist" in str(err.value)

    empty = _out(bk, "empty")
    empty.mkdir()
    with pytest.raises(ContextError) as err:
        bk.build(dockerfile, build_contexts={"ctx": f"oci-layout://{empty}"})
    assert "is not an OCI image layout: it has no index.json" in str(err.value)

    (empty / "index.json").write_text("{not json")
    with pytest.raises(ContextError) as err:
        bk.build(dockerfile, build_contexts={"ctx": f"oci-layout://{empty}"})
    assert "index.json is not valid JSON" in str(err.value)

    layout = _layout_from_build(bk, OCI_IMAGE, "layout")
    (manifest,) = _index(layout)["manifests"]
    unknown = "sha256:" + "0" * 64
    with pytest.raises(ContextError) as err:
        bk.build(dockerfile, build_contexts={"ctx": f"oci-layout://{layout}@{unknown}"})
    assert "is missing from the layout" in str(err.value)

    # a corrupt layer blob fails verification
    doc = json.loads((layout / "blobs" / "sha256" / manifest["digest"][7:]).read_text())
    layer = layout / "blobs" / "sha256" / doc["layers"][-1]["digest"][7:]
    layer.write_bytes(layer.read_bytes() + b"\0")
    fresh = bk.new_root("fresh")  # a store where the layers are not known yet
    with pytest.raises(ContextError) as err:
        bk.build(dockerfile, root=fresh, build_contexts={"ctx": f"oci-layout://{layout}"})
    assert "build context 'ctx'" in str(err.value)


# ----------------------------------------------------------------------------- errors


def test_missing_or_invalid_contexts_fail_before_the_build(bk: Any) -> None:
    dockerfile = "FROM busybox\nCOPY --from=lib / /\n"
    with pytest.raises(ContextError) as err:
        bk.build(dockerfile, build_contexts={"lib": str(_out(bk, "nope"))})
    assert (
        str(err.value)
        == f"failed to get build context lib: {_out(bk, 'nope')}: no such file or directory"
    )
    afile = _out(bk, "afile")
    afile.write_text("x")
    with pytest.raises(ContextError) as err:
        bk.build(dockerfile, build_contexts={"lib": str(afile)})
    assert "is not a directory" in str(err.value)
    # checked even when the Dockerfile does not use it, as buildx does
    with pytest.raises(ContextError) as err:
        bk.build("FROM busybox\n", build_contexts={"unused": str(afile)})
    assert "unused" in str(err.value)
    with pytest.raises(ContextError) as err:
        bk.build(dockerfile, build_contexts={"lib": "https://github.com/moby/buildkit.git"})
    assert "remote contexts" in str(err.value) and "not supported yet" in str(err.value)
    with pytest.raises(ContextError) as err:
        bk.build(dockerfile, build_contexts={"lib": "docker-image://UPPER"})
    assert "invalid image reference 'UPPER'" in str(err.value)


def test_missing_image_is_an_error_only_when_used(bk: Any) -> None:
    with pytest.raises(ContextError) as err:
        bk.build("FROM base\n", build_contexts={"base": "docker-image://nope:1"})
    assert str(err.value) == (
        "build context 'base' (docker-image://nope:1): image 'nope:1' is not in the local image "
        "store: load or import it first (nbbuild image load|import); pulling from registries is "
        "not supported yet"
    )
    # an unreachable stage's context is never loaded (BuildKit resolves reachable stages only)
    result = bk.build(
        "FROM busybox AS unused\nFROM busybox\nRUN true\n",
        build_contexts={"unused": "docker-image://nope:1"},
    )
    assert result.step("[stage-1 2/2]").status == "executed"


def test_from_a_local_context_has_nothing_else(bk: Any) -> None:
    other = _out(bk, "other")
    bk.write({"f": "x"}, ctx=other)
    # the directory is the whole root filesystem: no shell to run RUN with
    with pytest.raises(NbbuildError) as err:
        bk.build("FROM dir\nRUN true\n", build_contexts={"dir": str(other)})
    # crun: "executable file `/bin/sh` not found"; runc (rootless): "stat /bin/sh: no such
    # file or directory", as BuildKit's
    text = str(err.value)
    assert "/bin/sh" in text and ("not found" in text or "no such file or directory" in text)


def test_cli_build_context(bk: Any) -> None:
    other = _out(bk, "other")
    bk.write({"greeting": "hello from lib\n"}, ctx=other)
    bk.write({"Dockerfile": "FROM alpine\nCOPY --from=lib /greeting /g\nRUN cat /g\n"})
    run = bk.cli(
        "build",
        "--progress=plain",
        "--build-context",
        "lib=other",  # relative to the working directory (bk.tmp)
        "--build-context",
        "alpine=docker-image://busybox",
        str(bk.ctx),
    )
    assert run.code == 0, run.stderr
    assert "[context alpine] busybox" in run.stderr
    assert "hello from lib" in run.stderr
    run = bk.cli("build", "--build-context", "lib=missing", str(bk.ctx))
    assert run.code != 0
    assert "failed to get build context lib: missing: no such file or directory" in run.stderr
    assert "Traceback" not in run.stderr


# ----------------------------------------------------------------------------- graph level


def _conv(text: str, contexts: dict[str, str], **kw: Any) -> Any:
    return convert(
        parse(text),
        BuildOptions(build_contexts=contexts, context_dir="/ctx", platform=Platform()),
        resolve_image=lambda ref, _p: None,
        **kw,
    )


def test_run_mount_from_a_named_context_reads_the_directory() -> None:
    # RUN --mount from=<name> binds the context's source directly (no copy into a layer);
    # the runner does not run mounts yet, so this is checked on the graph.
    d = _conv(
        "FROM busybox\nRUN --mount=from=lib,src=/foo,target=/in/foo cp /in/foo /foo\n",
        {"lib": "/srv/lib", "busybox": "docker-image://scratch"},
    )
    by_digest = d.by_digest()
    (run,) = [v for v in d.vertices if isinstance(v.op, ExecOp)]
    mount = next(m for m in run.op.mounts if m.dest == "/in/foo")
    source = by_digest[run.inputs[mount.input]]
    assert source.op == LocalSource(name="lib", path="/srv/lib")
    assert mount.selector == "/foo"
    assert not [v for v in d.vertices if isinstance(v.op, FileOp)]


def test_context_names_and_keys() -> None:
    assert context_key("docker.io/library/alpine:latest") == "alpine"
    assert context_key("alpine:3.20") == "alpine:3.20"
    assert context_key("ghcr.io/a/b") == "ghcr.io/a/b"
    assert context_key("docker.io/foo/bar:latest") == "foo/bar"
    assert context_key("Not Valid") is None
    assert lookup({"scratch": "/x"}, "scratch", Platform(), stage=True) is None
    assert lookup({"context": "/x"}, "context", Platform(), stage=True) is None
    found = lookup({"alpine::linux/amd64": "/a", "alpine": "/b"}, "alpine", Platform())
    assert found is not None and (found.key, found.path) == ("alpine::linux/amd64", "/a")
    assert parse_oci_layout("/a/b:v1@sha256:" + "a" * 64) == ("/a/b", "v1", "sha256:" + "a" * 64)
    assert parse_oci_layout("/a:b/c") == ("/a:b/c", "", "")
    assert parse_oci_layout("dir") == ("dir", "", "")


def test_plan_without_a_store_keeps_contexts_provisional(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    contexts = prepare_contexts(
        {"lib": "lib", "img": "docker-image://nope", "oci": f"oci-layout://{tmp_path}:v1"},
        cwd=tmp_path,
    )
    assert contexts["lib"] == str(tmp_path / "lib")
    assert contexts["oci"] == f"oci-layout://{tmp_path}:v1"
    d = _conv("FROM img\nCOPY --from=oci / /\nCOPY --from=lib / /\n", contexts)
    sources = [v for v in d.vertices if isinstance(v.op, ImageSource)]
    assert sorted(v.meta.name for v in sources) == [
        "[context img] nope",
        "[context oci] OCI load from client",
    ]
    assert all(v.op.provisional for v in sources)
    with pytest.raises(DockerfileError):
        _conv("FROM busybox AS lib\n", {"lib": "https://example.com/x.tar"})
