"""Git sources for ``ADD <git URL>``.

Mirrors BuildKit at HEAD:

* which strings are git URLs and how they split into remote, ref and subdir
  (``frontend/dockerfile/dfgitutil/git_ref.go``, ``util/gitutil/git_url.go``,
  ``util/sshutil/scpurl.go``): ``https://…/repo.git``, ``http://…/repo.git``, ``git://…``,
  ``ssh://…``, scp-like ``user@host:path``; a ``#ref:subdir`` fragment and/or a
  ``?ref=…&tag=…&branch=…&subdir=…&checksum=…&keep-git-dir&submodules=…&mtime=…`` query;
* subdir normalisation (CVE-2026-33748): the subdir is cleaned lexically against ``/`` so
  ``../../escape`` becomes ``escape``, and at checkout every element must be a real directory,
  never a symlink or file;
* refs starting with ``-`` are rejected (they would be read as git options);
* the cache key (``source/git/source.go`` ``shaToCacheKey``): the commit sha, then
  ``.git#<ref>`` with keep-git-dir, ``:<subdir>``, ``(skip-submodules)``, ``(mtime=…)``. The
  remote is *not* part of it.

Git always runs with a scrubbed environment: no prompts, no system or user configuration.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from engine.errors import DockerfileError, SourceError

__all__ = [
    "GitRef",
    "GitResolution",
    "cache_key",
    "checkout",
    "is_full_commit",
    "is_git_url",
    "key_preimage",
    "parse_git_ref",
    "resolve",
    "resolve_ref",
    "validate_checksum",
    "with_add_flags",
]

_PROTO = re.compile(r"^[a-zA-Z0-9]+://")
_SUPPORTED_PROTOS = frozenset({"http", "https", "ssh", "git"})
_SCP = re.compile(r"^([a-zA-Z0-9_-]+)@([a-zA-Z0-9.-]+):(.*?)(?:\?(.*?))?(?:#(.*))?$")
_HEX = re.compile(r"^[a-fA-F0-9]+$")
_LOWER_HEX = re.compile(r"^[a-f0-9]+$")
_DEFAULT_BRANCH = re.compile(r"refs/heads/(\S+)")
_URL_PASSWORD = re.compile(r"://([^/:@\s]+):([^@/\s]+)@")
_FLAG_KEYS = frozenset({"submodules", "keep-git-dir", "fetch-by-commit"})


@dataclass(frozen=True, slots=True)
class GitRef:
    """A parsed git source.

    Attributes:
        remote: the URL git is given, without fragment and query (may hold credentials).
        ref: branch, tag, full ref name or commit sha; None means the remote's default branch.
        subdir: the normalised directory inside the repository ("" = the root).
        checksum: an expected commit sha (prefix) from ``?checksum=``/``?commit=``.
        keep_git_dir: ``?keep-git-dir`` from the query, None when absent.
        submodules: ``?submodules=`` from the query, None when absent (= fetch submodules).
        mtime: ``?mtime=`` (``checkout`` or ``commit``), "" when absent.
        fetch_by_commit: ``?fetch-by-commit``: trust ``checksum`` as the commit.
        unencrypted: the transport is ``http://`` or ``git://``.
    """

    remote: str
    ref: str | None = None
    subdir: str = ""
    checksum: str | None = None
    keep_git_dir: bool | None = None
    submodules: bool | None = None
    mtime: str = ""
    fetch_by_commit: bool = False
    unencrypted: bool = False

    @property
    def short_name(self) -> str:
        """The repository's directory name (``repo`` for ``…/repo.git``)."""
        last = self.remote.rstrip("/").split("/")[-1]
        last = last.rsplit(":", 1)[-1]
        return last.removesuffix(".git")


def _clean_subdir(subdir: str) -> str:
    # Go's path.Join("/", subdir) with the leading "/" trimmed: ".." can never climb above "/".
    parts: list[str] = []
    for part in subdir.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/".join(parts)


