"""A read-only view of a chain of layer directories, as overlayfs would merge them.

The executor needs to look into a rootfs *before* it is mounted (``/etc/passwd`` for ``USER``,
which mount-point stubs the runtime will create) and the diff reader needs to know whether an
upper-dir entry replaces something in the lower chain. Mounting just to read is costly and only
possible inside a private mount namespace, so this module answers those questions from the layer
directories themselves, with overlayfs's rules:

* the topmost layer that has an entry for a path wins;
* a whiteout (a ``c 0 0`` character device) deletes the path from the layers below;
* an opaque directory (xattr ``trusted.overlay.opaque=y``, or ``user.overlay.opaque=y`` for
  ``userxattr`` mounts) hides everything below it in lower layers;
* a non-directory in a higher layer hides a directory of the same name below.

Symlinks are resolved *inside* the view (like containerd's ``fs.RootPath``): an absolute target
restarts at the view's root and ``..`` never climbs above it, so a hostile ``/etc -> /`` or
``/etc/passwd -> ../../../../etc/shadow`` cannot make us read a host file.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from engine.snapshot.errors import SnapshotError

__all__ = ["ChainView", "LayerView", "chain_view", "is_opaque_dir", "is_whiteout"]

_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
# the kernel's own limit (MAXSYMLINKS is 40); more means a loop or an attack
_MAX_SYMLINKS = 40
# /etc/passwd larger than this is not a passwd file (BuildKit uses the same 10 MiB cap)
MAX_USER_FILE_BYTES = 10 << 20


def is_whiteout(st: os.stat_result) -> bool:
    """Whether an lstat result is an overlayfs whiteout (a character device 0:0)."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque_dir(path: Path | str) -> bool:
    """Whether a directory carries overlayfs's opaque marker (trusted.* or user.* namespace)."""
    for name in _OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            # ENODATA (no such xattr) and ENOTSUP (fs without xattrs) both mean "not opaque"
            continue
    return False


def _split(path: str) -> list[str]:
    return [p for p in PurePosixPath("/", path).parts[1:] if p not in ("", ".")]


