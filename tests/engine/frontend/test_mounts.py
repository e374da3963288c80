from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import DockerfileError
from engine.frontend.mounts import (
    Mount,
    check_unexpanded,
    clean_path,
    mount_target,
    parse_mount,
    parse_ram_bytes,
    split_csv,
)


def ident(word: str) -> str:
    return word


def mount(spec: str) -> Mount:
    return parse_mount(spec, ident)


def error(spec: str) -> DockerfileError:
    with pytest.raises(DockerfileError) as info:
        parse_mount(spec, ident)
    return info.value


# --- defaults per type -------------------------------------------------------------------


def test_bind_is_default_type_and_read_only() -> None:
    m = mount("target=/src")
    assert (m.type, m.target, m.read_only, m.from_, m.source) == ("bind", "/src", True, "", "")
    assert m.effective_mode is None


def test_cache_defaults() -> None:
    m = mount("type=cache,target=/root/.cache/")
    assert m.read_only is False
    assert m.cache_id == ""
    assert m.effective_cache_id == "/root/.cache"  # path.Clean(target)
    assert m.effective_sharing == "shared"
    assert (m.effective_mode, m.effective_uid, m.effective_gid) == (0o755, 0, 0)


def test_tmpfs_defaults() -> None:
    m = mount("type=tmpfs,target=/tmp")
    assert (m.read_only, m.size_limit) == (False, 0)


def test_secret_defaults() -> None:
    m = mount("type=secret,id=aws")
    assert m.read_only is True
    assert m.secret_id == "aws"
    assert m.secret_target == "/run/secrets/aws"
    assert m.effective_mode == 0o400
    assert m.required is False


def test_secret_id_from_target_basename() -> None:
    m = mount("type=secret,target=/root/.npmrc")
    assert (m.secret_id, m.secret_target) == (".npmrc", "/root/.npmrc")


def test_secret_source_is_the_id() -> None:
    assert mount("type=secret,source=tok").secret_id == "tok"


def test_secret_env_only_has_no_file() -> None:
    m = mount("type=secret,id=tok,env=TOKEN")
    assert (m.env, m.secret_target) == ("TOKEN", None)
    both = mount("type=secret,id=tok,env=TOKEN,target=/t")
    assert both.secret_target == "/t"


def test_ssh_defaults() -> None:
    m = mount("type=ssh")
    assert m.ssh_id == "default"
    assert m.ssh_target(0) == "/run/buildkit/ssh_agent.0"
    assert m.ssh_target(2) == "/run/buildkit/ssh_agent.2"
    assert m.effective_mode == 0o600
    assert mount("type=ssh,id=gh,target=/s").ssh_target(0) == "/s"
    assert mount("type=ssh,id=gh").ssh_id == "gh"


# --- options -------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["target", "dst", "destination", "TARGET"])
def test_target_aliases(key: str) -> None:
    assert mount(f"{key}=/x").target == "/x"


@pytest.mark.parametrize("key", ["source", "src"])
def test_source_aliases(key: str) -> None:
    assert mount(f"target=/x,{key}=sub/dir").source == "sub/dir"


@pytest.mark.parametrize(
    ("opts", "read_only"),
    [
        ("rw", False),
        ("readwrite", False),
        ("rw=true", False),
        ("rw=false", True),
        ("readwrite=0", True),
        ("ro", True),
        ("readonly=false", False),
        ("ro=F", False),
    ],
)
def test_read_write_forms(opts: str, read_only: bool) -> None:
    assert mount(f"target=/x,{opts}").read_only is read_only


def test_explicit_ro_on_cache() -> None:
    assert mount("type=cache,target=/c,ro").read_only is True


def test_cache_options() -> None:
    m = mount(
        "type=cache,target=/c,id=pip,sharing=LOCKED,mode=0700,uid=1000,gid=100,from=base,source=/s"
    )
    assert (m.cache_id, m.cache_sharing, m.mode, m.uid, m.gid) == (
        "pip",
        "locked",
        0o700,
        1000,
        100,
    )
    assert (m.from_, m.source, m.effective_cache_id) == ("base", "/s", "pip")


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ("100", 100),
        ("1k", 1024),
        ("64m", 64 << 20),
        ("1.5GiB", 3 << 29),
        ("2 mb", 2 << 20),
        ("3b", 3),
    ],
)
def test_tmpfs_size(size: str, expected: int) -> None:
    assert mount(f"type=tmpfs,target=/t,size={size}").size_limit == expected
    assert parse_ram_bytes(size) == expected


@pytest.mark.parametrize("size", ["", "abc", "1x", "1kbb", "-1", "1mib2"])
def test_bad_sizes(size: str) -> None:
    with pytest.raises(ValueError):
        parse_ram_bytes(size)


def test_required_forms() -> None:
    assert mount("type=secret,id=a,required").required is True
    assert mount("type=secret,id=a,required=true").required is True
    assert mount("type=ssh,required=false").required is False


def test_values_are_expanded_with_the_given_function() -> None:
    m = parse_mount(
        "type=cache,target=$T,id=${ID}", lambda w: w.replace("$T", "/t").replace("${ID}", "x")
    )
    assert (m.target, m.cache_id) == ("/t", "x")


def test_expanded_type_is_validated() -> None:
    m = parse_mount("type=$K,target=/t", lambda w: "tmpfs" if w == "$K" else w)
    assert m.type == "tmpfs"


