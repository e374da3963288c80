"""Build outputs through real builds: tags, ``--output`` local/tar/oci/docker, ``--iidfile``,
``--metadata-file``, ``--label``, history entries as BuildKit writes them, and reproducible
images with ``SOURCE_DATE_EPOCH`` (fixtures in tests/buildkit_base.py).

Run by a normal user the builds are rootless; with a single ID mapping a build that needs other
IDs than root's (``APP``: ``COPY --chown``, ``chown``) must fail with the clear error."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import stat
import sys
import tarfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


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

APP = """\
FROM busybox AS build
WORKDIR /src
COPY --chown=1000:1000 --chmod=0640 app.txt ./
RUN mkdir -p /out && cp -p app.txt /out/app.txt && mkdir /out/sub && chmod 0751 /out/sub && \\
    echo built > /out/built && chown 7:8 /out/built && ln -s built /out/link

FROM busybox
ARG VERSION=1.0
ENV APP_HOME=/opt/app
COPY --from=build /out /opt/app
RUN echo "$VERSION" > /opt/app/version
LABEL org.example.name=app
USER 1234:5678
EXPOSE 8080
CMD ["cat", "/opt/app/built"]
"""


def _write_app(bk: Any) -> None:
    bk.write({"app.txt": "application\n"})


def _app_builds(bk: Any) -> bool:
    """Write APP's context. False when the build cannot run here: with a single ID mapping
    it needs uids 1000 and 7 (``COPY --chown``, ``chown``), and fails clearly (checked)."""
    _write_app(bk)
    if base.single():
        base.expect_unmapped(lambda: bk.build(APP))
        return False
    return True


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tar_members(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return {m.name.lstrip("./").rstrip("/"): m for m in tar.getmembers()}


def _read_member(path: Path, name: str) -> bytes:
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            if m.name.lstrip("./") == name:
                f = tar.extractfile(m)
                assert f is not None
                return f.read()
    raise KeyError(name)


# -- tags and image config --------------------------------------------------------------------


def test_tag_stores_the_image_and_inspect_shows_its_config(bk: Any) -> None:
    if not _app_builds(bk):
        return
    result = bk.build(APP, tags=("app:1", "app:latest"))
    assert result.image_id and result.image_id.startswith("sha256:")
    inspect = bk.cli("image", "inspect", "app:1")
    assert inspect.code == 0, inspect.stderr
    config = json.loads(inspect.stdout)
    assert config["config"]["Cmd"] == ["cat", "/opt/app/built"]
    assert config["config"]["User"] == "1234:5678"
    assert config["config"]["Labels"] == {"org.example.name": "app"}
    assert config["config"]["ExposedPorts"] == {"8080/tcp": {}}
    assert "APP_HOME=/opt/app" in config["config"]["Env"]
    assert "VERSION=1.0" not in config["config"]["Env"]  # ARGs are not kept in the image
    assert len(config["rootfs"]["diff_ids"]) == len(result.layers) == 3
    listed = bk.cli("image", "ls")
    assert "app" in listed.stdout and "latest" in listed.stdout and "1" in listed.stdout
    # the image ID is the digest of the stored config blob; both tags point at it
    second = json.loads(bk.cli("image", "inspect", "app:latest").stdout)
    assert second == config
    assert _image_id(bk, "app:1") == _image_id(bk, "app:latest") == result.image_id


def test_tagged_image_is_a_base_for_the_next_build(bk: Any) -> None:
    if not _app_builds(bk):
        return
    bk.build(APP, tags=("app:1",))
    result = bk.build("FROM app:1\nRUN cat /opt/app/version /opt/app/built && id -u\n")
    assert result.step("[2/2]").logs == b"1.0\nbuilt\n1234\n"


def test_label_flag_lands_in_the_config_without_touching_keys(bk: Any) -> None:
    if not _app_builds(bk):
        return
    first = bk.build(APP, tags=("app:1",))
    second = bk.build(APP, tags=("app:2",), labels={"org.example.build": "42"})
    assert {s.status for s in second.steps if s.step is not None} == {"cached"}
    assert second.config["config"]["Labels"] == {
        "org.example.name": "app",
        "org.example.build": "42",
    }
    assert first.image_id != second.image_id
    assert [s.key for s in first.steps] == [s.key for s in second.steps]


def test_history_entries_are_buildkits(bk: Any) -> None:
    bk.write({"f": "f\n"})
    if base.single():  # COPY --chown=1:2
        base.expect_unmapped(lambda: bk.build("FROM busybox\nCOPY --chown=1:2 f ./\n"))
        return
    result = bk.build(
        "FROM busybox\n"
        "ARG V=1\n"
        "ENV A=b\n"
        "WORKDIR /app\n"
        "COPY --chown=1:2 f ./\n"
        "ADD f /g\n"
        "RUN echo $V > /v\n"
        "LABEL k=v\n"
        "USER 1234\n"
        "EXPOSE 8080\n"
        'ENTRYPOINT ["/bin/sh"]\n'
        'CMD ["-c", "cat /v"]\n',
        tags=("hist:1",),
    )
    history = result.config["history"]
    own = [(h["created_by"], h.get("empty_layer", False)) for h in history[1:]]
    assert own == [
        ("ARG V=1", True),
        ("ENV A=b", True),
        ("WORKDIR /app", False),
        ("COPY --chown=1:2 f ./ # buildkit", False),
        ("ADD f /g # buildkit", False),
        ("RUN |1 V=1 /bin/sh -c echo $V > /v # buildkit", False),
        ("LABEL k=v", True),
        ("USER 1234", True),
        ("EXPOSE [8080/tcp]", True),
        ('ENTRYPOINT ["/bin/sh"]', True),
        ('CMD ["-c" "cat /v"]', True),
    ]
    assert all(h["comment"] == "buildkit.dockerfile.v0" for h in history[1:])
    stored = json.loads(bk.cli("image", "inspect", "hist:1").stdout)
    layered = [h for h in stored["history"] if not h.get("empty_layer")]
    assert len(layered) == len(stored["rootfs"]["diff_ids"])
    assert all("created" in h for h in stored["history"])


def test_base_image_history_keeps_its_own_entries(bk: Any) -> None:
    base_config = json.loads(bk.cli("image", "inspect", "busybox").stdout)
    bk.build("FROM busybox\nRUN echo hi > /hi\n", tags=("h:1",))
    stored = json.loads(bk.cli("image", "inspect", "h:1").stdout)
    assert stored["history"][0] == base_config["history"][0]


# -- --output ---------------------------------------------------------------------------------


def test_local_output_is_the_final_filesystem_with_owners_and_modes(bk: Any) -> None:
    if not _app_builds(bk):
        return
    out = bk.tmp / "out"
    bk.build(APP, outputs=[f"type=local,dest={out}"])
    app = out / "opt" / "app"
    assert (app / "app.txt").read_text() == "application\n"
    # (rootless, the export is the user's and the owners are checked in its tar twin)
    st = (app / "app.txt").stat()
    assert (*base.owner(app / "app.txt"), stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o640)
    assert base.owner(app / "built") == (7, 8)
    assert stat.S_IMODE((app / "sub").stat().st_mode) == 0o751
    assert (app / "link").is_symlink() and (app / "link").readlink() == Path("built")
    assert (app / "version").read_text() == "1.0\n"
    assert (out / "bin" / "busybox").is_file()
    assert stat.S_IMODE((out / "tmp").stat().st_mode) == 0o1777
    # only the final stage: the build stage's /src is not there
    assert not (out / "src").exists()


def test_local_output_replaces_what_a_previous_export_left(bk: Any) -> None:
    _write_app(bk)
    out = bk.tmp / "out"
    bk.build("FROM busybox\nRUN echo one > /one\n", outputs=[f"type=local,dest={out}"])
    bk.build("FROM busybox\nRUN echo two > /two\n", outputs=[f"type=local,dest={out}"])
    assert (out / "two").is_file()


def test_tar_output_is_the_final_filesystem(bk: Any) -> None:
    if not _app_builds(bk):
        return
    dest = bk.tmp / "fs.tar"
    bk.build(APP, outputs=[f"type=tar,dest={dest}"])
    members = _tar_members(dest)
    app = members["opt/app/app.txt"]
    assert (app.uid, app.gid, app.mode & 0o7777) == (1000, 1000, 0o640)
    assert members["opt/app/link"].issym() and members["opt/app/link"].linkname == "built"
    assert (members["opt/app/built"].uid, members["opt/app/built"].gid) == (7, 8)
    assert _read_member(dest, "opt/app/version") == b"1.0\n"
    assert "bin/busybox" in members
    assert "src" not in members


def _check_oci_layout(dest: Path) -> dict[str, Any]:
    with tarfile.open(dest) as tar:
        names = set(tar.getnames())
        assert "oci-layout" in names and "index.json" in names
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        manifest_desc = index["manifests"][0]

        def blob(digest: str) -> bytes:
            data = tar.extractfile("blobs/sha256/" + digest.split(":")[1]).read()  # type: ignore[union-attr]
            assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
            return data

        manifest = json.loads(blob(manifest_desc["digest"]))
        config = json.loads(blob(manifest["config"]["digest"]))
        for layer in manifest["layers"]:
            blob(layer["digest"])
    return {"index": index, "manifest": manifest, "config": config, "desc": manifest_desc}


def test_oci_output_is_a_verified_oci_layout_of_the_image(bk: Any) -> None:
    if not _app_builds(bk):
        return
    dest = bk.tmp / "image.oci.tar"
    result = bk.build(APP, tags=("app:1",), outputs=[f"type=oci,dest={dest}"])
    layout = _check_oci_layout(dest)
    assert layout["manifest"]["config"]["digest"] == result.image_id
    assert layout["config"]["config"]["Cmd"] == ["cat", "/opt/app/built"]
    assert len(layout["manifest"]["layers"]) == 3
    annotations = layout["desc"].get("annotations", {})
    assert annotations.get("io.containerd.image.name") == "docker.io/library/app:1"


def test_docker_output_loads_back_as_the_same_image(bk: Any) -> None:
    if not _app_builds(bk):
        return
    dest = bk.tmp / "image.docker.tar"
    result = bk.build(APP, tags=("app:1",), outputs=[f"type=docker,dest={dest}"])
    with tarfile.open(dest) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert manifest[0]["RepoTags"] == ["app:1"]
    other = bk.new_root("other")
    loaded = bk.cli("image", "load", str(dest), root=other)
    assert loaded.code == 0, loaded.stderr
    inspect = json.loads(bk.cli("image", "inspect", "app:1", root=other).stdout)
    mine = json.loads(bk.cli("image", "inspect", "app:1").stdout)
    assert inspect == mine
    again = bk.build("FROM app:1\nRUN cat /opt/app/version\n", root=other)
    assert again.step("[2/2]").logs == b"1.0\n"
    assert result.image_id is not None


def test_image_output_with_name_tags_the_image(bk: Any) -> None:
    if not _app_builds(bk):
        return
    result = bk.build(APP, outputs=["type=image,name=named:1"])
    assert result.image_id
    assert json.loads(bk.cli("image", "inspect", "named:1").stdout)["config"]["User"] == (
        "1234:5678"
    )


def test_several_outputs_at_once(bk: Any) -> None:
    if not _app_builds(bk):
        return
    out = bk.tmp / "out"
    result = bk.build(
        APP,
        tags=("multi:1",),
        outputs=[
            f"type=local,dest={out}",
            f"type=docker,dest={bk.tmp / 'd.tar'}",
            f"type=oci,dest={bk.tmp / 'o.tar'}",
        ],
    )
    assert (out / "opt" / "app" / "built").is_file()
    # one build, one image: the tag and both archives carry the same config (same image ID)
    oci_id = _check_oci_layout(bk.tmp / "o.tar")["manifest"]["config"]["digest"]
    with tarfile.open(bk.tmp / "d.tar") as tar:
        docker_manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        docker_config = tar.extractfile(docker_manifest[0]["Config"]).read()  # type: ignore[union-attr]
    docker_id = "sha256:" + hashlib.sha256(docker_config).hexdigest()
    assert oci_id == docker_id == result.image_id == _image_id(bk, "multi:1")


def _image_id(bk: Any, name: str) -> str:
    from engine.images.store import ImageStore
    from engine.store.store import Store

    store = Store.open(bk.root)
    try:
        image = ImageStore(store).get(name)
        assert image is not None
        return str(image.config_digest)
    finally:
        store.close()


def test_outputs_of_a_fully_cached_build_are_written_too(bk: Any) -> None:
    if not _app_builds(bk):
        return
    bk.build(APP)
    out = bk.tmp / "out"
    result = bk.build(APP, outputs=[f"type=local,dest={out}"])
    assert {s.status for s in result.steps if s.step is not None} == {"cached"}
    assert (out / "opt" / "app" / "version").read_text() == "1.0\n"


def test_unknown_output_type_is_a_usage_error(bk: Any) -> None:
    from engine.errors import UsageError

    with pytest.raises(UsageError, match="registry"):
        bk.build("FROM busybox\n", outputs=["type=registry,dest=x"])
    with pytest.raises(UsageError, match="dest"):
        bk.build("FROM busybox\n", outputs=["type=oci"])


# -- reproducibility --------------------------------------------------------------------------

REPRO = """\
FROM busybox AS build
WORKDIR /w
COPY . .
RUN mkdir gen && date > gen/stamp-not-content && echo fixed > gen/fixed && \\
    touch gen/new && rm gen/stamp-not-content && sleep 1 && echo later > gen/later

