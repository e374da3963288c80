"""Real builds through ``engine.build.build``: statuses, caching, early cutoff, plan agreement,
errors and entitlements. Every test runs real containers (crun) over real overlayfs into a real
SQLite store with busybox loaded (fixtures in tests/buildkit_base.py). Run by a normal user the
builds are rootless; with a single ID mapping a build that needs another user or group must
fail with the clear error (``base.expect_unmapped``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from engine.errors import BuildError, DockerfileError, EntitlementError, StepFailed


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
statuses = base.statuses
status_list = base.status_list

DEPFIRST = """\
FROM busybox
WORKDIR /app
COPY requirements.txt ./
RUN mkdir -p /deps && while read -r dep; do echo "installed $dep" > "/deps/$dep"; done < requirements.txt
COPY . .
RUN cat src/*.txt > /app/artifact && wc -l /app/artifact
"""

DEPFIRST_FILES = {
    "requirements.txt": "numpy\npandas\n",
    "src/a.txt": "alpha\n",
    "src/b.txt": "beta\n",
}


def _run_steps(result: object) -> list[object]:
    return [s for s in result.steps if s.instruction.startswith("RUN")]  # type: ignore[attr-defined]


# -- 1. statuses and caching ----------------------------------------------------------------


def test_first_build_executes_every_step_and_rebuild_is_all_cached(bk: object) -> None:
    bk.write(DEPFIRST_FILES)
    first = bk.build(DEPFIRST)
    assert status_list(first) == [
        ("[1/6] FROM docker.io/library/busybox:latest", "cached"),
        ("[2/6] WORKDIR /app", "executed"),
        ("[3/6] COPY requirements.txt ./", "executed"),
        (
            '[4/6] RUN mkdir -p /deps && while read -r dep; do echo "installed $dep" > '
            '"/deps/$dep"; done < requirements.txt',
            "executed",
        ),
        ("[5/6] COPY . .", "executed"),
        ("[6/6] RUN cat src/*.txt > /app/artifact && wc -l /app/artifact", "executed"),
    ]
    assert all(s.saved_ns == 0 for s in first.steps)
    assert first.step("[6/6]").logs == b"2 /app/artifact\n"
    assert all(s.key is not None for s in first.steps if s.step is not None)

    second = bk.build(DEPFIRST)
    assert {status for _, status in status_list(second)} == {"cached"}
    for step in _run_steps(second):
        assert step.saved_ns > 0, step.name  # what the first run took, saved now
        assert step.logs == b""
    assert [s.key for s in second.steps] == [s.key for s in first.steps]
    assert second.layers == first.layers
    assert second.config == first.config


def test_a_build_of_cache_hits_removes_a_killed_engines_runtime_leftovers(bk: object) -> None:
    """An engine killed while a finished step's bundle was still being removed leaves it in
    the state dir; the next build removes it even when every step is a cache hit (and no
    executor is made), and leaves a live engine's entries alone."""
    import os
    import subprocess

    from engine.executor.leftovers import default_state_dir
    from engine.store.leases import process_start_ticks

    bk.write(DEPFIRST_FILES)
    bk.build(DEPFIRST)
    dead = subprocess.Popen(["true"])
    dead.wait()
    state = default_state_dir()
    killed = state / "bundles" / f"nbbuild-{dead.pid}-12345-0123456789ab"
    runtime_state = state / "state-crun" / f"nbbuild-{dead.pid}-12345-ba9876543210"
    live = state / "bundles" / f"nbbuild-{os.getpid()}-{process_start_ticks(os.getpid())}-00aa"
    for entry in (killed, runtime_state, live):
        (entry / "rootfs").mkdir(parents=True)
        (entry / "config.json").write_text("{}")
    try:
        again = bk.build(DEPFIRST)
        assert {status for _, status in status_list(again)} == {"cached"}
        assert not killed.exists() and not runtime_state.exists()
        assert live.is_dir()
    finally:
        import shutil

        for entry in (killed, runtime_state, live):
            shutil.rmtree(entry, ignore_errors=True)


def _changed(result: object) -> list[str]:
    """The numbered steps that ran (not cached), by their ``k/n``."""
    return [
        s.name.split("]")[0] + "]"
        for s in result.steps
        if s.step is not None and s.status != "cached"
    ]  # type: ignore[attr-defined]


def test_source_edit_reruns_only_the_steps_after_copy_dot(bk: object) -> None:
    bk.write(DEPFIRST_FILES)
    bk.build(DEPFIRST)
    bk.write({"src/a.txt": "alpha, edited\n"})
    result = bk.build(DEPFIRST)
    assert _changed(result) == ["[5/6]", "[6/6]"]
    assert result.step("[5/6]").status == "executed"
    assert result.step("[6/6]").status == "executed"
    assert result.step("[4/6]").saved_ns > 0


def test_new_source_file_reruns_from_copy_dot(bk: object) -> None:
    bk.write(DEPFIRST_FILES)
    bk.build(DEPFIRST)
    bk.write({"src/c.txt": "gamma\n"})
    result = bk.build(DEPFIRST)
    assert _changed(result) == ["[5/6]", "[6/6]"]
    assert result.step("[6/6]").logs == b"3 /app/artifact\n"


def test_manifest_edit_reruns_from_the_dependency_copy(bk: object) -> None:
    bk.write(DEPFIRST_FILES)
    bk.build(DEPFIRST)
    bk.write({"requirements.txt": "numpy\npandas\nscipy\n"})
    result = bk.build(DEPFIRST)
    assert _changed(result) == ["[3/6]", "[4/6]", "[5/6]", "[6/6]"]


def test_touching_files_without_changing_them_keeps_everything_cached(bk: object) -> None:
    bk.write(DEPFIRST_FILES)
    bk.build(DEPFIRST)
    import os

    for path in bk.ctx.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))
    assert _changed(bk.build(DEPFIRST)) == []


def test_mode_change_of_a_source_file_misses(bk: object) -> None:
    bk.write(DEPFIRST_FILES)
    bk.build(DEPFIRST)
    (bk.ctx / "src" / "b.txt").chmod(0o755)
    assert _changed(bk.build(DEPFIRST)) == ["[5/6]", "[6/6]"]


def test_no_cache_runs_everything_and_saves_the_results(bk: object) -> None:
    bk.write(DEPFIRST_FILES)
    bk.build(DEPFIRST)
    forced = bk.build(DEPFIRST, no_cache=True)
    # FROM is resolved, not re-run; --no-cache marks RUN, COPY and ADD only (as BuildKit), so a
    # WORKDIR right on the base image stays cached
    assert [st for _, st in status_list(forced)] == ["cached", "cached"] + ["executed"] * 4
    assert all(s.saved_ns == 0 for s in forced.steps if s.status == "executed")
    after = bk.build(DEPFIRST)
    assert {st for _, st in status_list(after)} == {"cached"}
    # the results of the --no-cache build replaced the older ones under the same keys
    assert after.layers == forced.layers


def test_no_cache_on_a_fresh_store_then_normal_build_is_cached(bk: object) -> None:
    bk.write(DEPFIRST_FILES)
    forced = bk.build(DEPFIRST, no_cache=True)
    assert [st for _, st in status_list(forced)[2:]] == ["executed"] * 4
    after = bk.build(DEPFIRST)
    assert {st for _, st in status_list(after)} == {"cached"}


MULTISTAGE = """\
FROM busybox AS deps
RUN echo deps > /deps.txt

FROM busybox AS builder
COPY --from=deps /deps.txt /deps.txt
COPY src/ /src/
RUN cat /deps.txt /src/*.txt > /built.txt

FROM busybox
COPY --from=builder /built.txt /built.txt
RUN wc -c /built.txt
"""


def test_no_cache_filter_reruns_only_the_named_stage(bk: object) -> None:
    bk.write(DEPFIRST_FILES)
    bk.build(MULTISTAGE)
    result = bk.build(MULTISTAGE, no_cache_filter=("builder",))
    got = statuses(result)
    assert got["[deps 2/2] RUN echo deps > /deps.txt"] == "cached"
    assert got["[builder 2/4] COPY --from=deps /deps.txt /deps.txt"] == "executed"
    assert got["[builder 3/4] COPY src/ /src/"] == "executed"
    assert got["[builder 4/4] RUN cat /deps.txt /src/*.txt > /built.txt"] == "executed"
    # the builder re-ran but made the same bytes: the last stage matches by content
    assert got["[stage-2 2/3] COPY --from=builder /built.txt /built.txt"] == "cached"
    assert got["[stage-2 3/3] RUN wc -c /built.txt"] == "cached"


def test_no_cache_filter_is_case_insensitive_and_leaves_other_stages_cached(bk: object) -> None:
    bk.write(DEPFIRST_FILES)
    bk.build(MULTISTAGE)
    result = bk.build(MULTISTAGE, no_cache_filter=("DEPS",))
    got = statuses(result)
    assert got["[deps 2/2] RUN echo deps > /deps.txt"] == "executed"
    # same bytes again: the builder's COPY --from=deps matches by content
    assert got["[builder 2/4] COPY --from=deps /deps.txt /deps.txt"] == "cached"
    assert got["[builder 4/4] RUN cat /deps.txt /src/*.txt > /built.txt"] == "cached"


EARLY_CUTOFF = """\
FROM busybox AS gen
ARG V
RUN echo "v=$V" > /log && echo constant > /out

FROM busybox
COPY --from=gen /out /out
RUN cat /out
"""


def test_early_cutoff_build_arg_reruns_run_but_copy_from_stays_cached(bk: object) -> None:
    first = bk.build(EARLY_CUTOFF, build_args={"V": "1"})
    assert first.step("[gen 2/2]").name == '[gen 2/2] RUN echo "v=1" > /log && echo constant > /out'
    assert first.step("[gen 2/2]").status == "executed"
    second = bk.build(EARLY_CUTOFF, build_args={"V": "2"})
    assert second.step("[gen 2/2]").status == "executed"
    assert second.step("[stage-1 2/3] COPY --from=gen /out /out").status == "cached"
    assert second.step("[stage-1 3/3] RUN cat /out").status == "cached"
    assert second.step("[stage-1 3/3]").saved_ns > 0
    assert second.layers == first.layers
    # the generating step's key changed with the build arg ...
    assert first.step("[gen 2/2]").key != second.step("[gen 2/2]").key
    # ... and the consumer found the old result through the content of /out, so it was
    # stored under the new definition keys too: a third build hits on the fast path
    third = bk.build(EARLY_CUTOFF, build_args={"V": "2"})
    assert {st for _, st in status_list(third)} == {"cached"}
    assert third.step("[stage-1 3/3]").key == second.step("[stage-1 3/3]").key


def test_early_cutoff_does_not_hide_a_real_change(bk: object) -> None:
    dockerfile = EARLY_CUTOFF.replace("echo constant > /out", 'echo "$V" > /out')
    bk.build(dockerfile, build_args={"V": "1"})
    second = bk.build(dockerfile, build_args={"V": "2"})
    assert second.step("[stage-1 2/3] COPY --from=gen /out /out").status == "executed"
    assert second.step("[stage-1 3/3] RUN cat /out").status == "executed"
    assert second.step("[stage-1 3/3]").logs == b"2\n"


def test_failing_run_in_an_unused_stage_does_not_fail_the_build(bk: object) -> None:
    dockerfile = """\
FROM busybox AS broken
RUN echo never runs && exit 3

FROM busybox AS good
RUN echo fine > /ok
"""
    result = bk.build(dockerfile)
    assert all("exit 3" not in s.name for s in result.steps)
    assert statuses(result)["[good 2/2] RUN echo fine > /ok"] == "executed"
    # --target selects the broken stage: now it runs (and fails)
    with pytest.raises(StepFailed) as info:
        bk.build(dockerfile, target="broken")
    assert info.value.exit_code == 3


def test_unused_stage_build_arg_change_keeps_the_build_cached(bk: object) -> None:
    dockerfile = """\
FROM busybox AS other
ARG X
RUN echo $X > /x

FROM busybox
RUN echo final > /f
"""
    bk.build(dockerfile, build_args={"X": "1"})
    assert _changed(bk.build(dockerfile, build_args={"X": "2"})) == []


def test_config_only_change_keeps_every_step_cached_but_changes_the_config(bk: object) -> None:
    dockerfile = 'FROM busybox\nRUN echo hi > /hi\nLABEL version="1"\nCMD ["cat", "/hi"]\n'
    first = bk.build(dockerfile, tags=("cfg:1",))
    second = bk.build(dockerfile.replace('version="1"', 'version="2"'), tags=("cfg:2",))
    assert _changed(second) == []
    assert first.config["config"]["Labels"] == {"version": "1"}
    assert second.config["config"]["Labels"] == {"version": "2"}
    assert first.image_id != second.image_id
    assert first.layers == second.layers


def test_env_change_misses_the_following_run(bk: object) -> None:
    dockerfile = "FROM busybox\nENV A=1\nRUN echo run > /r\n"
    bk.build(dockerfile)
    assert _changed(bk.build(dockerfile.replace("A=1", "A=2"))) == ["[2/2]"]


def test_undeclared_proxy_build_arg_does_not_miss_but_declared_one_does(bk: object) -> None:
    dockerfile = "FROM busybox\nRUN echo run > /r\n"
    bk.build(dockerfile)
    assert _changed(bk.build(dockerfile, build_args={"HTTP_PROXY": "http://p:1"})) == []
    declared = "FROM busybox\nARG HTTP_PROXY\nRUN echo run > /r\n"
    bk.build(declared, build_args={"HTTP_PROXY": "http://p:1"})
    assert _changed(bk.build(declared, build_args={"HTTP_PROXY": "http://p:2"})) == ["[2/2]"]


def test_proxy_build_arg_reaches_the_run_environment(bk: object) -> None:
    result = bk.build(
        'FROM busybox\nRUN echo "proxy=$HTTP_PROXY"\n', build_args={"HTTP_PROXY": "http://p:3"}
    )
    assert result.step("[2/2]").logs == b"proxy=http://p:3\n"


# -- plan/build agreement -------------------------------------------------------------------

PLAN_CASES = {
    "depfirst": (DEPFIRST, {}),
    "multistage": (MULTISTAGE, {}),
    "early-cutoff": (EARLY_CUTOFF, {"V": "7"}),
    "example": ((base.REPO / "examples" / "depfirst" / "Dockerfile").read_text(), {}),
    "config-and-users": (
        """\
FROM busybox AS base
ARG WHO=app
ENV GREETING=hello
RUN echo "$WHO:x:1001:1001::/home/$WHO:/bin/sh" >> /etc/passwd
USER $WHO
WORKDIR /srv/$WHO
COPY --chown=1001:1001 requirements.txt ./
RUN echo "$GREETING" > greeting
LABEL purpose=test
EXPOSE 8080

FROM base AS extra
RUN echo extra > /tmp/extra

FROM busybox
COPY --from=base /srv/app/greeting /greeting
COPY --from=extra /tmp/extra /extra
COPY <<EOF /inline.txt
inline $GREETING
EOF
RUN <<EOT
cat /greeting /extra /inline.txt
EOT
CMD ["cat", "/greeting"]
""",
        {},
    ),
}


# USER app (uid 1001) and COPY --chown=1001:1001: other IDs than root's
NEEDS_IDS = {"config-and-users"}


@pytest.mark.parametrize("case", sorted(PLAN_CASES))
def test_plan_keys_are_the_keys_the_build_looks_up(bk: object, case: str) -> None:
    dockerfile, args = PLAN_CASES[case]
    bk.write(DEPFIRST_FILES)
    before = bk.plan_api(dockerfile, build_args=args)
    planned = {v["id"]: v for v in before["vertices"]}
    if case in NEEDS_IDS and base.single():
        # planning needs no IDs; the build cannot give them
        assert not any(v["provisional"] for v in planned.values())
        base.expect_unmapped(lambda: bk.build(dockerfile, build_args=args))
        return
    first = bk.build(dockerfile, build_args=args)
    by_id = {s.digest: s for s in first.steps}
    assert set(planned) == set(by_id)  # the same graph
    checked = 0
    for vid, vertex in planned.items():
        step = by_id[vid]
        assert vertex["name"] == step.name
        assert not vertex["provisional"], vertex["name"]  # the image is in the store
        if vertex["cache_key"] is None or step.status == "skipped":
            continue
        assert step.key == vertex["cache_key"], step.name
        if step.status == "executed" and step.keys:
            assert vertex["cache_key"] in step.keys, step.name
        checked += 1
    assert checked >= sum(1 for s in first.steps if s.step is not None)
    # after the build: the same keys, and the rebuild finds everything under them
    after = bk.plan_api(dockerfile, build_args=args)
    assert [v["cache_key"] for v in after["vertices"]] == [
        v["cache_key"] for v in before["vertices"]
    ]
    second = bk.build(dockerfile, build_args=args)
    assert {st for _, st in status_list(second)} == {"cached"}
    for step in second.steps:
        if step.step is not None:
            assert step.key == planned[step.digest]["cache_key"], step.name
    # and the plan's image config is the build's
    assert after["image_config"] == first.config


def test_plan_after_a_source_edit_predicts_which_steps_miss(bk: object) -> None:
    bk.write(DEPFIRST_FILES)
    bk.build(DEPFIRST)
    bk.write({"src/b.txt": "beta, edited\n"})
    planned = {v["name"]: v["cache_key"] for v in bk.plan_api(DEPFIRST)["vertices"]}
    result = bk.build(DEPFIRST)
    for step in result.steps:
        if step.step is not None:
            assert step.key == planned[step.name], step.name
    assert _changed(result) == ["[5/6]", "[6/6]"]


def test_cli_plan_keys_are_the_keys_the_build_looks_up(bk: object) -> None:
    bk.write(DEPFIRST_FILES)
    planned = {v["id"]: v for v in bk.plan_cli(MULTISTAGE)["vertices"]}
    result = bk.build(MULTISTAGE)
    assert not any(v["provisional"] for v in planned.values())
    for step in result.steps:
        if step.step is not None:
            assert step.key == planned[step.digest]["cache_key"], step.name


# -- 2. errors --------------------------------------------------------------------------------


def test_failing_run_raises_step_failed_with_step_line_exit_code_and_last_logs(
    bk: object,
) -> None:
    dockerfile = """\
FROM busybox
RUN echo fine
RUN { for i in $(seq 1 40); do echo "line $i"; done; echo "oops" >&2; } 2>&1; exit 7
RUN echo never
"""
    with pytest.raises(StepFailed) as info:
        bk.build(dockerfile)
    err = info.value
    assert err.step.startswith("[3/4] RUN { for i in")
    assert err.line == 3
    assert err.exit_code == 7
    # (stderr joins stdout in the shell: two pipes would leave the order undefined)
    assert err.logs[-2:] == ("line 40", "oops")
    assert len(err.logs) == 20  # the last lines only
    assert "line 1" not in err.logs
    text = str(err)
    assert text.startswith("[3/4] RUN { for i in")
    assert "(Dockerfile:3)" in text
    assert "did not complete successfully: exit code: 7" in text
    assert text.endswith("  | line 40\n  | oops")
    by_name = {v.name: v for v in bk.reporters[-1].vertices().values()}
    assert by_name[err.step].status == "failed"
    assert by_name["[2/4] RUN echo fine"].status == "executed"
    never = by_name.get("[4/4] RUN echo never")
    assert never is None or never.status != "executed"


def test_step_failed_logs_include_stderr(bk: object) -> None:
    with pytest.raises(StepFailed) as info:
        bk.build("FROM busybox\nRUN echo to-stderr >&2; exit 1\n")
    assert info.value.logs == ("to-stderr",)
    assert info.value.exit_code == 1


def test_failed_step_is_not_cached_and_steps_before_it_are(bk: object) -> None:
    dockerfile = "FROM busybox\nRUN echo ok > /ok\nRUN test -e /flag\n"
    with pytest.raises(StepFailed):
        bk.build(dockerfile)
    with pytest.raises(StepFailed):
        bk.build(dockerfile)
    states = {v.name: v.status for v in bk.reporters[-1].vertices().values()}
    assert states["[2/3] RUN echo ok > /ok"] == "cached"
    assert states["[3/3] RUN test -e /flag"] == "failed"


@pytest.mark.parametrize(
    "mount",
    [
        "type=cache,target=/root/.cache",
        "type=bind,source=requirements.txt,target=/r.txt",
        "type=secret,id=token",
        "type=tmpfs,target=/scratch",
        "type=ssh",
    ],
)
def test_run_mounts_are_refused_clearly(bk: object, mount: str) -> None:
    bk.write(DEPFIRST_FILES)
    kind = mount.split(",")[0].split("=")[1]
    with pytest.raises(BuildError) as info:
        bk.build(f"FROM busybox\nRUN --mount={mount} echo hi\n")
    text = str(info.value)
    assert f"--mount=type={kind} is not supported yet" in text
    assert text.startswith("[2/2] RUN ")


def test_network_host_needs_the_entitlement(bk: object) -> None:
    with pytest.raises(EntitlementError) as info:
        bk.build("FROM busybox\nRUN --network=host cat /proc/net/dev\n")
    assert "network.host" in str(info.value)
    assert "--allow network.host" in str(info.value)
    with pytest.raises(EntitlementError):
        bk.build("FROM busybox\nRUN cat /proc/net/dev\n", network="host")


def _interfaces(proc_net_dev: str) -> set[str]:
    return {line.split(":")[0].strip() for line in proc_net_dev.splitlines()[2:] if ":" in line}


def test_network_host_with_the_entitlement_sees_the_host_interfaces(bk: object) -> None:
    host = _interfaces(Path("/proc/net/dev").read_text())
    assert host - {"lo"}, "the test host has no interface besides lo"
    result = bk.build(
        "FROM busybox\nRUN --network=host cat /proc/net/dev\n",
        allow=frozenset({"network.host"}),
    )
    assert _interfaces(result.step("[2/2]").logs.decode()) == host
    # --network host on the command line does the same for every RUN
    result = bk.build(
        "FROM busybox\nRUN cat /proc/net/dev && echo again\n",
        allow=frozenset({"network.host"}),
        network="host",
    )
    assert _interfaces(result.step("[2/2]").logs.decode()) == host


def test_network_none_has_only_loopback(bk: object) -> None:
    result = bk.build("FROM busybox\nRUN --network=none cat /proc/net/dev\n")
    assert _interfaces(result.step("[2/2]").logs.decode()) == {"lo"}
    result = bk.build("FROM busybox\nRUN cat /proc/net/dev; echo cli\n", network="none")
    assert _interfaces(result.step("[2/2]").logs.decode()) == {"lo"}


def test_network_mode_is_part_of_the_run_key(bk: object) -> None:
    a = bk.build("FROM busybox\nRUN --network=none echo x\n")
    b = bk.build("FROM busybox\nRUN --network=default echo x\n")
    assert a.step("[2/2]").key != b.step("[2/2]").key
    assert b.step("[2/2]").status == "executed"


def test_dockerfile_errors_name_the_line_before_anything_runs(bk: object) -> None:
    with pytest.raises(DockerfileError) as info:
        bk.build("FROM busybox\nRUN echo hi > /hi\nRUNN echo typo\n")
    assert info.value.line == 3
    assert "unknown instruction" in str(info.value).lower()
    assert bk.reporters[-1].events == []  # nothing started


def test_a_failing_stage_cancels_its_parallel_siblings(bk: object) -> None:
    dockerfile = """\
FROM busybox AS slow
RUN sleep 10 && echo slow-done > /s

FROM busybox AS broken
RUN exit 5

FROM busybox
COPY --from=slow /s /s
COPY --from=broken /bin/sh /b
"""
    with pytest.raises(StepFailed) as info:
        bk.build(dockerfile)
    assert info.value.exit_code == 5
    states = {v.name: v.status for v in bk.reporters[-1].vertices().values()}
    assert states["[broken 2/2] RUN exit 5"] == "failed"
    assert states["[slow 2/2] RUN sleep 10 && echo slow-done > /s"] == "canceled"
    assert states.get("[stage-2 2/3] COPY --from=slow /s /s", "skipped") != "executed"


# -- tags: diff IDs computed while the build goes on -------------------------------------------


def test_tagged_build_has_the_diff_ids_of_its_layers_and_leaves_no_hash_thread(
    bk: object,
) -> None:
    import threading

    bk.write({"big.bin": b"z" * 3_000_000, "small.txt": "s\n"})  # type: ignore[attr-defined]
    dockerfile = "FROM busybox\nCOPY . /ctx\nRUN echo one > /one\nRUN echo two > /two\n"
    result = bk.build(dockerfile, tags=("hashed:1",))  # type: ignore[attr-defined]
    # read where the snapshots' files can be read (rootless: inside the user namespace)
    layers, stored, computed = base.inside(base.image_diff_ids, bk.root, "hashed:1", 3)  # type: ignore[attr-defined]
    assert tuple(layers) == tuple(result.layers)
    assert list(stored) == list(computed)
    assert not [t for t in threading.enumerate() if t.name == "nbbuild-layer-hash"]
    with pytest.raises(StepFailed):
        bk.build(  # type: ignore[attr-defined]
            "FROM busybox\nCOPY . /ctx\nRUN exit 3\n", tags=("hashed:2",), no_cache=True
        )
    assert not [t for t in threading.enumerate() if t.name == "nbbuild-layer-hash"]