def _split_fragment(fragment: str) -> tuple[str, str]:
    ref, _, subdir = fragment.partition(":")
    return ref, _clean_subdir(subdir)


def _parse_query(raw: str) -> dict[str, list[str]]:
    # Go's url.ParseQuery as url.Query() uses it: pairs split on "&", a pair containing ";" is
    # dropped, "+" means space.
    values: dict[str, list[str]] = {}
    for pair in raw.split("&"):
        if not pair or ";" in pair:
            continue
        key, _, value = pair.partition("=")
        values.setdefault(urllib.parse.unquote_plus(key), []).append(
            urllib.parse.unquote_plus(value)
        )
    return values


def _fail(message: str) -> DockerfileError:
    return DockerfileError(message)


def _parse_bool(key: str, value: str | None) -> bool:
    if value is None:
        return True
    lowered = value
    if lowered in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if lowered in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise _fail(f"invalid {key} value: {value!r}")


def _apply_query(ref: GitRef, query: dict[str, list[str]], fragment_subdir: str) -> GitRef:
    if not query:
        return ref
    git_ref = ref.ref or ""
    subdir_raw: str | None = None
    tag = branch = ""
    updates: dict[str, Any] = {}
    for key in sorted(query):
        vals = query[key]
        if len(vals) > 1:
            raise _fail(f"query {key!r} has multiple values")
        value: str | None = vals[0] if vals else None
        if not value:
            if key not in _FLAG_KEYS:
                raise _fail(f"query {key!r} has no value")
            value = None
        if key == "ref":
            assert value is not None
            if git_ref and git_ref != value:
                raise _fail(f"ref conflicts: {git_ref!r} vs {value!r}")
            git_ref = value
        elif key == "tag":
            assert value is not None
            tag = value
        elif key == "branch":
            assert value is not None
            branch = value
        elif key == "subdir":
            assert value is not None
            if fragment_subdir and fragment_subdir != value:
                raise _fail(f"subdir conflicts: {fragment_subdir!r} vs {value!r}")
            subdir_raw = value
        elif key in ("checksum", "commit"):
            updates["checksum"] = value
        elif key == "keep-git-dir":
            updates["keep_git_dir"] = _parse_bool(key, value)
        elif key == "submodules":
            updates["submodules"] = _parse_bool(key, value)
        elif key == "mtime":
            if value not in ("checkout", "commit"):
                raise _fail(f'invalid mtime value: {value!r} (must be "checkout" or "commit")')
            updates["mtime"] = value
        elif key == "fetch-by-commit":
            updates["fetch_by_commit"] = _parse_bool(key, value)
        else:
            raise _fail(f"unexpected query {key!r}")
    if tag:
        if not tag.startswith("refs/tags/"):
            tag = "refs/tags/" + tag
        if git_ref and git_ref != tag:
            raise _fail(f"ref conflicts: {git_ref!r} vs {tag!r}")
        git_ref = tag
    if branch:
        if tag:
            raise _fail("branch conflicts with tag")
        if not branch.startswith("refs/heads/"):
            branch = "refs/heads/" + branch
        if git_ref and git_ref != branch:
            raise _fail(f"ref conflicts: {git_ref!r} vs {branch!r}")
        git_ref = branch
    if subdir_raw is not None:
        updates["subdir"] = _clean_subdir(subdir_raw)
    return replace(ref, ref=git_ref or None, **updates)


def _split_url(s: str) -> tuple[str, str, str | None, str | None] | None:
    """Split a ``scheme://`` URL into (scheme, remote, query, fragment), as Go's url.Parse."""
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in s):
        return None  # Go: "invalid control character in URL"
    rest, hash_sign, fragment = s.partition("#")
    rest, qmark, query = rest.partition("?")
    scheme, _, after = rest.partition("://")
    try:
        fragment = urllib.parse.unquote(fragment, errors="strict")
    except UnicodeDecodeError:
        return None
    return (
        scheme.lower(),
        scheme.lower() + "://" + after,
        query if qmark else None,
        fragment if hash_sign else None,
    )


