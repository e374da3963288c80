"""Image config assembly, ChainID, config ⇄ ImageConfig, encodings."""

from __future__ import annotations

import hashlib
import json

import pytest

from engine.graph.image import Healthcheck, HistoryEntry, ImageConfig
from engine.images.config import (
    Descriptor,
    build_image_config,
    build_manifest,
    chain_id,
    config_bytes,
    config_from_json,
    go_json,
    rfc3339,
)
from engine.images.errors import ImageError

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


def _sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def test_chain_id_follows_the_oci_formula() -> None:
    assert chain_id([]) is None
    assert chain_id([D1]) == D1
    c2 = _sha(f"{D1} {D2}")
    assert chain_id([D1, D2]) == c2
    assert chain_id([D1, D2, D3]) == _sha(f"{c2} {D3}")
    # order matters
    assert chain_id([D2, D1]) != c2


def test_chain_id_known_vector() -> None:
    # ChainID of two layers, computed by hand from the spec's formula
    a = "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"
    b = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
    expected = "sha256:" + hashlib.sha256((a + " " + b).encode("ascii")).hexdigest()
    assert chain_id([a, b]) == expected


def _build_config(**kw: object) -> dict[str, object]:
    cfg = ImageConfig(env=("PATH=/bin",), cmd=("sh",), history=tuple(kw.pop("history", ())))  # type: ignore[arg-type]
    return cfg.to_json()


def test_rootfs_history_and_times_with_epoch() -> None:
    config = _build_config(
        history=(
            HistoryEntry("base layer"),
            HistoryEntry("ENV X=1", empty_layer=True),
            HistoryEntry("RUN make"),
        )
    )
    out = build_image_config(config, [D1, D2], source_date_epoch=86400)
    assert out["rootfs"] == {"type": "layers", "diff_ids": [D1, D2]}
    assert out["created"] == "1970-01-02T00:00:00Z"
    assert [h["created"] for h in out["history"]] == ["1970-01-02T00:00:00Z"] * 3
    assert out["config"] == {"Env": ["PATH=/bin"], "Cmd": ["sh"]}
    assert out["os"] == "linux" and out["architecture"]


def test_history_is_aligned_with_the_layers() -> None:
    config = _build_config(history=(HistoryEntry("a"), HistoryEntry("b"), HistoryEntry("c")))
    fewer = build_image_config(config, [D1], source_date_epoch=0)
    assert [bool(h.get("empty_layer")) for h in fewer["history"]] == [False, True, True]
    more = build_image_config(
        _build_config(history=(HistoryEntry("a"),)), [D1, D2, D3], source_date_epoch=0
    )
    assert len(more["history"]) == 3
    assert more["history"][1]["comment"] == "buildkit.exporter.image.v0"


def test_base_history_times_are_kept_new_entries_get_the_epoch() -> None:
    # BuildKit's exporter keeps the base image's history as it is, even entries newer than
    # the epoch (moby/buildkit#4614); only the entries this build adds get the epoch.
    config = {
        "os": "linux",
        "architecture": "amd64",
        "created": "2030-01-01T00:00:00.5Z",
        "history": [
            {"created": "1999-12-31T23:00:00-01:00", "created_by": "old"},
            {"created": "2030-01-01T00:00:00Z", "created_by": "new"},
        ],
    }
    epoch = 1_000_000_000  # 2001-09-09
    config["history"].append({"created_by": "this build"})  # type: ignore[attr-defined]
    out = build_image_config(config, [D1, D2, D3], source_date_epoch=epoch)
    assert out["history"][0]["created"] == "1999-12-31T23:00:00-01:00"
    assert out["history"][1]["created"] == "2030-01-01T00:00:00Z"
    assert out["history"][2]["created"] == rfc3339(epoch * 10**9)
    assert out["created"] == rfc3339(epoch * 10**9)
    kept = build_image_config(config, [D1, D2, D3], now_ns=5)
    assert kept["created"] == "2030-01-01T00:00:00.5Z"


def test_without_epoch_the_build_time_is_used() -> None:
    out = build_image_config(
        _build_config(history=(HistoryEntry("a"),)), [D1], now_ns=1_500_000_000_123_000_000
    )
    assert out["created"] == "2017-07-14T02:40:00.123Z"
    assert out["history"][0]["created"] == out["created"]


def test_missing_platform_is_rejected() -> None:
    with pytest.raises(ImageError, match="missing os"):
        build_image_config({"config": {}}, [], source_date_epoch=0)