class LayerView:
    """Merged read-only view of layer directories.

    Args:
        layers: the chain **bottom first** (the base rootfs at index 0, each later layer on
            top of the ones before), the order in which a build appends layers.
    """

    def __init__(self, layers: Sequence[Path]) -> None:
        if not layers:
            raise SnapshotError("a layer view needs at least one layer")
        self._top_first = [Path(p) for p in reversed(layers)]
        self._top_first_str = [os.fspath(p).rstrip("/") for p in self._top_first]
        # The layers are not written while a view of them is in use (they are a chain's
        # committed diffs, or a rootfs being read): answers are remembered per view, so
        # resolving /etc/passwd, /etc/group, /etc/hosts, … walks a long chain once per name.
        self._memo: dict[tuple[str, ...], Path | None] = {}

    def lookup(self, path: str) -> Path | None:
        """Host path of the entry at ``path`` (taken literally: no symlink in it is followed).

        Returns None when the merged view has nothing there (absent, whited out, hidden by an
        opaque directory, or a parent is not a directory).
        """
        parts = tuple(_split(path))
        if not parts:
            return self._top_first[0]
        return self._lookup_parts(parts)

    def _lookup_parts(self, parts: tuple[str, ...]) -> Path | None:
        """:meth:`lookup` of a split, non-empty path, remembered."""
        try:
            return self._memo[parts]
        except KeyError:
            pass
        found = self._lookup(parts)
        self._memo[parts] = found
        return found

    def _lookup(self, parts: tuple[str, ...]) -> Path | None:
        last = len(parts) - 1
        for layer in self._top_first_str:
            blocked = False
            current = layer
            for i, name in enumerate(parts):
                current = current + "/" + name
                try:
                    st = os.lstat(current)
                except (FileNotFoundError, NotADirectoryError):
                    break  # this layer has nothing here: look lower, unless blocked above
                if is_whiteout(st):
                    return None
                if i == last:
                    return Path(current)
                if not stat.S_ISDIR(st.st_mode):
                    return None  # a file or symlink here hides anything below this name
                if is_opaque_dir(current):
                    blocked = True
            if blocked:
                return None
        return None

    def resolve(self, path: str, *, follow_final: bool = True) -> tuple[str, Path | None]:
        """Resolve ``path`` with every symlink followed inside the view.

        Returns the in-view path it resolves to and the host path of that entry (None when
        absent). With ``follow_final=False`` a final symlink is returned itself (lstat-like).
        """
        pending = _split(path)
        resolved: list[str] = []
        hops = 0
        while pending:
            name = pending.pop(0)
            if name == "..":
                if resolved:
                    resolved.pop()
                continue
            candidate = "/" + "/".join([*resolved, name])
            host = self.lookup(candidate)
            if host is None:
                return "/" + "/".join([*resolved, name, *pending]), None
            st = os.lstat(host)
            if stat.S_ISLNK(st.st_mode) and (pending or follow_final):
                hops += 1
                if hops > _MAX_SYMLINKS:
                    raise SnapshotError(f"too many levels of symbolic links resolving {path}")
                target = os.readlink(host)
                if target.startswith("/"):
                    resolved = []
                pending = _split(target) + pending
                continue
            resolved.append(name)
        final = "/" + "/".join(resolved)
        return final, self.lookup(final)

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists, parents resolved in the view, final symlink not followed."""
        return self.resolve(path, follow_final=False)[1] is not None

    def read_file(self, path: str, *, limit: int = MAX_USER_FILE_BYTES) -> bytes | None:
        """Contents of a regular file in the view, or None when it is absent or not regular.

        The host path found by :meth:`resolve` is opened with ``O_NOFOLLOW`` and checked with
        ``fstat``, so a file swapped for a symlink or a device in between is refused.
        """
        _, host = self.resolve(path)
        if host is None:
            return None
        try:
            fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            chunks: list[bytes] = []
            size = 0
            while chunk := os.read(fd, 1 << 16):
                size += len(chunk)
                if size > limit:
                    raise SnapshotError(f"{path} is larger than {limit} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)


class ChainView(LayerView):
    """The view of a chain that is a known chain (``below``) plus one layer on top.

    The top layer changes only what lies under its own entries: where a path leaves the top
    layer's directories (the next name is not there), and no directory on the way is opaque,
    the path resolves exactly as in the chain below, and that view answers (from what it
    remembers). Consecutive RUN steps then find /etc/passwd, /etc/group and the mount points'
    parents by looking at one layer, not at their whole chain again (a RUN layer usually holds
    a copied-up /etc and the step's own files); layers are immutable once committed.
    """

    def __init__(self, layers: Sequence[Path], below: LayerView) -> None:
        super().__init__(layers)
        self._below = below
        self._top = self._top_first_str[0]

    def _lookup(self, parts: tuple[str, ...]) -> Path | None:
        # Called by lookup() on a miss of this view's memo; the answer is remembered here, so
        # the next step's view, which asks this one, stops at it instead of recursing through
        # every older step's view (each RUN layer holds a copied-up /etc: the stubs' parent).
        if ".." in parts:
            return super()._lookup(parts)
        current = self._top
        last = len(parts) - 1
        for i, name in enumerate(parts):
            current = current + "/" + name
            try:
                st = os.lstat(current)
            except (FileNotFoundError, NotADirectoryError):
                return self._below._lookup_parts(parts)  # nothing of the top layer on the way
            if i == last or not stat.S_ISDIR(st.st_mode) or is_opaque_dir(current):
                break  # the top layer has a say: resolve here
        return super()._lookup(parts)


_CHAINS_KEPT = 16
_chains: dict[tuple[Path, ...], LayerView] = {}
_chains_lock = threading.Lock()


def chain_view(layers: Sequence[Path]) -> LayerView:
    """The merged view of a chain of **committed** (never again written) layer dirs, bottom
    first, shared by whoever asks for the same chain in this process (a RUN step's runner
    making mount points, then its executor resolving USER and stubs); a chain that is a recent
    chain plus one layer (a build's next RUN) answers through that chain's view
    (:class:`ChainView`). The last few chains are kept."""
    chain = tuple(Path(p) for p in layers)
    with _chains_lock:
        view = _chains.pop(chain, None)
        below = _chains.get(chain[:-1]) if view is None and len(chain) > 1 else None
    if view is None:
        view = LayerView(chain) if below is None else ChainView(chain, below)
    with _chains_lock:
        _chains[chain] = view
        while len(_chains) > _CHAINS_KEPT:
            del _chains[next(iter(_chains))]
    return view
