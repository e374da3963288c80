"""Image times as BuildKit's exporter sets them (engine.images.config.stamp_times), through
real builds: a fully cached rebuild is the same image (same ID, as BuildKit gives), a build
that re-ran a step is a new one, and each layer's history entry carries its layer's time."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


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

def stored_config(bk: object, ref: str) -> dict[str, object]:
    """The config of the image ``ref`` as the store holds it (what a tag made)."""
    import json

    from engine.images.store import ImageStore
    from engine.store.store import Store

    with Store.open(bk.root) as store:  # type: ignore[attr-defined]
        images = ImageStore(store)
        image = images.get(ref)
        assert image is not None
        config: dict[str, object] = json.loads(images.read_blob(image.config_digest))
    return config


DOCKERFILE = """\
FROM busybox
RUN echo one > /one
ENV A=1
COPY hello.txt /hello.txt
WORKDIR /w
CMD ["sh"]
"""


def test_a_fully_cached_rebuild_is_the_same_image_and_no_cache_a_new_one(bk: object) -> None:
    bk.write({"hello.txt": "hi\n"})  # type: ignore[attr-defined]
    first = bk.build(DOCKERFILE, tags=("times",))  # type: ignore[attr-defined]
    again = bk.build(DOCKERFILE, tags=("times",))  # type: ignore[attr-defined]
    assert {s.status for s in again.steps if s.step is not None} == {"cached"}
    assert again.image_id == first.image_id
    fresh = bk.build(DOCKERFILE, tags=("times",), no_cache=True)  # type: ignore[attr-defined]
    assert fresh.image_id != first.image_id


def test_history_times_follow_the_layers(bk: object) -> None:
    bk.write({"hello.txt": "hi\n"})  # type: ignore[attr-defined]
    result = bk.build(DOCKERFILE, tags=("times",))  # type: ignore[attr-defined]
    config = stored_config(bk, "times")
    history = config["history"]
    assert isinstance(history, list)
    by = {h.get("created_by", "").split(" # ")[0]: h["created"] for h in history}
    run, env = by["RUN /bin/sh -c echo one > /one"], by["ENV A=1"]
    copy, workdir, cmd = by["COPY hello.txt /hello.txt"], by["WORKDIR /w"], by['CMD ["sh"]']
    assert run < copy <= workdir  # RFC 3339 in UTC: text order is time order
    assert env == copy  # no layer: the next new layer's time
    assert cmd == workdir  # no layer, at the end: the previous entry's
    assert config["created"] == workdir
    # editing the copied file: COPY and WORKDIR are made again, RUN's layer keeps its time
    bk.write({"hello.txt": "changed\n"})  # type: ignore[attr-defined]
    edited = bk.build(DOCKERFILE, tags=("times",))  # type: ignore[attr-defined]
    history2 = stored_config(bk, "times")["history"]
    assert isinstance(history2, list)
    by2 = {h.get("created_by", "").split(" # ")[0]: h["created"] for h in history2}
    assert by2["RUN /bin/sh -c echo one > /one"] == run
    assert by2["COPY hello.txt /hello.txt"] > copy
    assert edited.image_id != result.image_id
