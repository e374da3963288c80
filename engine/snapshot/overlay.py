"""Overlay mounts of a snapshot chain: lower layer dirs + a fresh upper dir = the new diff.

Where the mount lives (measured and chosen)
-------------------------------------------
The merged rootfs is only ever mounted inside a **private mount namespace** that exists for one
RUN step: the executor starts ``unshare --mount --propagation private`` (util-linux), which
mounts the overlay with ``mount(8)`` and then ``exec``\\ s the OCI runtime in the same process.
When that process and the container exit - normally, or killed with SIGKILL - the namespace has
no members left and the kernel drops every mount in it. A crashed or killed build therefore
cannot leave an overlay mounted on the host, with no cleanup code that has to run. The host's
``/proc/self/mountinfo`` never shows the overlay at all.

Costs measured on the dev VM (root, Debian 12, kernel 6.x): ``unshare`` + ``sh`` + ``mount``
add about 2-3 ms per step to a crun start of ~6 ms (see ``bench/runtime_start.py``).

Alternatives rejected: mounting on the host and unmounting in a ``finally`` leaks mounts when
the Python process is killed; giving the OCI runtime an ``overlay`` mount at ``/`` is not
something crun 1.8 or runc 1.1 support (``root.path`` must be a directory).

Options: ``index=off``, ``redirect_dir=off`` and ``metacopy=off`` are set explicitly, so a
renamed directory is copied up whole and every file in the upper dir is complete: the upper dir
stays a self-contained diff that :mod:`engine.snapshot.diff` can read with only whiteouts and
opaque markers to understand.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.snapshot.errors import SnapshotError

__all__ = ["OverlayMount", "mount_overlay", "opaque_xattr", "volatile_supported"]

# mount(2) copies the data argument into one page; longer option strings are cut off
_MAX_OPTIONS = 4095
_FORBIDDEN = (",", ":", "\n", "\\")


def _check_dir_path(path: Path, what: str) -> str:
    text = str(path)
    if not path.is_absolute():
        raise SnapshotError(f"overlay {what} must be an absolute path: {text}")
    bad = [c for c in _FORBIDDEN if c in text]
    if bad:
        # overlayfs splits its options on ',' and lowerdir on ':'; escaping is fragile, so
        # snapshot paths (which nbbuild chooses) must simply not contain them
        raise SnapshotError(f"overlay {what} path contains {bad[0]!r}: {text}")
    return text


@dataclass(frozen=True)
class OverlayMount:
    """An overlay to mount: a read-only lower chain and a writable upper dir.

    Attributes:
        lowers: the lower layer directories **bottom first** (base rootfs at index 0), the order
            in which layers are appended by a build. overlayfs wants them top first; :meth:`options`
            reverses them.
        upper: a fresh, empty directory on the same filesystem as ``work``; after the step it
            holds the diff (new and changed files, whiteouts, opaque directories).
        work: overlayfs's scratch dir (empty, same filesystem as ``upper``).
    """

    lowers: tuple[Path, ...]
    upper: Path
    work: Path

    def __post_init__(self) -> None:
        if not self.lowers:
            raise SnapshotError("an overlay needs at least one lower layer")

    def options(self, *, volatile: bool = False) -> str:
        """The ``-o`` option string for ``mount -t overlay``.

        ``volatile`` (Linux >= 5.10, see :func:`volatile_supported`): the overlay skips its
        syncs of the upper filesystem - the ``sync_filesystem`` of the whole upper filesystem
        when the mount goes away (at the end of every step: the namespace dies), and a step's
        own ``fsync`` calls. For a mount whose upper dir is committed by
        :meth:`engine.store.store.Store.commit`, which ``syncfs``-es that filesystem before any
        row names the diff, they only flushed earlier what that flush makes durable anyway
        (a crash before it leaves a rowless directory, swept). The work dir must be fresh (a
        volatile mount marks it, and refuses a marked one).
        """
        lowers = [_check_dir_path(p, "lower") for p in reversed(self.lowers)]
        upper = _check_dir_path(self.upper, "upper")
        work = _check_dir_path(self.work, "work")
        opts = (
            f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work},"
            "index=off,redirect_dir=off,metacopy=off"
        )
        if not _initial_namespace():
            # In a user namespace overlayfs keeps its bookkeeping (opaque dirs) in user.*
            # xattrs: trusted.* needs CAP_SYS_ADMIN in the initial namespace (kernel >= 5.11).
            # ("redirect_dir=off" means "follow existing redirects", which userxattr refuses.)
            opts = opts.replace("redirect_dir=off", "redirect_dir=nofollow") + ",userxattr"
        if volatile:
            opts += ",volatile"
        if len(opts) > _MAX_OPTIONS:
            raise SnapshotError(
                f"overlay options are {len(opts)} bytes ({len(self.lowers)} lower layers); "
                f"mount(2) accepts at most {_MAX_OPTIONS}"
            )
        return opts

    def mount_argv(self, target: Path) -> list[str]:
        """``mount(8)`` command line that mounts this overlay at ``target``."""
        mount = shutil.which("mount") or "/bin/mount"
        return [mount, "-t", "overlay", "overlay", "-o", self.options(), str(target)]


def mount_overlay(lowers: Sequence[Path], upper: Path, work: Path, target: Path) -> OverlayMount:
    """Mount an overlay of ``lowers`` (bottom first) + ``upper`` at ``target``.

    This mounts in the **caller's** mount namespace: call it only from a process that is already
    in a private one (the executor's namespace helper does this with :meth:`OverlayMount.mount_argv`
    directly). It exists for tools and tests that run inside such a namespace.
    """
    overlay = OverlayMount(tuple(lowers), upper, work)
    upper.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(overlay.mount_argv(target), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SnapshotError(f"mount overlay at {target}: {proc.stderr.strip() or proc.returncode}")
    return overlay


@functools.cache
def volatile_supported() -> bool:
    """Whether the running kernel's overlayfs knows the ``volatile`` option (Linux 5.10)."""
    release = os.uname().release
    try:
        major, minor = (int(part) for part in release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (5, 10)


def _initial_namespace() -> bool:
    from engine.userns.namespace import mode

    return mode() == "root"


def opaque_xattr() -> str:
    """The opaque-directory marker that layers written here must carry: ``trusted.*`` for
    overlays mounted as real root, ``user.*`` for overlays mounted in a user namespace."""
    return "trusted.overlay.opaque" if _initial_namespace() else "user.overlay.opaque"