def parse_git_ref(s: str) -> GitRef | None:
    """Parse an ``ADD`` source as a git URL, the way the Dockerfile frontend does.

    Args:
        s: the ``ADD`` source string.

    Returns:
        The parsed reference, or None when ``s`` is not a git URL (a local path, an HTTP
        download, ``github.com/…`` without a scheme, which ``ADD`` treats as a local path).

    Raises:
        DockerfileError: ``s`` is a git URL but its query or ref is invalid.
    """
    if s.startswith("./") or s.startswith("../"):
        return None
    proto = _PROTO.match(s)
    if proto is not None:
        parts = _split_url(s)
        if parts is None:
            return None
        scheme, remote, raw_query, fragment = parts
        if scheme not in _SUPPORTED_PROTOS:
            return None
        if scheme in ("http", "https"):
            path = urllib.parse.unquote(urllib.parse.urlsplit(remote).path)
            if not path.endswith(".git"):
                return None
    else:
        scp = _SCP.match(s)
        if scp is None:
            return None
        user, host, path, raw_query, fragment = scp.groups()
        scheme = "ssh"
        remote = f"{user}@{host}:{path}"
    ref_name, subdir = _split_fragment(fragment) if fragment else ("", "")
    gitref = GitRef(
        remote=remote,
        ref=ref_name or None,
        subdir=subdir,
        unencrypted=scheme in ("http", "git"),
    )
    query = _parse_query(raw_query) if raw_query else {}
    gitref = _apply_query(gitref, query, subdir)
    if gitref.ref is not None and gitref.ref.startswith("-"):
        raise _fail(f"invalid git ref {gitref.ref!r}")
    return gitref


def is_git_url(s: str) -> bool:
    """Tell whether ``ADD`` treats ``s`` as a git source (even an invalid one).

    Args:
        s: the ``ADD`` source string.

    Returns:
        True when :func:`parse_git_ref` recognises a git URL, valid or not.
    """
    try:
        return parse_git_ref(s) is not None
    except DockerfileError:
        return True


def is_full_commit(ref: str | None) -> bool:
    """Tell whether ``ref`` is a full commit sha (40 hex for sha1, 64 for sha256 repos).

    Like BuildKit, only lower-case hex counts.
    """
    return ref is not None and len(ref) in (40, 64) and _LOWER_HEX.match(ref) is not None


def validate_checksum(checksum: str) -> str:
    """Validate a git ``--checksum`` (a commit sha or a prefix of one).

    Raises:
        SourceError: it is not hex.
    """
    if not _HEX.match(checksum):
        raise SourceError(f"invalid checksum {checksum} for Git URL, expected hex commit hash")
    return checksum


def with_add_flags(
    gitref: GitRef, *, keep_git_dir: bool | None = None, checksum: str | None = None
) -> GitRef:
    """Merge ``ADD --keep-git-dir`` / ``--checksum`` into a parsed URL, as the frontend does.

    Args:
        gitref: the parsed URL.
        keep_git_dir: the ``--keep-git-dir`` flag, None when not given.
        checksum: the ``--checksum`` flag, None when not given.

    Returns:
        The reference with ``keep_git_dir`` and ``checksum`` settled.

    Raises:
        DockerfileError: the flags contradict the URL's query.
    """
    if (
        keep_git_dir is not None
        and gitref.keep_git_dir is not None
        and keep_git_dir != gitref.keep_git_dir
    ):
        raise _fail("inconsistent keep-git-dir configuration")
    if checksum and gitref.checksum and checksum != gitref.checksum:
        raise _fail(f"checksum mismatch {checksum!r} != {gitref.checksum!r}")
    keep = gitref.keep_git_dir if gitref.keep_git_dir is not None else keep_git_dir
    return replace(gitref, keep_git_dir=keep, checksum=gitref.checksum or checksum or None)


