"""``nbbuild image``: the local image store (import, load, save, ls, rm, inspect, tag).

Engine imports happen inside the commands so ``nbbuild --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.images.store import ImageStore

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``image`` (``import``, ``load``, ``save``, ``ls``, ``rm``, ``inspect``, ``tag``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--root", default=None, help="store directory (default $NBBUILD_ROOT or ~/.cache/nbbuild)"
    )
    image = subparsers.add_parser(
        "image",
        help="manage images in the local image store",
        description="Import, load, save, list, remove, inspect and tag local images.",
    )
    sub = image.add_subparsers(dest="image_command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "import",
        parents=[common],
        help="create an image from a filesystem tar (like docker import)",
        description="Create a one-layer image from a root filesystem tar (plain or gzip).",
    )
    p.add_argument(
        "-c",
        "--change",
        action="append",
        default=[],
        metavar="INSTRUCTION",
        help="apply a Dockerfile instruction (CMD, ENTRYPOINT, ENV, EXPOSE, HEALTHCHECK, "
        "LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR)",
    )
    p.add_argument("rootfs", metavar="ROOTFS.tar")
    p.add_argument("name", metavar="NAME[:TAG]")
    p.set_defaults(run=_cmd_import)

    p = sub.add_parser(
        "load",
        parents=[common],
        help="load images from a docker-archive or OCI layout tar",
        description="Load the images of a `docker save` tar or an OCI image layout tar.",
    )
    p.add_argument("archive", metavar="FILE.tar")
    p.add_argument("--name", default=None, help="name for an image the archive does not name")
    p.set_defaults(run=_cmd_load)

    p = sub.add_parser(
        "save",
        parents=[common],
        help="write images to a tar (docker load compatible, or OCI layout)",
        description="Write images to a tar that `docker load` or OCI tools read.",
    )
    p.add_argument("-o", "--output", required=True, metavar="FILE.tar", help="file (- for stdout)")
    p.add_argument("--format", choices=("docker", "oci"), default="docker")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(run=_cmd_save)

    p = sub.add_parser("ls", parents=[common], help="list images", description="List images.")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(run=_cmd_ls)

    p = sub.add_parser(
        "rm", parents=[common], help="remove image names", description="Remove image names."
    )
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(run=_cmd_rm)

    p = sub.add_parser(
        "inspect",
        parents=[common],
        help="print an image's config as JSON",
        description="Print the image config (OCI JSON) of an image.",
    )
    p.add_argument("name", metavar="NAME")
    p.set_defaults(run=_cmd_inspect)

    p = sub.add_parser(
        "tag",
        parents=[common],
        help="give an image another name",
        description="Give the image SRC the name DST.",
    )
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")
    p.set_defaults(run=_cmd_tag)


@contextmanager
def _images(args: argparse.Namespace) -> Iterator[ImageStore]:
    from engine.images.store import ImageStore
    from engine.plan import default_store_root
    from engine.store.store import Store

    store = Store.open(default_store_root(args.root))
    try:
        yield ImageStore(store)
    finally:
        store.close()


def _cmd_import(args: argparse.Namespace) -> int:
    from engine.images.archive import import_rootfs

    with _images(args) as images:
        image = import_rootfs(images, Path(args.rootfs), args.name, args.change)
    sys.stdout.write(image.config_digest + "\n")
    return 0


def _cmd_load(args: argparse.Namespace) -> int:
    from engine.images.archive import load
    from engine.images.store import familiar_name

    with _images(args) as images:
        loaded = load(images, Path(args.archive), name=args.name)
    for image in loaded:
        sys.stdout.write(f"Loaded image: {familiar_name(image.name)}\n")
    return 0


def _cmd_save(args: argparse.Namespace) -> int:
    from engine.images.archive import save_docker, save_oci

    save = save_docker if args.format == "docker" else save_oci
    with _images(args) as images:
        save(images, args.names, args.output)
    return 0


def _split(name: str) -> tuple[str, str]:
    from engine.images.store import familiar_name

    short = familiar_name(name)
    repo, sep, tag = short.rpartition(":")
    if not sep or "/" in tag:
        return short, ""
    return repo, tag


def _cmd_ls(args: argparse.Namespace) -> int:
    with _images(args) as images:
        listed = images.list()
    if args.format == "json":
        rows = [
            {
                "name": i.name,
                "id": i.config_digest,
                "manifest": i.manifest_digest,
                "chain_id": i.chain_id,
                "created": i.created,
                "layers": len(i.layers),
            }
            for i in listed
        ]
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    table = [("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "LAYERS")]
    for i in listed:
        repo, tag = _split(i.name)
        table.append(
            (repo, tag, i.config_digest.removeprefix("sha256:")[:12], i.created, str(len(i.layers)))
        )
    widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
    for row in table:
        sys.stdout.write(
            "   ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n"
        )
    return 0


def _cmd_rm(args: argparse.Namespace) -> int:
    from engine.images.store import familiar_name

    with _images(args) as images:
        for name in args.names:
            removed = images.remove(name)
            sys.stdout.write(f"Untagged: {familiar_name(removed.name)}\n")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from engine.images.errors import ImageError

    with _images(args) as images:
        image = images.get(args.name)
    if image is None:
        raise ImageError(f"no such image: {args.name}")
    json.dump(image.config, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


def _cmd_tag(args: argparse.Namespace) -> int:
    with _images(args) as images:
        images.tag(args.src, args.dst)
    return 0