def test_quoted_csv_fields() -> None:
    assert mount('target=/x,"source=a,b"').source == "a,b"
    assert split_csv('a,"b ""c""",d') == ["a", 'b "c"', "d"]


# --- errors (BuildKit's wording) -----------------------------------------------------------


def test_unsupported_type_with_suggestion() -> None:
    err = error("type=cahce,target=/c")
    assert err.message == 'unsupported mount type "cahce"'
    assert err.suggestion == "cache"


def test_unsupported_type_without_suggestion() -> None:
    err = error("type=volume,target=/c")
    assert err.message == 'unsupported mount type "volume"'
    assert err.suggestion is None


def test_unknown_key_with_suggestion() -> None:
    err = error("type=cache,targt=/c")
    assert err.message == "unexpected key 'targt' in 'targt=/c'"
    assert err.suggestion == "target"


def test_bad_sharing_value() -> None:
    err = error("type=cache,target=/c,sharing=lockd")
    assert err.message == 'unsupported sharing value "lockd"'
    assert err.suggestion == "locked"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("target=/x,foo", "invalid field 'foo' must be a key=value pair"),
        ("target=/x,required", "unexpected key 'required' for mount type 'bind'"),
        ("type=cache,target=/x,required=true", "unexpected key 'required' for mount type 'cache'"),
        ("target=/x,size=1m", "unexpected key 'size' for mount type 'bind'"),
        ("type=tmpfs,target=/x,size=big", "invalid value for size: big"),
        ("target=/x,ro=maybe", "invalid value for ro: maybe"),
        ("target=/x,rw=yes", "invalid value for rw: yes"),
        ("type=secret,id=a,required=2", "invalid value for required: 2"),
        ("type=cache,target=/x,mode=0789", "invalid value 0789 for mode"),
        ("type=cache,target=/x,uid=-1", "invalid value -1 for uid"),
        ("type=cache,target=/x,gid=x", "invalid value x for gid"),
        ("type=cache,target=/x,uid=4294967296", "invalid value 4294967296 for uid"),
        ("target=/x,mode=0644", 'mode not allowed for "bind" type mounts'),
        ("type=tmpfs,target=/x,uid=1", 'uid not allowed for "tmpfs" type mounts'),
        ("target=/x,gid=1", 'gid not allowed for "bind" type mounts'),
        ("type=secret,id=a,from=x", "secret mount should not have a from"),
        ("type=secret,id=a,sharing=shared", "secret mount should not define sharing"),
        ("type=secret", "invalid secret mount. one of source, target required"),
        ("type=secret,source=a,id=b", "both source and id can't be set"),
        ("target=/x,sharing=private", "invalid cache sharing set for bind mount"),
        ("type=ssh,source=a", "ssh does not support source"),
        (
            'target=/x,a"b',
            'failed to parse csv mounts: parse error on line 1, column 12: bare " in non-quoted-field',
        ),
        ("", "failed to parse csv mounts: EOF"),
    ],
)
def test_errors(spec: str, message: str) -> None:
    assert error(spec).message == message


def test_from_variable_is_rejected_before_expansion() -> None:
    with pytest.raises(DockerfileError) as info:
        check_unexpanded("type=bind,from=$STAGE,target=/x")
    assert (
        info.value.message
        == "'from' doesn't support variable expansion, define alias stage instead"
    )
    check_unexpanded("type=bind,from=stage$,target=$T")  # trailing $ and other keys are fine


# --- target resolution ---------------------------------------------------------------------


def test_mount_target_relative_to_workdir() -> None:
    assert mount_target(mount("target=cache"), "/app") == "/app/cache"
    # an absolute target is used as written, like BuildKit
    assert mount_target(mount("target=/abs/"), "/app") == "/abs/"
    assert mount_target(mount("type=cache,id=x"), "/w") == "/w"


def test_mount_target_root_is_invalid() -> None:
    with pytest.raises(DockerfileError) as info:
        mount_target(mount("type=tmpfs"), "/")
    assert info.value.message == 'invalid mount target "/"'


@pytest.mark.parametrize(
    ("path", "clean"),
    [
        ("", "."),
        ("/a/../b/", "/b"),
        ("a//b/./c", "a/b/c"),
        ("../a", "../a"),
        ("/..", "/"),
        ("//x", "/x"),
    ],
)
def test_clean_path(path: str, clean: str) -> None:
    assert clean_path(path) == clean


# --- robustness: bad input never escapes as a raw Python exception ------------------------


_pieces = st.sampled_from(
    ["type=", "cache", "secret", "ssh", "tmpfs", "bind", "target=", "/x", "id=", "mode=", "0", "9",
     "uid=", "size=", "1k", "sharing=", "locked", "ro", "rw=", "true", "required", "env=", "from=",
     "source=", ",", '"', "=", "$", "a"]
)  # fmt: skip


@given(st.lists(_pieces, max_size=12).map("".join))
def test_parse_mount_only_raises_dockerfile_errors(spec: str) -> None:
    try:
        check_unexpanded(spec)
        m = parse_mount(spec, ident)
    except DockerfileError:
        return
    assert m.type in ("bind", "cache", "tmpfs", "secret", "ssh")


@given(st.text(max_size=12))
def test_parse_ram_bytes_only_raises_value_error(text: str) -> None:
    try:
        size = parse_ram_bytes(text)
    except ValueError:
        return
    assert size >= 0


def test_parse_ram_bytes_out_of_range() -> None:
    with pytest.raises(ValueError):
        parse_ram_bytes("1e999")