@dataclass(frozen=True, slots=True)
class GitResolution:
    """What a ref points at on the remote.

    Attributes:
        ref: the full ref that matched (``refs/heads/main``), or the commit sha itself.
        sha: the object the ref names (an annotated tag's own sha for such tags).
        commit: the commit to check out (the tag peeled).
    """

    ref: str
    sha: str
    commit: str


def cache_key(
    gitref: GitRef,
    resolution: GitResolution | str,
    keep_git_dir: bool,
    checksum: str | None = None,
) -> str:
    """BuildKit's git source cache key string (``shaToCacheKey``).

    Args:
        gitref: the parsed source.
        resolution: the resolution, or a full commit sha when ``gitref.ref`` is one (plan time).
        keep_git_dir: ``ADD --keep-git-dir``.
        checksum: an expected commit sha prefix (``--checksum``), verified here.

    Returns:
        ``<sha>[.git[#<ref>]][:<subdir>][(skip-submodules)][(mtime=…)]``.

    Raises:
        SourceError: the checksum is malformed or does not match.
    """
    if isinstance(resolution, str):
        if not is_full_commit(resolution):
            raise SourceError(f"invalid commit sha {resolution!r}")
        # A commit given as the ref is its own ref in BuildKit's metadata.
        resolution = GitResolution(ref=resolution, sha=resolution, commit=resolution)
    if checksum:
        _verify_checksum(checksum, resolution)
    if is_full_commit(resolution.ref):
        sha = resolution.ref
    elif resolution.sha != resolution.commit and not keep_git_dir:
        # Without .git the tag object is invisible: key by the commit for more hits.
        sha = resolution.commit
    else:
        sha = resolution.sha
    key = sha
    if keep_git_dir:
        key += ".git"
        if resolution.ref:
            key += "#" + resolution.ref
    if gitref.subdir:
        key += ":" + gitref.subdir
    if gitref.submodules is False:
        key += "(skip-submodules)"
    if gitref.mtime and gitref.mtime != "checkout":
        key += "(mtime=" + gitref.mtime + ")"
    return key


def key_preimage(
    gitref: GitRef,
    commit: GitResolution | str,
    keep_git_dir: bool,
    checksum: str | None = None,
) -> dict[str, Any]:
    """The preimage of a git source's cache key, for the planner to hash.

    BuildKit hashes ``"buildkit.source.v0:" + shaToCacheKey(...)``; this returns that string
    under ``"Key"`` with the type tag, so two ADDs of the same commit share a key whatever
    remote they name.

    Args:
        gitref: the parsed source.
        commit: the resolution, or a full commit sha (plan time with a pinned ref).
        keep_git_dir: ``ADD --keep-git-dir``.
        checksum: the expected commit sha prefix, verified against the commit.

    Returns:
        ``{"Type": "buildkit.source.v0", "Key": <cache key string>}``.

    Raises:
        SourceError: the checksum is malformed or does not match.
    """
    return {"Type": "buildkit.source.v0", "Key": cache_key(gitref, commit, keep_git_dir, checksum)}


def _verify_checksum(checksum: str, resolution: GitResolution) -> None:
    validate_checksum(checksum)
    candidates = {resolution.sha, resolution.commit}
    if is_full_commit(resolution.ref):
        candidates.add(resolution.ref)
    if not any(c.startswith(checksum) for c in candidates):
        got = resolution.sha
        if resolution.commit != resolution.sha:
            got += " or " + resolution.commit
        raise SourceError(f"expected checksum to match {checksum}, got {got}")


# --- running git -------------------------------------------------------------------------------

_PASSTHROUGH_ENV = (
    "PATH",
    "SSH_AUTH_SOCK",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
)