FROM busybox
COPY --from=build /w/gen /gen
ADD data.tar /unpacked/
RUN echo done > /done && mkdir -p /var/empty
LABEL built=yes
"""


def _repro_files(bk: Any) -> None:
    import io

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("inner.txt")
        info.mtime = 1_600_000_000
        info.size = 6
        tar.addfile(info, io.BytesIO(b"inner\n"))
    bk.write({"a.txt": "a\n", "sub/b.txt": "b\n", "data.tar": buf.getvalue()})


def test_source_date_epoch_gives_the_same_image_in_two_cold_stores(bk: Any) -> None:
    _repro_files(bk)
    epoch = "1700000000"
    args = {"SOURCE_DATE_EPOCH": epoch}
    results = []
    for name in ("store-a", "store-b"):
        root = bk.new_root(f"root-{name}")
        out = bk.tmp / name
        out.mkdir()
        results.append(
            bk.build(
                REPRO,
                root=root,
                build_args=args,
                tags=("repro:1",),
                outputs=[f"type=docker,dest={out / 'd.tar'}", f"type=oci,dest={out / 'o.tar'}"],
            )
        )
    a, b = results
    assert a.image_id == b.image_id
    assert _sha(bk.tmp / "store-a" / "d.tar") == _sha(bk.tmp / "store-b" / "d.tar")
    assert _sha(bk.tmp / "store-a" / "o.tar") == _sha(bk.tmp / "store-b" / "o.tar")
    layout = _check_oci_layout(bk.tmp / "store-a" / "o.tar")
    config = layout["config"]
    assert config["created"] == "2023-11-14T22:13:20Z"
    # the base image's history entries keep their own times (BuildKit: moby/buildkit#4614);
    # every entry this build added carries the epoch
    base = json.loads(bk.cli("image", "inspect", "busybox").stdout)
    n_base = len(base["history"])
    assert config["history"][:n_base] == base["history"]
    assert {h["created"] for h in config["history"][n_base:]} == {"2023-11-14T22:13:20Z"}
    # file times in the new layers are clamped to the epoch
    with tarfile.open(bk.tmp / "store-a" / "o.tar") as tar:
        for layer in layout["manifest"]["layers"][1:]:
            blob = tar.extractfile("blobs/sha256/" + layer["digest"].split(":")[1])
            assert blob is not None
            with tarfile.open(fileobj=blob) as inner:
                for member in inner.getmembers():
                    assert member.mtime <= int(epoch), member.name


def test_without_source_date_epoch_images_differ_only_in_times(bk: Any) -> None:
    _repro_files(bk)
    a = bk.build(REPRO, root=bk.new_root("a"), tags=("t:1",))
    b = bk.build(REPRO, root=bk.new_root("b"), tags=("t:1",))
    ca, cb = dict(a.config), dict(b.config)
    assert ca == cb  # the build's config has no times; the exporter adds them
    layers_a = [s.key for s in a.steps]
    assert layers_a == [s.key for s in b.steps]  # keys are store-independent


def test_source_date_epoch_is_not_a_cache_key_input_for_steps_that_do_not_use_it(
    bk: Any,
) -> None:
    _repro_files(bk)
    bk.build(REPRO, tags=("r:1",))
    second = bk.build(REPRO, tags=("r:2",), build_args={"SOURCE_DATE_EPOCH": "1700000000"})
    # BuildKit: SOURCE_DATE_EPOCH is a build arg only where the Dockerfile declares it
    assert {s.status for s in second.steps if s.step is not None} == {"cached"}


def test_scratch_image_has_only_what_was_copied(bk: Any) -> None:
    bk.write({"f.txt": "f\n"})
    dest = bk.tmp / "fs.tar"
    result = bk.build(
        'FROM scratch\nCOPY f.txt /\nCMD ["/f.txt"]\n',
        tags=("scratch:1",),
        outputs=[f"type=tar,dest={dest}"],
    )
    assert set(_tar_members(dest)) == {"f.txt"}
    assert len(result.layers) == 1
    config = json.loads(bk.cli("image", "inspect", "scratch:1").stdout)
    assert config["config"]["Env"] == [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    ]


def test_scratch_image_config_has_workdir_slash_like_buildkit(bk: Any) -> None:
    bk.write({"f.txt": "f\n"})
    result = bk.build("FROM scratch\nCOPY f.txt /\n")
    assert result.config["config"].get("WorkingDir") == "/"


def test_empty_scratch_image_has_no_layers(bk: Any) -> None:
    result = bk.build("FROM scratch\nLABEL only=config\n", tags=("empty:1",))
    assert result.layers == ()
    config = json.loads(bk.cli("image", "inspect", "empty:1").stdout)
    assert config["rootfs"]["diff_ids"] == []
    assert config["config"]["Labels"] == {"only": "config"}


def test_output_to_a_missing_directory_is_a_clear_error(bk: Any) -> None:
    from engine.images.errors import ImageError

    for kind in ("tar", "oci", "docker"):
        dest = bk.tmp / "missing" / f"x.{kind}.tar"
        with pytest.raises(ImageError, match=f"cannot export to {dest}: No such file"):
            bk.build("FROM busybox\nRUN echo x > /x\n", outputs=[f"type={kind},dest={dest}"])


def test_invalid_tag_fails_before_anything_runs(bk: Any) -> None:
    from engine.images.errors import ImageError

    with pytest.raises(ImageError, match="Bad Name"):
        bk.build("FROM busybox\nRUN echo x > /x\n", tags=("Bad Name",))
    assert bk.reporters[-1].events == []
    with pytest.raises(ImageError, match="also bad"):
        bk.build("FROM busybox\n", outputs=["type=image,name=also bad"])