def test_encodings_are_canonical() -> None:
    assert (
        go_json({"b": "<&>", "a": "\u2028é"})
        == b'{"a":"\\u2028\xc3\xa9","b":"\\u003c\\u0026\\u003e"}'
    )
    assert config_bytes({"z": 1, "a": [1, 2]}) == b'{"a":[1,2],"z":1}'
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
    assert rfc3339(1_100_000_000) == "1970-01-01T00:00:01.1Z"
    manifest = build_manifest(
        Descriptor("application/vnd.oci.image.config.v1+json", D1, 10),
        [Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", D2, 20)],
    )
    doc = json.loads(manifest)
    assert list(doc) == ["schemaVersion", "mediaType", "config", "layers"]
    assert list(doc["config"]) == ["mediaType", "digest", "size"]
    assert manifest.startswith(b'{\n  "schemaVersion": 2,\n  "mediaType": ')


def test_config_from_json_maps_every_field() -> None:
    doc = {
        "os": "linux",
        "architecture": "arm64",
        "variant": "v8",
        "config": {
            "Env": ["A=1", "PATH=/x"],
            "Cmd": ["run"],
            "Entrypoint": ["/init"],
            "WorkingDir": "/app",
            "User": "1000:1000",
            "Labels": {"b": "2", "a": "1"},
            "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
            "Volumes": {"/data": {}},
            "StopSignal": "SIGTERM",
            "Healthcheck": {"Test": ["CMD", "true"], "Interval": 5, "Retries": 3},
            "OnBuild": ["RUN x"],
            "Shell": ["/bin/bash", "-c"],
        },
        "history": [
            {"created_by": "/bin/sh -c #(nop) ADD", "empty_layer": False},
            {"comment": "c", "empty_layer": True},
        ],
    }
    cfg = config_from_json(doc)
    assert cfg.env == ("A=1", "PATH=/x")
    assert cfg.cmd == ("run",) and cfg.entrypoint == ("/init",)
    assert cfg.working_dir == "/app" and cfg.user == "1000:1000"
    assert cfg.labels == (("b", "2"), ("a", "1"))
    assert cfg.exposed_ports == ("80/tcp", "53/udp")
    assert cfg.volumes == ("/data",)
    assert cfg.stop_signal == "SIGTERM"
    assert cfg.healthcheck == Healthcheck(("CMD", "true"), interval_ns=5, retries=3)
    assert cfg.onbuild == ("RUN x",)
    assert cfg.shell == ("/bin/bash", "-c")
    assert (cfg.os, cfg.architecture, cfg.variant) == ("linux", "arm64", "v8")
    assert cfg.history == (
        HistoryEntry("/bin/sh -c #(nop) ADD", comment=""),
        HistoryEntry("", comment="c", empty_layer=True),
    )
    # null Cmd stays None, missing config is an empty one
    assert config_from_json({"config": {"Cmd": None}}).cmd is None
    assert config_from_json({}) == ImageConfig(os="linux", architecture="amd64")


def _ns(text: str) -> int:
    import datetime as dt

    return int(dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()) * 1_000_000_000


def test_stamp_times_follow_buildkits_exporter() -> None:
    """BuildKit 0.8 on this machine, for ``FROM busybox / RUN / ENV / COPY / WORKDIR / CMD``:
    each new layer's entry has its layer's time, ENV (no layer) the next layer's (COPY's), CMD
    the previous one's (WORKDIR's), the image the last entry's; the base entry keeps its own."""
    from engine.images.config import rfc3339, stamp_times

    base, run, copy_, workdir = (
        _ns("2026-11-28T11:47:13Z"),
        _ns("2026-11-28T11:47:18Z"),
        _ns("2026-11-28T11:47:28Z"),
        _ns("2026-11-28T11:47:29Z"),
    )
    config = {
        "os": "linux",
        "architecture": "amd64",
        "history": [
            {"created": rfc3339(base), "comment": "Imported from -"},
            {"created_by": "RUN /bin/sh -c echo hi > /x # buildkit"},
            {"created_by": "ENV A=1", "empty_layer": True},
            {"created_by": "COPY Dockerfile /d # buildkit"},
            {"created_by": "WORKDIR /w"},
            {"created_by": 'CMD ["sh"]', "empty_layer": True},
        ],
    }
    now = _ns("2026-11-28T12:00:00Z")
    # the base layer's own record time is not its history's: the base entry keeps its time
    out = stamp_times(config, [base + 5, run, copy_, workdir], now)
    times = [h["created"] for h in out["history"]]
    assert times == [rfc3339(t) for t in (base, run, copy_, copy_, workdir, workdir)]
    assert out["created"] == rfc3339(workdir)
    assert "created" not in config  # the input is left alone
    # the same layers (a fully cached rebuild), later: the same config
    assert stamp_times(config, [base + 5, run, copy_, workdir], now + 10**12) == out


def test_stamp_times_for_metadata_first_and_metadata_only_images() -> None:
    from engine.images.config import rfc3339, stamp_times

    base, run = _ns("2026-01-01T00:00:00Z"), _ns("2026-02-01T00:00:00Z")
    now = _ns("2026-03-01T00:00:00Z")
    first_env = {
        "history": [
            {"created": rfc3339(base)},
            {"created_by": "ENV A=1", "empty_layer": True},
            {"created_by": "RUN true"},
        ]
    }
    # a metadata command before the first new layer gets that layer's time, not the base's
    out = stamp_times(first_env, [base, run], now)
    assert [h["created"] for h in out["history"]] == [rfc3339(base), rfc3339(run), rfc3339(run)]
    only_cmd = {"history": [{"created": rfc3339(base)}, {"created_by": "CMD", "empty_layer": True}]}
    out = stamp_times(only_cmd, [base], now)
    assert out["created"] == rfc3339(base) == out["history"][1]["created"]
    # nothing known at all: the build's time
    out = stamp_times({"history": [{"created_by": "CMD", "empty_layer": True}]}, [], now)
    assert out["created"] == rfc3339(now) == out["history"][0]["created"]