def _redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":xxxxx@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@contextlib.contextmanager
def _git_env() -> Iterator[dict[str, str]]:
    # A fresh HOME and no system config: the user's ~/.gitconfig (url rewrites, credential
    # helpers, hooks paths) must not change what a build fetches.
    with tempfile.TemporaryDirectory(prefix="nbbuild-git-home-") as home:
        env = {k: os.environ[k] for k in _PASSTHROUGH_ENV if k in os.environ}
        env.update(
            HOME=home,
            XDG_CONFIG_HOME=home,
            GIT_CONFIG_NOSYSTEM="1",
            GIT_CONFIG_GLOBAL=os.devnull,
            GIT_TERMINAL_PROMPT="0",
            GIT_ASKPASS="",
            SSH_ASKPASS="",
            GCM_INTERACTIVE="never",
            LC_ALL="C",
        )
        yield env


def _run(
    git: str,
    args: Sequence[str],
    env: dict[str, str],
    *,
    cwd: Path | None = None,
    timeout: float | None = None,
    what: str,
) -> str:
    try:
        proc = subprocess.run(
            [git, *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise SourceError(f"{what}: git executable {git!r} not found") from None
    except subprocess.TimeoutExpired:
        raise SourceError(f"{what}: git timed out after {timeout}s") from None
    if proc.returncode != 0:
        detail = proc.stderr.strip() or proc.stdout.strip()
        # git may echo the remote URL: never let a password from it reach an error message.
        detail = _URL_PASSWORD.sub(r"://\1:xxxxx@", detail)
        raise SourceError(f"{what}: {detail}")
    return proc.stdout


def _default_branch(git: str, remote: str, env: dict[str, str], timeout: float | None) -> str:
    out = _run(
        git,
        ["ls-remote", "--symref", "--", remote, "HEAD"],
        env,
        timeout=timeout,
        what=f"error fetching default branch for repository {_redact(remote)}",
    )
    match = _DEFAULT_BRANCH.search(out)
    if match is None:
        raise SourceError(f"could not find default branch for repository: {_redact(remote)}")
    ref = match.group(1)
    if ref.startswith("-"):
        raise SourceError(f"invalid git ref {ref!r}")
    return ref


def resolve_ref(gitref: GitRef, *, git: str = "git", timeout: float | None = None) -> GitResolution:
    """Resolve ``gitref.ref`` on the remote with ``git ls-remote``, as BuildKit does.

    A full commit sha is not looked up. Otherwise branches win over tags, an annotated tag is
    peeled, and ``gitref.checksum`` (if any) must prefix the result.

    Args:
        gitref: the source; its remote may be a local path or ``file://`` URL.
        git: the git executable.
        timeout: seconds to allow each git command.

    Returns:
        The resolution.

    Raises:
        SourceError: git fails, the ref does not exist, or the checksum does not match.
    """
    if gitref.checksum:
        validate_checksum(gitref.checksum)
    ref = gitref.ref
    if ref is not None and ref.startswith("-"):
        raise SourceError(f"invalid git ref {ref!r}")
    if is_full_commit(ref):
        assert ref is not None
        resolution = GitResolution(ref=ref, sha=ref, commit=ref)
        if gitref.checksum:
            _verify_checksum(gitref.checksum, resolution)
        return resolution
    with _git_env() as env:
        if ref is None:
            ref = _default_branch(git, gitref.remote, env, timeout)
        out = _run(
            git,
            ["ls-remote", "--", gitref.remote, ref, ref + "^{}"],
            env,
            timeout=timeout,
            what=f"failed to fetch remote {_redact(gitref.remote)}",
        )
    bare = ref.removeprefix("refs/")
    partial_ref = "refs/" + bare
    head_ref = "refs/heads/" + ref.removeprefix("refs/heads/")
    tag_ref = "refs/tags/" + ref.removeprefix("refs/tags/")
    sha = head_sha = tag_sha = peeled = used = ""
    for line in out.splitlines():
        line_sha, _, line_ref = line.partition("\t")
        if line_ref == head_ref:
            head_sha = line_sha
        elif line_ref == tag_ref:
            tag_sha = line_sha
        elif line_ref == tag_ref + "^{}":
            peeled = line_sha
        elif line_ref == partial_ref:
            sha, used = line_sha, line_ref
    # git checkout prefers a branch when a name is both a branch and a tag.
    if not sha and head_sha:
        sha, used = head_sha, head_ref
    if sha:
        peeled = ""
    if not sha and tag_sha:
        sha, used = tag_sha, tag_ref
    if not sha:
        raise SourceError(f"repository does not contain ref {ref}, output: {out!r}")
    if not is_full_commit(sha):
        raise SourceError(f"invalid commit sha {sha!r}")
    resolution = GitResolution(ref=used, sha=sha, commit=peeled or sha)
    if gitref.checksum:
        _verify_checksum(gitref.checksum, resolution)
    return resolution


def resolve(gitref: GitRef, *, git: str = "git", timeout: float | None = None) -> str:
    """Resolve ``gitref`` to the commit sha it names (annotated tags peeled).

    Args:
        gitref: the source; its remote may be a local path or ``file://`` URL.
        git: the git executable.
        timeout: seconds to allow each git command.

    Returns:
        The full commit sha.

    Raises:
        SourceError: see :func:`resolve_ref`.
    """
    return resolve_ref(gitref, git=git, timeout=timeout).commit


def _check_subdir(root: Path, subdir: str) -> Path:
    # Every element must be a directory in its own right: a symlink anywhere on the way could
    # point outside the checkout (CVE-2026-33748).
    current = root
    walked = ""
    for part in subdir.split("/"):
        walked = f"{walked}/{part}" if walked else part
        current = current / part
        try:
            st = current.lstat()
        except OSError:
            raise SourceError(
                f"invalid subdir {subdir}: failed to lstat {walked!r}: no such file or directory"
            ) from None
        if not stat.S_ISDIR(st.st_mode):
            raise SourceError(
                f"invalid subdir {subdir}: git subpath {subdir!r} contains non-directory {walked!r}"
            )
    return current


def _move_entries(src: Path, dest: Path) -> None:
    for entry in os.listdir(src):
        # shutil.move renames when it can and otherwise copies symlinks as symlinks.
        shutil.move(os.fspath(src / entry), os.fspath(dest / entry))


def _fetch_commit(
    git: str,
    gitref: GitRef,
    commit: str,
    repo: Path,
    env: dict[str, str],
    timeout: float | None,
) -> None:
    what = f"failed to fetch remote {_redact(gitref.remote)}"
    # Like BuildKit's git client: a shallow fetch of the commit first; servers that cannot
    # serve an unadvertised sha get the ref it was resolved from; transports that cannot do
    # shallow fetches at all (git's "dumb" HTTP) get a full fetch.
    attempts: list[list[str]] = [["--depth=1", commit]]
    if gitref.ref and not is_full_commit(gitref.ref):
        attempts.append(["--depth=1", gitref.ref])
    attempts.append(["+refs/heads/*:refs/nbbuild/heads/*", "+refs/tags/*:refs/nbbuild/tags/*"])
    last: SourceError | None = None
    for extra in attempts:
        refspec = [a for a in extra if not a.startswith("--")]
        flags = [a for a in extra if a.startswith("--")]
        try:
            _run(
                git,
                ["fetch", *flags, "--no-tags", "--", gitref.remote, *refspec],
                env,
                cwd=repo,
                timeout=timeout,
                what=what,
            )
        except SourceError as exc:
            last = exc
            continue
        if not flags:
            # A full fetch brings every branch and tag: point FETCH_HEAD at the commit itself
            # (this fails, as it should, when the remote does not have it).
            _run(git, ["update-ref", "FETCH_HEAD", commit], env, cwd=repo, timeout=timeout, what=what)
        break
    else:
        assert last is not None
        raise last
    got = _run(
        git,
        ["rev-parse", "--verify", "FETCH_HEAD^{commit}"],
        env,
        cwd=repo,
        timeout=timeout,
        what=what,
    ).strip()
    if got != commit:
        raise SourceError(
            f"{what}: {gitref.ref or 'HEAD'} is now {got}, expected {commit} (the ref moved)"
        )


def checkout(
    gitref: GitRef,
    commit: str,
    dest_dir: Path | str,
    keep_git_dir: bool,
    *,
    git: str = "git",
    timeout: float | None = None,
) -> None:
    """Check out ``commit`` of ``gitref.remote`` into ``dest_dir``.

    The commit is fetched shallowly into a fresh repository; submodules are updated unless
    ``?submodules=false``; with ``gitref.subdir`` only that directory's contents land in
    ``dest_dir`` (every element of the subdir must be a real directory, not a symlink). With
    ``keep_git_dir`` and no subdir, ``dest_dir/.git`` holds the shallow repository with
    ``origin`` set to the remote (credentials redacted), as in BuildKit.

    Args:
        gitref: the source.
        commit: the full commit sha to check out (from :func:`resolve`).
        dest_dir: an empty (or missing) directory.
        keep_git_dir: ``ADD --keep-git-dir``.
        git: the git executable.
        timeout: seconds to allow each git command.

    Raises:
        SourceError: git fails, the checksum does not match, or the subdir is invalid.
    """
    if not is_full_commit(commit):
        raise SourceError(f"invalid commit sha {commit!r}")
    if gitref.checksum:
        _verify_checksum(gitref.checksum, GitResolution(ref=commit, sha=commit, commit=commit))
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise SourceError(f"checkout destination {dest} is not empty")
    try:
        _checkout_into(gitref, commit, dest, keep_git_dir and not gitref.subdir, git, timeout)
    except BaseException:
        # The destination was empty: leave it so, rather than half a checkout.
        _empty_dir(dest)
        raise


def _empty_dir(path: Path) -> None:
    for entry in path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _checkout_into(
    gitref: GitRef, commit: str, dest: Path, keep: bool, git: str, timeout: float | None
) -> None:
    init = ["-c", "init.defaultBranch=master", "init", "-q"]
    if len(commit) == 64:
        init.append("--object-format=sha256")
    with (
        _git_env() as env,
        tempfile.TemporaryDirectory(prefix=".nbbuild-git-", dir=dest.parent) as tmp,
    ):
        # Without .git the repository lives beside the worktree, as BuildKit keeps it in a
        # separate bare repo: a subdir can then never name the repository's internals.
        repo = dest if keep else Path(tmp) / "repo"
        work = dest if keep else Path(tmp) / "work"
        repo.mkdir(exist_ok=True)
        work.mkdir(exist_ok=True)
        git_dir = ["--git-dir", os.fspath(repo / ".git"), "--work-tree", os.fspath(work)]
        what = f"failed to checkout remote {_redact(gitref.remote)}"
        _run(git, init, env, cwd=repo, timeout=timeout, what=what)
        _fetch_commit(git, gitref, commit, repo, env, timeout)
        _run(
            git,
            [*git_dir, "-c", "advice.detachedHead=false", "checkout", "-q", "--detach", commit],
            env,
            cwd=work,
            timeout=timeout,
            what=what,
        )
        if gitref.submodules is not False and (work / ".gitmodules").exists():
            _run(
                git,
                [*git_dir, "submodule", "update", "--init", "--recursive", "--depth=1"],
                env,
                cwd=work,
                timeout=timeout,
                what=f"failed to update submodules for {_redact(gitref.remote)}",
            )
        if keep:
            _run(
                git,
                ["remote", "add", "origin", _redact(gitref.remote)],
                env,
                cwd=work,
                timeout=timeout,
                what=what,
            )
            if gitref.ref and not is_full_commit(gitref.ref) and gitref.ref.startswith("refs/"):
                _run(git, ["update-ref", gitref.ref, commit], env, cwd=work, what=what)
            _run(git, ["reflog", "expire", "--all", "--expire=now"], env, cwd=work, what=what)
            (work / ".git" / "FETCH_HEAD").unlink(missing_ok=True)
            return
        source = _check_subdir(work, gitref.subdir) if gitref.subdir else work
        _move_entries(source, dest)
