"""Git sources: URL parsing (BuildKit's tables), keys, ls-remote resolution, checkout."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from engine.errors import DockerfileError, SourceError
from engine.sources.git import (
    GitRef,
    GitResolution,
    cache_key,
    checkout,
    is_full_commit,
    is_git_url,
    key_preimage,
    parse_git_ref,
    resolve,
    resolve_ref,
    with_add_flags,
)

if TYPE_CHECKING:
    from conftest import GitRunner, LocalRepo

# --- parsing: frontend/dockerfile/dfgitutil TestParseGitRef, adapted --------------------------


@pytest.mark.parametrize(
    ("src", "expected"),
    [
        ("https://example.com/", None),
        ("https://example.com/foo", None),
        ("https://example.com/foo.git", {"remote": "https://example.com/foo.git"}),
        (
            "https://example.com/foo.git#deadbeef",
            {"remote": "https://example.com/foo.git", "ref": "deadbeef"},
        ),
        (
            "https://example.com/foo.git#release/1.2",
            {"remote": "https://example.com/foo.git", "ref": "release/1.2"},
        ),
        ("https://example.com/foo.git/", None),
        ("https://example.com/foo.git.bar", None),
        ("git://example.com/foo", {"remote": "git://example.com/foo", "unencrypted": True}),
        (
            "http://example.com/foo.git",
            {"remote": "http://example.com/foo.git", "unencrypted": True},
        ),
        # ADD treats scheme-less github.com/… as a local path
        ("github.com/moby/buildkit", None),
        ("github.com/moby/buildkit#master", None),
        ("custom.xyz/moby/buildkit.git", None),
        ("https://github.com/moby/buildkit", None),
        (
            "https://github.com/moby/buildkit.git",
            {"remote": "https://github.com/moby/buildkit.git"},
        ),
        (
            "https://foo:bar@github.com/moby/buildkit.git",
            {"remote": "https://foo:bar@github.com/moby/buildkit.git"},
        ),
        ("git@github.com:moby/buildkit", {"remote": "git@github.com:moby/buildkit"}),
        ("git@github.com:moby/buildkit.git", {"remote": "git@github.com:moby/buildkit.git"}),
        (
            "git@bitbucket.org:atlassianlabs/atlassian-docker.git",
            {"remote": "git@bitbucket.org:atlassianlabs/atlassian-docker.git"},
        ),
        (
            "https://github.com/foo/bar.git#baz/qux:quux/quuz",
            {"remote": "https://github.com/foo/bar.git", "ref": "baz/qux", "subdir": "quux/quuz"},
        ),
        ("http://github.com/docker/docker.git:#branch", None),
        (
            "https://github.com/docker/docker.git#:myfolder",
            {"remote": "https://github.com/docker/docker.git", "subdir": "myfolder"},
        ),
        ("./.git", None),
        (".git", None),
        ("../repo.git", None),
        ("ftp://example.com/repo.git", None),
        ("file:///tmp/repo.git", None),
        ("plain/path", None),
        (
            "https://github.com/docker/docker.git?ref=v1.0.0&subdir=/subdir",
            {"remote": "https://github.com/docker/docker.git", "ref": "v1.0.0", "subdir": "subdir"},
        ),
        (
            "https://github.com/moby/buildkit.git?subdir=/subdir#v1.0.0",
            {"remote": "https://github.com/moby/buildkit.git", "ref": "v1.0.0", "subdir": "subdir"},
        ),
        (
            "https://github.com/moby/buildkit.git?tag=v1.0.0",
            {"remote": "https://github.com/moby/buildkit.git", "ref": "refs/tags/v1.0.0"},
        ),
        (
            "https://github.com/moby/buildkit.git?branch=v1.0",
            {"remote": "https://github.com/moby/buildkit.git", "ref": "refs/heads/v1.0"},
        ),
        (
            "git@github.com:moby/buildkit.git?subdir=/subdir#v1.0.0",
            {"remote": "git@github.com:moby/buildkit.git", "ref": "v1.0.0", "subdir": "subdir"},
        ),
        (
            "https://github.com/moby/buildkit.git?mtime=commit",
            {"remote": "https://github.com/moby/buildkit.git", "mtime": "commit"},
        ),
        (
            "https://github.com/moby/buildkit.git?fetch-by-commit=true&checksum=deadbeef#refs/heads/branch",
            {
                "remote": "https://github.com/moby/buildkit.git",
                "ref": "refs/heads/branch",
                "checksum": "deadbeef",
                "fetch_by_commit": True,
            },
        ),
        (
            "https://github.com/moby/buildkit.git?fetch-by-commit&checksum=deadbeef",
            {
                "remote": "https://github.com/moby/buildkit.git",
                "checksum": "deadbeef",
                "fetch_by_commit": True,
            },
        ),
        (
            "https://github.com/moby/buildkit.git?keep-git-dir&submodules=false",
            {
                "remote": "https://github.com/moby/buildkit.git",
                "keep_git_dir": True,
                "submodules": False,
            },
        ),
        # scheme is case-insensitive for git URLs
        ("HTTPS://example.com/foo.git", {"remote": "https://example.com/foo.git"}),
        # source/git TestNewGitIdentifier rows
        (
            "ssh://root@subdomain.example.hostname:2222/root/my/really/weird/path/foo.git#main",
            {
                "remote": "ssh://root@subdomain.example.hostname:2222/root/my/really/weird/path/foo.git",
                "ref": "main",
            },
        ),
        (
            "git://github.com/user/repo.git#mybranch:mydir/mysubdir/",
            {
                "remote": "git://github.com/user/repo.git",
                "ref": "mybranch",
                "subdir": "mydir/mysubdir",
                "unencrypted": True,
            },
        ),
        (
            "ssh://foo%40barcorp.com@github.com/user/repo.git#mybranch:mydir/mysubdir/",
            {
                "remote": "ssh://foo%40barcorp.com@github.com/user/repo.git",
                "ref": "mybranch",
                "subdir": "mydir/mysubdir",
            },
        ),
    ],
)
def test_parse_git_ref(src: str, expected: dict[str, Any] | None) -> None:
    got = parse_git_ref(src)
    if expected is None:
        assert got is None
        assert not is_git_url(src)
    else:
        assert got == GitRef(**expected)
        assert is_git_url(src)


# CVE-2026-33748: subdirs are cleaned against "/" so they can never climb out of the checkout
# (source/git/identifier_test.go rows).
@pytest.mark.parametrize(
    ("src", "ref", "subdir"),
    [
        ("https://github.com/user/repo.git#main:../../escape", "main", "escape"),
        ("https://github.com/user/repo.git#main:dir/../../escape", "main", "escape"),
        ("https://github.com/user/repo.git#main:/absolute/path", "main", "absolute/path"),
        ("https://github.com/user/repo.git#main:../", "main", ""),
        ("ssh://github.com/user/repo.git#main:../../escape", "main", "escape"),
        ("ssh://github.com/user/repo.git#main:/absolute/path", "main", "absolute/path"),
        ("git@github.com:user/repo.git#main:../../escape", "main", "escape"),
        ("git@github.com:user/repo.git#main:/absolute/path", "main", "absolute/path"),
        ("https://github.com/user/repo.git#main:a/./b//c/", "main", "a/b/c"),
        ("https://github.com/user/repo.git?subdir=../../etc", None, "etc"),
        ("https://github.com/user/repo.git#main:%2e%2e/%2e%2e/x", "main", "x"),
    ],
)
def test_subdir_escape_is_normalised(src: str, ref: str | None, subdir: str) -> None:
    got = parse_git_ref(src)
    assert got is not None
    assert got.ref == ref
    assert got.subdir == subdir
    assert ".." not in got.subdir.split("/")


@pytest.mark.parametrize(
    ("src", "message"),
    [
        ("https://github.com/moby/buildkit.git?ref=v1.0.0#v1.2.3", "ref conflicts"),
        ("https://github.com/moby/buildkit.git?ref=v1.0.0&tag=v1.2.3", "ref conflicts"),
        (
            "https://github.com/moby/buildkit.git?tag=v1.0.0&branch=v1.0",
            "branch conflicts with tag",
        ),
        ("https://github.com/moby/buildkit.git?mtime=invalid", "invalid mtime value"),
        ("https://github.com/moby/buildkit.git?fetch-by-commit=invalid", "invalid fetch-by-commit"),
        ("https://github.com/moby/buildkit.git?invalid=123", "unexpected query 'invalid'"),
        ("https://github.com/moby/buildkit.git?ref=a&ref=b", "has multiple values"),
        ("https://github.com/moby/buildkit.git?ref=", "has no value"),
        ("https://github.com/moby/buildkit.git?subdir=a#main:b", "subdir conflicts"),
        # refs that git would read as options
        ("https://github.com/moby/buildkit.git#--upload-pack=evil", "invalid git ref"),
        ("https://github.com/moby/buildkit.git#-x:dir", "invalid git ref"),
        ("git@github.com:moby/buildkit.git?ref=-x", "invalid git ref"),
    ],
)
def test_parse_git_ref_errors(src: str, message: str) -> None:
    with pytest.raises(DockerfileError, match=message):
        parse_git_ref(src)
    assert is_git_url(src)  # still a git URL: ADD must not fall back to HTTP or a local path


def test_short_name() -> None:
    for src, name in [
        ("https://example.com/org/foo.git", "foo"),
        ("git@github.com:moby/buildkit.git", "buildkit"),
        ("git@github.com:buildkit", "buildkit"),
        ("git://example.com/foo", "foo"),
    ]:
        ref = parse_git_ref(src)
        assert ref is not None
        assert ref.short_name == name


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("a" * 40, True),
        ("0123456789abcdef0123456789abcdef01234567", True),
        ("a" * 64, True),
        ("A" * 40, False),
        ("a" * 39, False),
        ("a" * 41, False),
        ("g" * 40, False),
        ("main", False),
        ("", False),
        (None, False),
    ],
)
def test_is_full_commit(ref: str | None, expected: bool) -> None:
    assert is_full_commit(ref) is expected


def test_with_add_flags() -> None:
    base = parse_git_ref("https://h/r.git#main")
    assert base is not None
    merged = with_add_flags(base, keep_git_dir=True, checksum="abc")
    assert merged.keep_git_dir is True
    assert merged.checksum == "abc"
    q = parse_git_ref("https://h/r.git?keep-git-dir=false&checksum=abc")
    assert q is not None
    with pytest.raises(DockerfileError, match="inconsistent keep-git-dir"):
        with_add_flags(q, keep_git_dir=True)
    with pytest.raises(DockerfileError, match="checksum mismatch"):
        with_add_flags(q, checksum="def")
    assert with_add_flags(q, checksum="abc").checksum == "abc"


# --- cache keys (shaToCacheKey) ----------------------------------------------------------------

C1 = "1" * 40
C2 = "2" * 40
TAG = "3" * 40


def test_cache_key_pinned_commit() -> None:
    ref = GitRef(remote="https://h/r.git", ref=C1)
    assert cache_key(ref, C1, keep_git_dir=False) == C1
    assert cache_key(ref, C1, keep_git_dir=True) == f"{C1}.git#{C1}"
    sub = replace(ref, subdir="a/b")
    assert cache_key(sub, C1, keep_git_dir=False) == f"{C1}:a/b"
    assert cache_key(sub, C1, keep_git_dir=True) == f"{C1}.git#{C1}:a/b"
    opts = replace(sub, submodules=False, mtime="commit")
    assert cache_key(opts, C1, keep_git_dir=False) == f"{C1}:a/b(skip-submodules)(mtime=commit)"
    assert cache_key(replace(ref, mtime="checkout"), C1, keep_git_dir=False) == C1


def test_cache_key_ignores_remote() -> None:
    a = GitRef(remote="https://a/r.git", ref=C1)
    b = GitRef(remote="git@b:r.git", ref=C1)
    assert key_preimage(a, C1, False) == key_preimage(b, C1, False)
    assert key_preimage(a, C1, False) != key_preimage(a, C2, False)
    assert key_preimage(a, C1, False) == {"Type": "buildkit.source.v0", "Key": C1}


def test_cache_key_annotated_tag() -> None:
    ref = GitRef(remote="https://h/r.git", ref="v1")
    res = GitResolution(ref="refs/tags/v1", sha=TAG, commit=C1)
    # Without .git the tag object is invisible, so the commit keys it.
    assert cache_key(ref, res, keep_git_dir=False) == C1
    assert cache_key(ref, res, keep_git_dir=True) == f"{TAG}.git#refs/tags/v1"


def test_cache_key_checksum() -> None:
    ref = GitRef(remote="https://h/r.git", ref=C1)
    assert cache_key(ref, C1, False, checksum="1111") == C1
    with pytest.raises(SourceError, match=f"expected checksum to match 2222, got {C1}"):
        cache_key(ref, C1, False, checksum="2222")
    with pytest.raises(SourceError, match="invalid checksum xyz for Git URL"):
        cache_key(ref, C1, False, checksum="xyz")
    with pytest.raises(SourceError, match="invalid commit sha"):
        cache_key(ref, "main", False)


# --- resolve against a local repository --------------------------------------------------------


def test_resolve_branch_tag_default(local_repo: LocalRepo, run_git: GitRunner) -> None:
    repo = local_repo.path
    for ref, expected_rev in [
        ("main", "main"),
        ("dev", "dev"),
        ("refs/heads/dev", "dev"),
        ("v1", "v1"),
        ("v2", "v2^{commit}"),
        ("refs/tags/v2", "v2^{commit}"),
        (None, "HEAD"),
    ]:
        gitref = GitRef(remote=str(repo), ref=ref)
        assert resolve(gitref) == run_git(repo, "rev-parse", expected_rev), ref
    assert resolve(GitRef(remote=repo.as_uri(), ref="dev")) == local_repo.dev


def test_resolve_ref_details(local_repo: LocalRepo, run_git: GitRunner) -> None:
    repo = local_repo.path
    tag_object = run_git(repo, "rev-parse", "v2")
    res = resolve_ref(GitRef(remote=str(repo), ref="v2"))
    assert res == GitResolution(ref="refs/tags/v2", sha=tag_object, commit=local_repo.first)
    assert resolve_ref(GitRef(remote=str(repo), ref="main")).ref == "refs/heads/main"
    assert resolve_ref(GitRef(remote=str(repo))).ref == "refs/heads/main"


def test_resolve_branch_wins_over_tag(local_repo: LocalRepo, run_git: GitRunner) -> None:
    repo = local_repo.path
    run_git(repo, "tag", "dev", local_repo.first)
    res = resolve_ref(GitRef(remote=str(repo), ref="dev"))
    assert res.commit == local_repo.dev
    assert res.ref == "refs/heads/dev"


def test_resolve_full_commit_is_not_looked_up(tmp_path: Path) -> None:
    # The remote does not exist: a full sha must not need it.
    assert resolve(GitRef(remote=str(tmp_path / "nope"), ref=C1)) == C1


def test_resolve_errors(local_repo: LocalRepo, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not contain ref nosuch"):
        resolve(GitRef(remote=str(local_repo.path), ref="nosuch"))
    with pytest.raises(SourceError, match="error fetching default branch"):
        resolve(GitRef(remote=str(tmp_path / "missing")))
    with pytest.raises(SourceError, match="invalid git ref"):
        resolve(GitRef(remote=str(local_repo.path), ref="--upload-pack=touch /tmp/x"))


def test_resolve_checksum(local_repo: LocalRepo, run_git: GitRunner) -> None:
    repo = str(local_repo.path)
    head = local_repo.head
    assert resolve(GitRef(remote=repo, ref="main", checksum=head[:7])) == head
    with pytest.raises(SourceError, match="expected checksum to match 0000000"):
        resolve(GitRef(remote=repo, ref="main", checksum="0000000"))
    # An annotated tag matches by its object sha or its commit.
    tag_object = run_git(local_repo.path, "rev-parse", "v2")
    assert resolve(GitRef(remote=repo, ref="v2", checksum=tag_object[:10])) == local_repo.first
    assert resolve(GitRef(remote=repo, ref="v2", checksum=local_repo.first)) == local_repo.first


def test_git_ignores_user_config(
    local_repo: LocalRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A hostile ~/.gitconfig rewriting every URL must not change what is resolved.
    home = tmp_path / "home"
    home.mkdir()
    decoy = tmp_path / "decoy"
    (home / ".gitconfig").write_text(f'[url "{decoy}"]\n\tinsteadOf = {local_repo.path}\n')
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_TERMINAL_PROMPT", "1")
    assert resolve(GitRef(remote=str(local_repo.path), ref="main")) == local_repo.head


# --- checkout ----------------------------------------------------------------------------------


def tree(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            out[rel] = "-> " + os.readlink(path) if path.is_symlink() else path.read_text()
    return out


def test_checkout_whole_repo(local_repo: LocalRepo, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    gitref = GitRef(remote=str(local_repo.path), ref="main")
    checkout(gitref, resolve(gitref), dest, keep_git_dir=False)
    files = tree(dest)
    assert files["README"] == "second\n"
    assert files["app/main.py"] == "print('hi')\n"
    assert files["app/lib/util.py"] == "X = 1\n"
    assert files["applink"] == "-> app"
    assert files["escape"] == "-> " + str(tmp_path / "outside")  # kept as a link, not followed
    assert "dev.txt" not in files
    assert not (dest / ".git").exists()


def test_checkout_old_commit(local_repo: LocalRepo, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    checkout(GitRef(remote=str(local_repo.path), ref="v2"), local_repo.first, dest, False)
    assert (dest / "README").read_text() == "first\n"
    assert not (dest / "escape").exists()


def test_checkout_subdir(local_repo: LocalRepo, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    gitref = parse_git_ref("https://example.invalid/r.git#main:/app/../app")
    assert gitref is not None
    gitref = replace(gitref, remote=str(local_repo.path))
    checkout(gitref, local_repo.head, dest, keep_git_dir=False)
    assert tree(dest) == {"main.py": "print('hi')\n", "lib/util.py": "X = 1\n"}
    # keep-git-dir with a subdir keeps no .git (as BuildKit)
    dest2 = tmp_path / "out2"
    checkout(replace(gitref, subdir="app/lib"), local_repo.head, dest2, keep_git_dir=True)
    assert sorted(os.listdir(dest2)) == ["util.py"]


@pytest.mark.parametrize("subdir", ["escape", "escape/", "applink", "applink/lib", "README"])
def test_checkout_refuses_non_directory_subdir(
    local_repo: LocalRepo, tmp_path: Path, subdir: str
) -> None:
    dest = tmp_path / "out"
    gitref = parse_git_ref(f"https://example.invalid/r.git#main:{subdir}")
    assert gitref is not None
    gitref = replace(gitref, remote=str(local_repo.path))
    with pytest.raises(SourceError, match="contains non-directory"):
        checkout(gitref, local_repo.head, dest, keep_git_dir=False)
    assert os.listdir(dest) == []
    assert (tmp_path / "outside" / "secret.txt").read_text() == "secret\n"


@pytest.mark.parametrize("subdir", ["missing", ".git", "app/.git"])
def test_checkout_missing_subdir(local_repo: LocalRepo, tmp_path: Path, subdir: str) -> None:
    gitref = GitRef(remote=str(local_repo.path), ref="main", subdir=subdir)
    with pytest.raises(SourceError, match="invalid subdir"):
        checkout(gitref, local_repo.head, tmp_path / "out", keep_git_dir=False)


def test_checkout_keep_git_dir(local_repo: LocalRepo, tmp_path: Path, run_git: GitRunner) -> None:
    dest = tmp_path / "out"
    gitref = GitRef(remote=str(local_repo.path), ref="refs/heads/dev")
    checkout(gitref, local_repo.dev, dest, keep_git_dir=True)
    assert (dest / "dev.txt").read_text() == "dev\n"
    assert run_git(dest, "rev-parse", "HEAD") == local_repo.dev
    assert run_git(dest, "rev-parse", "refs/heads/dev") == local_repo.dev
    assert run_git(dest, "remote", "get-url", "origin") == str(local_repo.path)
    assert run_git(dest, "status", "--porcelain") == ""
    assert not (dest / ".git" / "FETCH_HEAD").exists()


def test_checkout_verifies_checksum_and_commit(local_repo: LocalRepo, tmp_path: Path) -> None:
    gitref = GitRef(remote=str(local_repo.path), ref="main", checksum="0000")
    with pytest.raises(SourceError, match="expected checksum to match 0000"):
        checkout(gitref, local_repo.head, tmp_path / "a", keep_git_dir=False)
    with pytest.raises(SourceError, match="invalid commit sha"):
        checkout(GitRef(remote=str(local_repo.path)), "main", tmp_path / "b", False)
    for keep in (False, True):
        dest = tmp_path / f"c{keep}"
        with pytest.raises(SourceError, match="failed to fetch remote"):
            checkout(GitRef(remote=str(local_repo.path)), "f" * 40, dest, keep)
        assert os.listdir(dest) == []  # no half checkout left behind


def test_checkout_refuses_nonempty_dest(local_repo: LocalRepo, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "x").write_text("x")
    with pytest.raises(SourceError, match="not empty"):
        checkout(GitRef(remote=str(local_repo.path)), local_repo.head, dest, False)


def test_sha256_repository(tmp_path: Path, run_git: GitRunner) -> None:
    repo = tmp_path / "s256"
    repo.mkdir()
    run_git(repo, "-c", "init.defaultBranch=main", "init", "-q", "--object-format=sha256")
    (repo / "f.txt").write_text("sha256 objects\n")
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-q", "-m", "one")
    head = run_git(repo, "rev-parse", "HEAD")
    assert len(head) == 64
    assert is_full_commit(head)
    gitref = GitRef(remote=str(repo), ref="main")
    assert resolve(gitref) == head
    assert cache_key(replace(gitref, ref=head), head, keep_git_dir=False) == head
    dest = tmp_path / "out"
    checkout(gitref, head, dest, keep_git_dir=True)
    assert (dest / "f.txt").read_text() == "sha256 objects\n"
    assert run_git(dest, "rev-parse", "HEAD") == head


def test_errors_never_show_url_password(tmp_path: Path) -> None:
    remote = "https://user:s3cr3t@127.0.0.1:1/org/repo.git"
    with pytest.raises(SourceError) as info:
        resolve(GitRef(remote=remote, ref="main"))
    assert "s3cr3t" not in str(info.value)
    assert "127.0.0.1" in str(info.value)
    with pytest.raises(SourceError) as info:
        checkout(GitRef(remote=remote, ref="main"), C1, tmp_path / "out", keep_git_dir=True)
    assert "s3cr3t" not in str(info.value)
