"""The converter behind :func:`engine.frontend.convert.convert` (Dockerfile → build graph).

Kept apart from :mod:`engine.frontend.convert`, whose light names (options, resolved images,
the host platform) the image store and the build import on every run: this module and the
parser, instruction and shell code it needs load only when a Dockerfile is converted.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from engine.errors import ContextError, DockerfileError, SourceError
from engine.frontend import instructions as ins
from engine.frontend import mounts as ins_mounts
from engine.frontend.convert import BuildOptions, ImageResolver, ResolvedImage, host_platform
from engine.frontend.imageref import normalize_ref
from engine.frontend.instructions import Stage, parse_instruction, parse_stages
from engine.frontend.namedcontext import ContextResolver, NamedContext, lookup
from engine.frontend.parser import Dockerfile, _heredoc_from_word, parse
from engine.frontend.shell import Lexer
from engine.frontend.suggest import did_you_mean
from engine.graph.image import DEFAULT_PATH, Healthcheck, HistoryEntry, ImageConfig
from engine.graph.ops import (
    PROXY_ENV_NAMES,
    ChownSpec,
    CopyAction,
    ExecOp,
    FileOp,
    GitSource,
    HttpSource,
    ImageSource,
    LocalSource,
    MergeOp,
    MkdirAction,
    MkfileAction,
    Mount,
    Op,
    Platform,
)
from engine.graph.vertex import Definition, Vertex, VertexMeta
from engine.sources import git as gitsrc
from engine.sources import http as httpsrc

__all__ = ["convert"]

SCRATCH = "scratch"
# ARGs BuildKit never puts into the RUN environment (its nonEnvArgs).
_NON_ENV_ARGS = frozenset({"BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"})
HISTORY_COMMENT = "buildkit.dockerfile.v0"


# ----------------------------------------------------------------------------- state


@dataclass
class _Stage:
    """Mutable dispatch state of one stage (BuildKit's dispatchState)."""

    index: int
    stage: Stage | None  # None for an unregistered state (COPY --from=image)
    base_name: str  # expanded FROM name (or the image ref of an unregistered state)
    name: str  # display name: AS name, "stage-N" or ""
    platform: Platform
    base: _Stage | None = None
    image_ref: str | None = None  # normalised ref when the base is an image
    state: str | None = None  # vertex digest of the current filesystem; None = scratch
    env: list[tuple[str, str]] = field(default_factory=list)
    cwd: str = "/"
    user: str = ""
    config: ImageConfig = field(default_factory=ImageConfig)
    build_args: list[tuple[str, str | None]] = field(default_factory=list)
    ignore_cache: bool = False
    cmd_total: int = 0
    cmd_index: int = 0
    commands: list[ins.Command] = field(default_factory=list)
    onbuild_flags: list[bool] = field(default_factory=list)
    sources: dict[int, list[_Stage]] = field(default_factory=dict)  # command idx → sources
    dispatched: bool = False
    unregistered: bool = False
    # The named context this state stands for: the stage's own name (from_named_context) or
    # the image name it is built FROM / read --from (set when its base is resolved).
    named_context: NamedContext | None = None
    from_line: int | None = None
    from_text: str = ""
    based: bool = False  # the base has been resolved (once)
    chain_id: str | None = None  # of the base image, when resolved
    resolved: bool = False  # the base image was found
    cmd_set: bool = False  # CMD was set in this stage (ENTRYPOINT then keeps it)
    # Built (directly or through its base stages) on an image that could not be resolved:
    # the base's ENV is unknown, so references to unset variables are kept as written
    # instead of expanding to "" (which would turn `WORKDIR $HOME` into an error).
    provisional: bool = False
    trigger_count: int = 0  # ONBUILD triggers prepended (BuildKit counts each as a step)
    from_named_context: bool = False  # the stage itself is replaced by a named context

    def env_map(self) -> dict[str, str]:
        return dict(self.env)

    def add_env(self, key: str, value: str) -> None:
        for i, (k, _) in enumerate(self.env):
            if k == key:
                self.env[i] = (key, value)
                return
        self.env.append((key, value))


class _Graph:
    """Collects vertices in creation order (which is dependency order); dedups by digest."""

    def __init__(self) -> None:
        self.vertices: dict[str, Vertex] = {}

    def add(self, op: Op, inputs: tuple[str, ...], meta: VertexMeta) -> str:
        vertex = Vertex(op=op, inputs=inputs, meta=meta)
        self.vertices.setdefault(vertex.digest, vertex)
        return vertex.digest


# ----------------------------------------------------------------------------- converter


class _Converter:
    def __init__(
        self,
        dockerfile: Dockerfile,
        options: BuildOptions,
        resolve_image: ImageResolver | None,
        resolve_context: ContextResolver | None = None,
    ) -> None:
        self.df = dockerfile
        self.filename = dockerfile.filename
        self.opts = options
        self.resolve_image = resolve_image
        self.resolve_context = resolve_context
        self.lex = Lexer(escape=dockerfile.directives.escape)
        self.platform = options.platform or host_platform()
        self.graph = _Graph()
        self.states: list[_Stage] = []
        self.by_name: dict[str, _Stage] = {}
        self.context_vertex: dict[str, str] = {}
        self.declared_args: set[str] = set()

    # -- errors ------------------------------------------------------------------------

    def error(
        self, message: str, line: int | None, text: str = "", suggestion: str | None = None
    ) -> DockerfileError:
        return DockerfileError(
            message,
            filename=self.filename,
            line=line,
            instruction=text or None,
            suggestion=suggestion,
        )

    def located(self, err: DockerfileError, line: int | None, text: str) -> DockerfileError:
        return err.with_location(filename=self.filename, line=line, instruction=text)

    # -- main --------------------------------------------------------------------------

    def run(self) -> Definition:
        _check_syntax(self.df)
        meta_args, stages = parse_stages(self.df)
        if not stages:
            raise self.error("dockerfile contains no stages to build", None)
        # BuildKit: TARGETSTAGE is "default" when the last stage has no name.
        target_name = self.opts.target or stages[-1].name or "default"
        global_args = self._default_args(target_name)
        global_args = self._meta_args(meta_args, global_args)
        self.global_args = global_args
        self.proxy_env = tuple(
            f"{k}={v}"
            for k, v in sorted(self.opts.build_args.items())
            if k.lower() in PROXY_ENV_NAMES
        )

        for i, stage in enumerate(stages):
            self._add_stage(i, stage)
        target = self._resolve_target()
        self._build_dependencies()
        reachable = self._reachable(target)
        self._dispatch_all(reachable)
        return self._finish(target)

    # -- args --------------------------------------------------------------------------

    def _default_args(self, target: str) -> dict[str, str]:
        # BUILD* describe the machine running the build; TARGET* the requested platform.
        b = host_platform()
        p = self.platform
        args = {
            "BUILDPLATFORM": str(b),
            "BUILDOS": b.os,
            "BUILDOSVERSION": "",
            "BUILDARCH": b.architecture,
            "BUILDVARIANT": b.variant,
            "TARGETPLATFORM": str(p),
            "TARGETOS": p.os,
            "TARGETOSVERSION": "",
            "TARGETARCH": p.architecture,
            "TARGETVARIANT": p.variant,
            "TARGETSTAGE": target,
        }
        # Build args override the predefined values (BuildKit's defaultArgs overrides).
        for key in args:
            if key in self.opts.build_args:
                args[key] = self.opts.build_args[key]
        return args

    def _meta_args(
        self, meta_args: tuple[ins.ArgCommand, ...], args: dict[str, str]
    ) -> dict[str, str]:
        out = dict(args)
        for cmd in meta_args:
            for arg in cmd.args:
                self.declared_args.add(arg.key)
                if arg.key in self.opts.build_args:
                    out[arg.key] = self.opts.build_args[arg.key]
                elif arg.default is not None:
                    try:
                        out[arg.key] = self.lex.process_word(arg.default, out)
                    except DockerfileError as err:
                        raise self.located(err, cmd.line, cmd.source_code) from None
        return out

    # -- stages ------------------------------------------------------------------------

    def _add_stage(self, index: int, stage: Stage) -> None:
        line, text = stage.from_cmd.line, stage.from_cmd.source_code
        try:
            result = self.lex.process_word_with_matches(stage.base_name, self.global_args)
        except DockerfileError as err:
            raise self.located(err, line, text) from None
        base_name = result.result
        if not base_name:
            raise self.error(f"base name ({stage.base_name}) should not be blank", line, text)
        stage_platform = self.platform
        if stage.platform:
            try:
                value = self.lex.process_word(stage.platform, self.global_args)
            except DockerfileError as err:
                raise self.located(err, line, text) from None
            if not value:
                raise self.error(
                    f"empty platform value from expression {stage.platform}", line, text
                )
            stage_platform = _parse_platform(
                value, self.platform, lambda m: self.error(m, line, text)
            )
        st = _Stage(
            index=index,
            stage=stage,
            base_name=base_name,
            name=stage.name or f"stage-{index}",
            platform=stage_platform,
            from_line=line,
            from_text=text,
        )
        if stage.name:
            # BuildKit: a named context replaces a stage of that name, whatever its FROM.
            named = self._lookup_context(stage.name, stage_platform, line, text, stage=True)
            if named is not None:
                st.named_context = named
                st.from_named_context = True
        if stage.name in self.by_name and stage.name:
            raise self.error(f"duplicate stage name {stage.name!r}", line, text)
        self.states.append(st)
        if stage.name:
            self.by_name[stage.name] = st
        st.commands = list(stage.commands)
        st.onbuild_flags = [False] * len(st.commands)
        if self._is_no_cache(stage.name):
            st.ignore_cache = True

    def _is_no_cache(self, name: str) -> bool:
        if self.opts.no_cache:
            return True
        return bool(name) and name.lower() in {f.lower() for f in self.opts.no_cache_filter}

    def _resolve_target(self) -> _Stage:
        if not self.opts.target:
            return self.states[-1]
        found = self.by_name.get(self.opts.target.lower())
        if found is None:
            names = [s.stage.name for s in self.states if s.stage and s.stage.name]
            raise self.error(
                f'target stage "{self.opts.target}" could not be found',
                None,
                suggestion=_quote(did_you_mean(self.opts.target, names)),
            )
        return found

    def _find_or_unregistered(self, name: str, line: int) -> _Stage:
        found = self.by_name.get(name.lower())
        if found is not None:
            return found
        for st in self.states:
            if st.unregistered and st.base_name == name:
                return st
        st = _Stage(
            index=len(self.states),
            stage=None,
            base_name=name,
            name="",
            platform=self.platform,
            unregistered=True,
            from_line=line,
        )
        self.states.append(st)
        return st

    def _sources_of(self, cmd: ins.Command) -> list[_Stage]:
        if isinstance(cmd, ins.CopyCommand) and cmd.from_:
            try:
                expanded = self.lex.process_word(cmd.from_, {})
            except DockerfileError as err:
                raise self.located(err, cmd.line, cmd.source_code) from None
            if expanded != cmd.from_:
                raise self.error(
                    "variable expansion is not supported for --from, define a new stage with "
                    "FROM using ARG from global scope as a workaround",
                    cmd.line,
                    cmd.source_code,
                )
            if cmd.from_.isdigit():
                index = int(cmd.from_)
                registered = [s for s in self.states if not s.unregistered]
                if index >= len(registered):
                    raise self.error(f"invalid stage index {index}", cmd.line, cmd.source_code)
                return [registered[index]]
            return [self._find_or_unregistered(cmd.from_, cmd.line)]
        if isinstance(cmd, ins.RunCommand) and cmd.mounts is not None:
            out = []
            for m in cmd.mounts:
                if m.from_:
                    out.append(self._find_or_unregistered(m.from_, cmd.line))
            return out
        if isinstance(cmd, ins.RunCommand) and cmd.mount_specs:
            # Mounts with variables are parsed after expansion; `from=` cannot hold one.
            out = []
            for spec in cmd.mount_specs:
                for part in spec.split(","):
                    key, _, value = part.partition("=")
                    if key.strip().lower() == "from" and value:
                        out.append(self._find_or_unregistered(value, cmd.line))
            return out
        return []

    def _build_dependencies(self) -> None:
        for st in list(self.states):
            if st.stage is None:
                continue
            base = self.by_name.get(st.base_name.lower()) if st.base_name != SCRATCH else None
            if (
                base is not None
                and base is not st
                and base.index < st.index
                and not st.from_named_context
            ):
                st.base = base
            elif base is st or (base is not None and base.index >= st.index):
                # BuildKit only links FROM to stages defined earlier; a later name is an image.
                pass
            for i, cmd in enumerate(st.commands):
                st.sources[i] = self._sources_of(cmd)
        # Cycles are checked before a lone stage loses its name, so the error can name it.
        self._check_cycles()
        registered = [s for s in self.states if not s.unregistered]
        if len(self.states) == 1 and registered:
            registered[0].name = ""

    def _deps_of(self, st: _Stage) -> list[_Stage]:
        deps: list[_Stage] = []
        if st.base is not None:
            deps.append(st.base)
        for srcs in st.sources.values():
            deps.extend(srcs)
        return deps

    def _check_cycles(self) -> None:
        # BuildKit's validateCircularDependency: only command sources (COPY --from, RUN
        # --mount from=) are edges (FROM links earlier stages only); the error names the stage
        # the walk started from and points at the first command on the cycle.
        visited: set[int] = set()
        path: set[int] = set()

        def visit(st: _Stage, lines: list[ins.Command]) -> list[ins.Command] | None:
            if st.index in visited:
                return None
            visited.add(st.index)
            path.add(st.index)
            for i, srcs in sorted(st.sources.items()):
                for dep in srcs:
                    chain = [*lines, st.commands[i]]
                    if dep.index in path:
                        return chain
                    found = visit(dep, chain)
                    if found is not None:
                        return found
            path.discard(st.index)
            return None

        for st in self.states:
            cycle = visit(st, [])
            if cycle is not None:
                raise self.error(
                    f"circular dependency detected on stage: {st.name}",
                    cycle[0].line,
                    cycle[0].source_code,
                )

    def _reachable(self, target: _Stage) -> list[_Stage]:
        while True:
            seen: dict[int, _Stage] = {}
            stack = [target]
            while stack:
                st = stack.pop()
                if st.index not in seen:
                    seen[st.index] = st
                    stack.extend(self._deps_of(st))
            changed = False
            for st in sorted(seen.values(), key=lambda s: s.index):
                if self._init_base(st):
                    changed = True
            if not changed:
                return sorted(seen.values(), key=lambda s: s.index)

    def _init_base(self, st: _Stage) -> bool:
        """Resolve the base of a reachable stage once; returns True when ONBUILD added deps."""
        if st.dispatched or st.based:
            return False
        st.based = True
        triggers: list[str] = []
        if st.base is not None:
            # ONBUILD in a stage fires in stages built FROM it.
            for cmd in st.base.commands:
                if isinstance(cmd, ins.OnbuildCommand):
                    triggers.append(cmd.expression)
        elif st.from_named_context:
            # The stage is not run: its image's triggers never fire (BuildKit clears them).
            if self._resolve_named_context(st) is not None:
                st.config = replace(st.config, onbuild=())
        elif st.base_name != SCRATCH:
            # FROM <name> / --from=<name>: a named context keyed by the image name wins.
            st.named_context = self._lookup_context(
                st.base_name, st.platform, st.from_line, st.from_text
            )
            if st.named_context is not None:
                image = self._resolve_named_context(st)
            else:
                image = self._resolve_base_image(st)
            if image is not None:
                triggers.extend(image.config.onbuild)
                # The triggers fire here and are not inherited by this stage's image.
                st.config = replace(st.config, onbuild=())
        if not triggers:
            return False
        new_deps = False
        parsed: list[ins.Command] = []
        for expr in triggers:
            try:
                trigger_df = parse(expr + "\n", filename=self.filename)
            except DockerfileError as err:
                raise self.located(err, st.from_line, st.from_text) from None
            if len(trigger_df.nodes) != 1:
                raise self.error(
                    "onbuild trigger should be a single expression", st.from_line, st.from_text
                )
            for node in trigger_df.nodes:
                try:
                    cmd = parse_instruction(node, self.filename)
                except DockerfileError as err:
                    raise self.located(err, st.from_line, st.from_text) from None
                if isinstance(cmd, ins.FromCommand | ins.OnbuildCommand | ins.MaintainerCommand):
                    raise self.error(
                        f"{node.instruction.upper()} isn't allowed as an ONBUILD trigger",
                        st.from_line,
                        st.from_text,
                    )
                parsed.append(cmd)
        # Prepend the triggers (BuildKit: d.commands = append(triggers, d.commands...)).
        shifted = {i + len(parsed): v for i, v in st.sources.items()}
        st.commands = parsed + st.commands
        st.onbuild_flags = [True] * len(parsed) + st.onbuild_flags
        st.trigger_count += len(parsed)
        st.sources = shifted
        for i, cmd in enumerate(parsed):
            srcs = self._sources_of(cmd)
            st.sources[i] = srcs
            if srcs:
                new_deps = True
        self._check_cycles()
        return new_deps

    def _resolve_base_image(self, st: _Stage) -> ResolvedImage | None:
        try:
            ref = normalize_ref(st.base_name)
        except DockerfileError as err:
            raise self.located(err, st.from_line, st.from_text) from None
        st.image_ref = ref
        resolved = self.resolve_image(ref, st.platform) if self.resolve_image else None
        if resolved is not None:
            st.config = replace(resolved.config, history=resolved.config.history)
            st.image_ref = resolved.ref
            st.chain_id = resolved.chain_id
            st.resolved = True
        else:
            st.chain_id = None
            st.resolved = False
            st.provisional = True
        return resolved

    def _lookup_context(
        self, name: str, platform: Platform, line: int | None, text: str, *, stage: bool = False
    ) -> NamedContext | None:
        try:
            return lookup(self.opts.build_contexts, name, platform, stage=stage)
        except ContextError as err:
            raise self.error(str(err), line, text) from None

    def _resolve_named_context(self, st: _Stage) -> ResolvedImage | None:
        """Resolve an image or oci-layout named context (local and scratch need nothing).

        With ``resolve_context`` (a build) the image must exist; without it (a plan) an image
        context is looked up like ``FROM`` and is provisional when absent, and so is a layout.

        Raises:
            ContextError: the image is not in the store, the layout cannot be used.
        """
        named = st.named_context
        assert named is not None
        if named.kind not in ("image", "oci-layout"):
            return None
        resolved: ResolvedImage | None = None
        if named.kind == "image":
            try:
                st.image_ref = normalize_ref(named.ref)
            except DockerfileError:
                raise ContextError(
                    f"build context {named.key!r}: invalid image reference {named.ref!r}"
                ) from None
        else:
            st.image_ref = named.value
        if self.resolve_context is not None:
            resolved = self.resolve_context(named, st.platform)
        elif named.kind == "image" and self.resolve_image is not None:
            resolved = self.resolve_image(st.image_ref, st.platform)
        if resolved is not None:
            st.config = resolved.config
            st.image_ref = resolved.ref
            st.chain_id = resolved.chain_id
            st.resolved = True
        else:
            # Nothing to resolve with (a plan without a store): keyed by the value, marked.
            st.chain_id = None
            st.resolved = False
            st.provisional = True
        return resolved

    # -- dispatch ----------------------------------------------------------------------

    def _dispatch_all(self, reachable: list[_Stage]) -> None:
        # States made for `COPY --from=<image>` depend on nothing and are ready before any
        # stage runs (BuildKit marks them dispatched when it resolves their image).
        for st in sorted(reachable, key=lambda s: (not s.unregistered, s.index)):
            if st.dispatched:
                continue
            self._dispatch_stage(st)

    def _init_state(self, st: _Stage) -> None:
        if st.base is not None:
            base = st.base
            st.state = self._rootfs(base.state)
            st.platform = base.platform
            st.env = list(base.env)
            st.cwd = base.cwd
            st.user = base.user
            st.config = replace(base.config, onbuild=())
            st.build_args = list(base.build_args)
            st.image_ref = None
            st.provisional = base.provisional
            return
        named = st.named_context
        if named is not None and named.kind == "local":
            local = self._local_vertex(
                named.key, named.path, display=f"[context {named.key}] load from client"
            )
            # A replaced stage or a --from=<name> source is read as it is (COPY --from, mounts);
            # a stage built FROM the directory gets it as a root filesystem.
            direct = st.from_named_context or st.unregistered
            st.state = local if direct else self._rootfs(local)
        if st.base_name == SCRATCH or (named is not None and named.kind in ("local", "scratch")):
            # BuildKit's emptyImage(): WorkingDir "/" (docker inspect shows it on scratch images)
            st.config = ImageConfig(
                os=st.platform.os,
                architecture=st.platform.architecture,
                variant=st.platform.variant,
                working_dir="/",
            )
            return
        if not st.based:
            if named is not None:
                self._resolve_named_context(st)
            else:
                self._resolve_base_image(st)
        chain_id = st.chain_id
        resolved = st.resolved
        if resolved and chain_id is None:
            return  # an image without layers behaves as scratch
        ref = st.image_ref or st.base_name
        if named is not None:
            # BuildKit names a context's image "[context <key>] <ref as given>" (no step).
            what = named.ref if named.kind == "image" else "OCI load from client"
            meta = VertexMeta(
                name=f"[context {named.key}] {what}",
                stage="",
                step=None,
                total=None,
                line=None,
                instruction="",
            )
        else:
            meta = VertexMeta(
                name=self._prefix(st, f"FROM {ref}"),
                stage=st.name,
                step=st.cmd_index if st.cmd_total else None,
                total=st.cmd_total or None,
                line=st.from_line,
                instruction=st.from_text,
            )
        st.state = self.graph.add(
            ImageSource(ref=ref, chain_id=chain_id, platform=st.platform), (), meta
        )

    def _rootfs(self, state: str | None) -> str | None:
        """``state`` as a root filesystem: a local named context is copied into a layer first
        (containers and file ops work on layers; BuildKit mounts the transferred directory)."""
        if state is None:
            return None
        op = self.graph.vertices[state].op
        if not isinstance(op, LocalSource):
            return state
        return self.graph.add(
            FileOp(
                actions=(
                    CopyAction(
                        src_input=0,
                        src=("/",),
                        dest="/",
                        wildcard=False,
                        follow_symlinks=False,
                    ),
                ),
                dest_input=-1,
            ),
            (state,),
            VertexMeta(
                name=f"[context {op.name}] copy into a layer",
                stage="",
                step=None,
                total=None,
                line=None,
                instruction="",
            ),
        )

    def _count_steps(self, st: _Stage) -> None:
        # BuildKit (buildDispatchStates): a stage replaced by a named context, and a state made
        # for `COPY --from=<image>`, have no total, so their vertices carry no "[k/n]" prefix.
        if st.from_named_context or st.unregistered:
            st.cmd_total = 0
            return
        total = 1 if (st.base is None and st.base_name != SCRATCH) else 0
        for cmd in st.commands[st.trigger_count :]:
            if isinstance(
                cmd, ins.AddCommand | ins.CopyCommand | ins.RunCommand | ins.WorkdirCommand
            ):
                total += 1
        # initOnBuildTriggers adds every trigger, whatever its instruction.
        st.cmd_total = total + st.trigger_count

    def _dispatch_stage(self, st: _Stage) -> None:
        self._count_steps(st)
        self._init_state(st)
        st.dispatched = True
        if st.unregistered:
            return
        if st.config.get_env("PATH") is None and st.platform.os != "windows":
            st.config = st.config.with_env("PATH", DEFAULT_PATH)
        if st.base is None:
            for item in st.config.env:
                key, _, value = item.partition("=")
                st.add_env(key, value)
            if st.config.working_dir:
                st.cwd = _normalize_workdir("/", st.config.working_dir)
            if st.config.user:
                st.user = st.config.user
        if st.from_named_context:
            # A named context replaces the whole stage: its instructions never run
            # (BuildKit marks the state dispatched when it loads the context).
            return
        for i, cmd in enumerate(st.commands):
            try:
                self._dispatch(st, cmd, st.sources.get(i, []), st.onbuild_flags[i])
            except DockerfileError as err:
                raise self.located(err, cmd.line, cmd.source_code) from None

    def _lexer(self, st: _Stage, base: Lexer | None = None) -> Lexer:
        lex = base or self.lex
        return replace(lex, skip_unset_env=True) if st.provisional else lex

    def _expander(self, st: _Stage) -> Callable[[str], str]:
        env = st.env_map()
        lex = self._lexer(st)
        return lambda word: lex.process_word(word, env)

    def _dispatch(self, st: _Stage, cmd: ins.Command, sources: list[_Stage], onbuild: bool) -> None:
        if not isinstance(cmd, ins.ArgCommand):
            cmd = cmd.expand(self._expander(st))
        if isinstance(cmd, ins.CopyCommand | ins.AddCommand):
            raw = self._lexer(st, Lexer(escape="\\", skip_process_quotes=True))
            env = st.env_map()
            cmd = cmd.expand_raw(lambda w: raw.process_word(w, env))
        st_onbuild = onbuild
        if isinstance(cmd, ins.EnvCommand):
            parts = []
            for kv in cmd.env:
                st.add_env(kv.key, kv.value)
                st.config = st.config.with_env(kv.key, kv.value)
                parts.append(f"{kv.key}={kv.value}")
            self._history(st, "ENV " + " ".join(parts), False)
        elif isinstance(cmd, ins.ArgCommand):
            self._dispatch_arg(st, cmd)
        elif isinstance(cmd, ins.LabelCommand):
            parts = []
            for kv in cmd.labels:
                st.config = st.config.with_label(kv.key, kv.value)
                parts.append(f"{kv.key}={kv.value}")
            self._history(st, "LABEL " + " ".join(parts), False)
        elif isinstance(cmd, ins.MaintainerCommand):
            st.config = replace(st.config, author=cmd.maintainer)
            self._history(st, f"MAINTAINER {cmd.maintainer}", False)
        elif isinstance(cmd, ins.WorkdirCommand):
            self._dispatch_workdir(st, cmd, st_onbuild)
        elif isinstance(cmd, ins.UserCommand):
            st.user = cmd.user
            st.config = replace(st.config, user=cmd.user)
            self._history(st, f"USER {cmd.user}", False)
        elif isinstance(cmd, ins.ShellCommand):
            st.config = replace(st.config, shell=cmd.shell)
            self._history(st, f"SHELL [{' '.join(cmd.shell)}]", False)
        elif isinstance(cmd, ins.RunCommand):
            self._dispatch_run(st, cmd, sources, st_onbuild)
        elif isinstance(cmd, ins.CmdCommand):
            args = self._with_shell(st, cmd.cmd_line) if cmd.prepend_shell else cmd.cmd_line
            st.config = replace(st.config, cmd=tuple(args))
            st.cmd_set = True
            self._history(st, f"CMD {_go_list(args)}", False)
        elif isinstance(cmd, ins.EntrypointCommand):
            args = self._with_shell(st, cmd.cmd_line) if cmd.prepend_shell else cmd.cmd_line
            st.config = replace(st.config, entrypoint=tuple(args))
            if not st.cmd_set:
                st.config = replace(st.config, cmd=None)
            self._history(st, f"ENTRYPOINT {_go_list(args)}", False)
        elif isinstance(cmd, ins.HealthcheckCommand):
            h = cmd.health
            st.config = replace(
                st.config,
                healthcheck=Healthcheck(
                    test=h.test,
                    interval_ns=h.interval,
                    timeout_ns=h.timeout,
                    start_period_ns=h.start_period,
                    start_interval_ns=h.start_interval,
                    retries=h.retries,
                ),
            )
            # Go's "%+v" of the HealthcheckConfig struct (durations as time.Duration prints them).
            self._history(
                st,
                f"HEALTHCHECK {{Test:[{' '.join(h.test)}] Interval:{_go_duration(h.interval)} "
                f"Timeout:{_go_duration(h.timeout)} StartPeriod:{_go_duration(h.start_period)} "
                f"StartInterval:{_go_duration(h.start_interval)} Retries:{h.retries}}}",
                False,
            )
        elif isinstance(cmd, ins.ExposeCommand):
            env = st.env_map()
            ports: list[str] = []
            for p in cmd.ports:
                for word in self._lexer(st).process_words(p, env):
                    ports.extend(_expand_ports(word))
            merged = tuple(sorted(set(st.config.exposed_ports) | set(ports)))
            st.config = replace(st.config, exposed_ports=merged)
            self._history(st, f"EXPOSE [{' '.join(ports)}]", False)
        elif isinstance(cmd, ins.VolumeCommand):
            for v in cmd.volumes:
                if v == "":
                    raise DockerfileError("VOLUME specified can not be an empty string")
            merged = tuple(dict.fromkeys((*st.config.volumes, *cmd.volumes)))
            st.config = replace(st.config, volumes=merged)
            self._history(st, f"VOLUME [{' '.join(cmd.volumes)}]", False)
        elif isinstance(cmd, ins.StopSignalCommand):
            _check_signal(cmd.signal)
            st.config = replace(st.config, stop_signal=cmd.signal)
            self._history(st, f"STOPSIGNAL {cmd.signal}", False)
        elif isinstance(cmd, ins.OnbuildCommand):
            st.config = replace(st.config, onbuild=(*st.config.onbuild, cmd.expression))
        elif isinstance(cmd, ins.CopyCommand | ins.AddCommand):
            self._dispatch_copy(st, cmd, sources, st_onbuild)
        else:  # pragma: no cover - FromCommand never reaches a stage body
            raise DockerfileError(f"unexpected instruction {cmd.name}")

    def _dispatch_arg(self, st: _Stage, cmd: ins.ArgCommand) -> None:
        parts = []
        for arg in cmd.args:
            value: str | None
            if arg.key in self.opts.build_args:
                value = self.opts.build_args[arg.key]
            elif arg.default is not None:
                value = self._lexer(st).process_word(arg.default, st.env_map())
            elif arg.key in self.global_args:
                value = self.global_args[arg.key]
            else:
                value = None
            self.declared_args.add(arg.key)
            if value is not None and arg.key not in _NON_ENV_ARGS:
                st.add_env(arg.key, value)
            st.build_args.append((arg.key, value))
            parts.append(arg.key if value is None else f"{arg.key}={value}")
        self._history(st, "ARG " + " ".join(parts), False)

    def _prefix(self, st: _Stage, text: str, onbuild: bool = False) -> str:
        if st.cmd_total == 0:
            return text
        st.cmd_index += 1
        width = len(str(st.cmd_total))
        out = "[" + (st.name + " " if st.name else "")
        out += f"{st.cmd_index:>{width}}/{st.cmd_total}] "
        if onbuild:
            out += "ONBUILD "
        return out + text

    def _meta(self, st: _Stage, cmd: ins.Command, name: str) -> VertexMeta:
        return VertexMeta(
            name=name,
            stage=st.name,
            step=st.cmd_index if st.cmd_total else None,
            total=st.cmd_total or None,
            line=cmd.line,
            instruction=cmd.source_code,
            ignore_cache=st.ignore_cache,
        )

    def _internal_meta(self, st: _Stage, cmd: ins.Command, name: str) -> VertexMeta:
        """Meta of a vertex a command needs that is not a step of its own (inline documents,
        downloads, cache-mount preparation): named, located at the command, unnumbered."""
        return VertexMeta(
            name=name,
            stage=st.name,
            step=None,
            total=None,
            line=cmd.line,
            instruction=cmd.source_code,
        )

    def _display(self, st: _Stage, cmd: ins.Command) -> str:
        text = cmd.source_code
        word, _, rest = text.partition(" ")
        text = word.upper() + (" " + rest if rest else "")
        # BuildKit names RUN steps with a lexer that keeps quotes and unset variables, and
        # COPY/ADD/WORKDIR with the plain one: `COPY ["a b", "/c"]` shows as `COPY [a b, /c]`.
        if isinstance(cmd, ins.RunCommand):
            lex = Lexer(escape=self.lex.escape, raw_quotes=True, skip_unset_env=True)
        else:
            lex = self.lex
        try:
            return lex.process_word(text, st.env_map())
        except DockerfileError:
            return text

    def _history(self, st: _Stage, created_by: str, layer: bool) -> None:
        entry = HistoryEntry(created_by=created_by, comment=HISTORY_COMMENT, empty_layer=not layer)
        st.config = replace(st.config, history=(*st.config.history, entry))

    def _with_shell(self, st: _Stage, args: tuple[str, ...]) -> tuple[str, ...]:
        shell = st.config.shell if st.config.shell else ("/bin/sh", "-c")
        return (*shell, *args)

    def _dispatch_workdir(self, st: _Stage, cmd: ins.WorkdirCommand, onbuild: bool) -> None:
        wd = _normalize_workdir(st.config.working_dir or "/", cmd.path)
        st.config = replace(st.config, working_dir=wd)
        st.cwd = wd
        layer = False
        if wd != "/":
            name = self._prefix(st, self._display(st, cmd), onbuild)
            chown = ChownSpec(st.user) if st.user else None
            op = FileOp(
                actions=(MkdirAction(path=wd, mode=0o755, make_parents=True, chown=chown),),
                dest_input=0 if st.state else -1,
            )
            st.state = self.graph.add(
                op,
                (st.state,) if st.state else (),
                replace(
                    self._meta(st, cmd, name), ignore_cache=False
                ),  # BuildKit: no IgnoreCache on WORKDIR
            )
            layer = True
        # WORKDIR / counts in the stage's total but makes no op, so BuildKit never calls
        # prefixCommand for it: its number is skipped and the stage ends short of n/n.
        self._history(st, f"WORKDIR {wd}", layer)

    def _dispatch_run(
        self, st: _Stage, cmd: ins.RunCommand, sources: list[_Stage], onbuild: bool
    ) -> None:
        args = list(cmd.cmd_line)
        extra_inputs: list[str] = []
        mounts: list[Mount] = []
        display = self._display(st, cmd)
        if cmd.files:
            first = cmd.files[0]
            data = first.data
            if len(cmd.files) == 1 and _is_heredoc_word(args[0] if args else ""):
                if data.startswith("#!"):
                    script = self.graph.add(
                        FileOp(
                            actions=(MkfileAction(path="/" + first.name, data=data, mode=0o755),),
                            dest_input=-1,
                        ),
                        (),
                        self._internal_meta(st, cmd, "preparing inline document"),
                    )
                    extra_inputs.append(script)
                    mounts.append(Mount(dest="/dev/pipes/", input=-2, selector="/", readonly=True))
                    args = ["/dev/pipes/" + first.name]
                else:
                    args = [data]
                display += f" ({_summarize_heredoc(first.data)})"
            else:
                text = args[0]
                for f in cmd.files:
                    text += "\n" + f.data + f.name
                args = [text]
        if cmd.prepend_shell:
            args = list(self._with_shell(st, tuple(args)))
        name = self._prefix(st, display, onbuild)
        assert cmd.mounts is not None
        source_iter = iter(sources)
        ssh_index = 0
        for m in cmd.mounts:
            if m.type == "ssh":
                ssh_index += 1
            target = m.target or (
                m.secret_target or ""
                if m.type == "secret"
                else m.ssh_target(ssh_index - 1)
                if m.type == "ssh"
                else ""
            )
            if not target.startswith("/"):
                target = posixpath.join("/", st.cwd, target)
            target = posixpath.normpath(target)
            if target == "/":
                raise DockerfileError(f'invalid mount target "{target}"')
            if m.type in ("secret", "ssh", "tmpfs"):
                mounts.append(
                    Mount(
                        dest=_special_target(m, target, ssh_index),
                        type=m.type,  # type: ignore[arg-type]
                        readonly=m.read_only,
                        secret_id=m.secret_id
                        if m.type == "secret"
                        else (m.ssh_id if m.type == "ssh" else ""),
                        required=m.required,
                        mode=m.effective_mode if m.type != "tmpfs" else None,
                        uid=m.effective_uid if m.type != "tmpfs" else None,
                        gid=m.effective_gid if m.type != "tmpfs" else None,
                        size=m.size_limit or None if m.type == "tmpfs" else None,
                    )
                )
                continue
            src_vertex: str | None
            if m.from_:
                src = next(source_iter)
                if not src.dispatched:
                    raise DockerfileError(
                        f'cannot mount from stage "{m.from_}" to "{m.target}", stage needs to be defined before current command'
                    )
                src_vertex = src.state
            elif m.type == "cache":
                src_vertex = None
            else:
                src_vertex = self._local_vertex("context", self.opts.context_dir)
            selector = posixpath.join("/", m.source) if m.source else ""
            if selector == "/":
                selector = ""
            if (
                m.type == "cache"
                and not selector
                and (m.uid is not None or m.gid is not None or m.mode is not None)
            ):
                prep = self.graph.add(
                    FileOp(
                        actions=(
                            MkdirAction(
                                path="/cache",
                                mode=m.effective_mode or 0o755,
                                chown=ChownSpec(str(m.effective_uid), str(m.effective_gid)),
                            ),
                        ),
                        dest_input=-1,
                    ),
                    (),
                    self._internal_meta(st, cmd, "[internal] setting cache mount permissions"),
                )
                src_vertex = prep
                selector = "/cache"
            index = -1
            if src_vertex is not None:
                extra_inputs.append(src_vertex)
                index = -2 - (len(extra_inputs) - 1)  # resolved below
            mounts.append(
                Mount(
                    dest=target,
                    input=index,
                    selector=selector,
                    readonly=m.read_only,
                    type=m.type,  # type: ignore[arg-type]
                    cache_id=m.effective_cache_id if m.type == "cache" else "",
                    cache_sharing=m.effective_sharing if m.type == "cache" else "",
                )
            )
        inputs: list[str] = []
        if st.state is not None:
            inputs.append(st.state)
        root = Mount(dest="/", input=0 if st.state is not None else -1, output=True)
        offset = len(inputs)
        unique: dict[str, int] = {}
        for v in extra_inputs:
            if v not in unique:
                unique[v] = offset + len(unique)
                inputs.append(v)
        # Map the placeholder indexes of extra inputs onto real input positions.
        fixed: list[Mount] = [root]
        placeholder = 0
        for mount in mounts:
            if mount.input <= -2:
                vertex = extra_inputs[placeholder]
                placeholder += 1
                mount = replace(mount, input=unique[vertex])
            fixed.append(mount)
        env = tuple(f"{k}={v}" for k, v in st.env)
        network = cmd.network or "default"
        security = cmd.security or "sandbox"
        declared_proxy = {k.lower() for k in self.declared_args}
        proxy = tuple(
            p for p in self.proxy_env if p.partition("=")[0].lower() not in declared_proxy
        )
        op = ExecOp(
            args=tuple(args),
            env=env,
            cwd=st.cwd,
            user=st.user,
            network=network,  # type: ignore[arg-type]
            security=security,  # type: ignore[arg-type]
            mounts=tuple(fixed),
            proxy_env=proxy,
            platform=st.platform,
        )
        st.state = self.graph.add(op, tuple(inputs), self._meta(st, cmd, name))
        self._history(st, "RUN " + _run_command_string(args, st) + " # buildkit", True)

    def _local_vertex(self, name: str, path: str, display: str = "") -> str:
        key = f"{name}\0{path}"
        if key not in self.context_vertex:
            self.context_vertex[key] = self.graph.add(
                LocalSource(name=name, path=path),
                (),
                VertexMeta(
                    name=display or "[internal] load build context",
                    stage="",
                    step=None,
                    total=None,
                    line=None,
                    instruction="",
                ),
            )
        return self.context_vertex[key]

    def _dispatch_copy(
        self,
        st: _Stage,
        cmd: ins.CopyCommand | ins.AddCommand,
        sources: list[_Stage],
        onbuild: bool,
    ) -> None:
        is_add = isinstance(cmd, ins.AddCommand)
        dest = _path_relative_to_workdir(st.cwd, cmd.dest)
        chown = _parse_chown(cmd.chown) if cmd.chown else None
        chmod = _check_chmod(cmd.chmod) if cmd.chmod else ""
        checksum = cmd.checksum if isinstance(cmd, ins.AddCommand) else ""
        keep_git_dir = cmd.keep_git_dir if isinstance(cmd, ins.AddCommand) else None
        unpack_flag = cmd.unpack if isinstance(cmd, ins.AddCommand) else None
        parents = cmd.parents if isinstance(cmd, ins.CopyCommand) else False
        if checksum:
            if len(cmd.sources) != 1:
                raise DockerfileError("checksum can't be specified for multiple sources")
            if not (
                httpsrc.is_http_url(cmd.sources[0])
                or gitsrc.parse_git_ref(cmd.sources[0]) is not None
            ):
                raise DockerfileError("checksum requires HTTP(S) or Git sources")
        name = self._prefix(st, self._display(st, cmd), onbuild)
        inputs: list[str] = []

        def input_index(vertex: str | None) -> int:
            if vertex is None:
                return -1
            if vertex not in inputs:
                inputs.append(vertex)
            return inputs.index(vertex) + 1  # input 0 is the destination

        actions: list[CopyAction] = []
        from_stage: _Stage | None = sources[0] if sources else None
        if from_stage is not None and not from_stage.dispatched:
            raise DockerfileError(
                f'cannot copy from stage "{cmd.from_ if isinstance(cmd, ins.CopyCommand) else ""}", '
                f'it needs to be defined before current stage "{st.name}"'
            )
        for src in cmd.sources:
            git_ref = gitsrc.parse_git_ref(src)
            if git_ref is not None:
                if not is_add:
                    raise DockerfileError("source can't be a git ref for COPY")
                commit = git_ref.ref if gitsrc.is_full_commit(git_ref.ref) else None
                if checksum and commit and not commit.startswith(checksum):
                    raise DockerfileError(f"checksum mismatch {checksum!r} != {commit!r}")
                vertex = self.graph.add(
                    GitSource(
                        remote=git_ref.remote,
                        ref=git_ref.ref or "",
                        subdir=git_ref.subdir,
                        keep_git_dir=bool(keep_git_dir),
                        commit=commit,
                        checksum=checksum or None,
                    ),
                    (),
                    self._internal_meta(st, cmd, name),
                )
                actions.append(
                    CopyAction(
                        src_input=input_index(vertex),
                        src=("/",),
                        dest=dest,
                        chown=chown,
                        chmod=chmod,
                        wildcard=False,
                        follow_symlinks=False,
                        dir_copy_contents=False,
                        include=(),
                        exclude=cmd.excludes,
                    )
                )
            elif httpsrc.is_http_url(src):
                if not is_add:
                    raise DockerfileError("source can't be a URL for COPY")
                if checksum:
                    try:
                        httpsrc.parse_checksum(checksum)
                    except SourceError as exc:
                        raise DockerfileError(str(exc)) from None
                filename = httpsrc.filename_from_url(src)
                vertex = self.graph.add(
                    HttpSource(url=src, filename=filename, checksum=checksum or None),
                    (),
                    self._internal_meta(st, cmd, name),
                )
                actions.append(
                    CopyAction(
                        src_input=input_index(vertex),
                        src=("/" + filename,),
                        dest=dest,
                        chown=chown,
                        chmod=chmod,
                        wildcard=False,
                        follow_symlinks=False,
                        dir_copy_contents=False,
                        attempt_unpack=bool(unpack_flag),
                        exclude=cmd.excludes,
                    )
                )
            else:
                include: tuple[str, ...] = ()
                path = src
                if parents:
                    parent, sep, pattern = src.partition("/./")
                    if not sep:
                        pattern, parent = src, "/"
                    include = (posixpath.normpath(posixpath.join("/", pattern)).lstrip("/"),)
                    path = parent
                path = posixpath.normpath(posixpath.join("/", path))
                if path.startswith("//"):
                    path = path[1:]
                local: str | None = (
                    from_stage.state
                    if from_stage is not None
                    else self._local_vertex("context", self.opts.context_dir)
                )
                unpack = is_add if unpack_flag is None else unpack_flag
                actions.append(
                    CopyAction(
                        src_input=input_index(local),
                        src=(path,),
                        dest=dest,
                        chown=chown,
                        chmod=chmod,
                        attempt_unpack=unpack and from_stage is None,
                        include=include,
                        exclude=cmd.excludes,
                        parents=parents,
                        allow_empty_wildcard=True,
                    )
                )
        for content in cmd.source_contents:
            file_vertex = self.graph.add(
                FileOp(
                    actions=(
                        MkfileAction(
                            path="/" + content.path.lstrip("/"), data=content.data, mode=0o644
                        ),
                    ),
                    dest_input=-1,
                ),
                (),
                self._internal_meta(st, cmd, "preparing inline document"),
            )
            actions.append(
                CopyAction(
                    src_input=input_index(file_vertex),
                    src=("/" + content.path.lstrip("/"),),
                    dest=dest,
                    chown=chown,
                    chmod=chmod,
                    wildcard=False,
                    follow_symlinks=False,
                    dir_copy_contents=False,
                )
            )
        if not actions:
            raise DockerfileError(f"{cmd.name.upper()} requires at least two arguments")
        meta = self._meta(st, cmd, name)
        user_db = 0 if chown is not None and chown.by_name else None
        if cmd.link and not chmod:
            # --link: copy onto scratch, then merge onto the stage (a layer of its own).
            shifted = tuple(
                replace(a, src_input=a.src_input - 1 if a.src_input > 0 else -1) for a in actions
            )
            copy_vertex = self.graph.add(
                FileOp(actions=shifted, dest_input=-1, user_db_input=None), tuple(inputs), meta
            )
            merge_name = (
                name.replace("] ", "] LINK ", 1) if name.startswith("[") else "LINK " + name
            )
            merge_inputs = (st.state, copy_vertex) if st.state else (copy_vertex,)
            st.state = self.graph.add(MergeOp(), merge_inputs, replace(meta, name=merge_name))
        elif st.state is None:
            shifted = tuple(
                replace(a, src_input=a.src_input - 1 if a.src_input > 0 else -1) for a in actions
            )
            st.state = self.graph.add(
                FileOp(actions=shifted, dest_input=-1, user_db_input=None), tuple(inputs), meta
            )
        else:
            st.state = self.graph.add(
                FileOp(actions=tuple(actions), dest_input=0, user_db_input=user_db),
                (st.state, *inputs),
                meta,
            )
        words = ["ADD" if is_add else "COPY"]
        if parents:
            words.append("--parents")
        if cmd.chown:
            words.append(f"--chown={cmd.chown}")
        if cmd.chmod:
            words.append(f"--chmod={cmd.chmod}")
        words.extend(cmd.sources)
        words.extend(f"<<{c.path}" for c in cmd.source_contents)
        words.append(cmd.dest)
        self._history(st, " ".join(words) + " # buildkit", True)

    # -- result ------------------------------------------------------------------------

    def _finish(self, target: _Stage) -> Definition:
        config = target.config
        for key, value in self.opts.labels.items():
            config = config.with_label(key, value)
        config = replace(
            config,
            os=target.platform.os,
            architecture=target.platform.architecture,
            variant=target.platform.variant,
        )
        state = self._rootfs(target.state)  # a target replaced by a local context
        needed = _ancestors(self.graph.vertices, state)
        vertices = tuple(v for d, v in self.graph.vertices.items() if d in needed)
        epoch = self.opts.build_args.get("SOURCE_DATE_EPOCH") or self.global_args.get(
            "SOURCE_DATE_EPOCH"
        )
        return Definition(
            vertices=vertices,
            target=state,
            config=config,
            target_stage=target.stage.name if target.stage else "",
            source_date_epoch=epoch or None,
        )


# ----------------------------------------------------------------------------- helpers


def convert(
    dockerfile: Dockerfile,
    options: BuildOptions | None = None,
    *,
    resolve_image: ImageResolver | None = None,
    resolve_context: ContextResolver | None = None,
) -> Definition:
    """:func:`engine.frontend.convert.convert`, which documents it."""
    return _Converter(dockerfile, options or BuildOptions(), resolve_image, resolve_context).run()


def _check_syntax(df: Dockerfile) -> None:
    syntax = df.directives.syntax
    if not syntax:
        return
    ref = syntax.split()[0]
    name = ref.split("@")[0]
    repo, _, _tag = name.rpartition(":") if ":" in name.split("/")[-1] else (name, "", "")
    repo = repo or name
    if repo.removeprefix("docker.io/") in ("docker/dockerfile", "docker/dockerfile-upstream"):
        return
    raise DockerfileError(
        f"unsupported frontend {ref!r} in '# syntax=': nbbuild runs the standard Dockerfile "
        "frontend only and does not fetch frontends (remove the directive or use docker/dockerfile)",
        filename=df.filename,
        line=1,
    )


def _quote(name: str | None) -> str | None:
    return f'"{name}"' if name else None


def _parse_platform(
    value: str, default: Platform, err: Callable[[str], DockerfileError]
) -> Platform:
    parts = value.lower().split("/")
    if len(parts) == 1:
        if parts[0] in ("linux", "windows", "darwin"):
            return Platform(parts[0], default.architecture, default.variant)
        return Platform(default.os, _norm_arch(parts[0]), "")
    if len(parts) in (2, 3) and all(parts):
        return Platform(
            parts[0],
            _norm_arch(parts[1]),
            parts[2] if len(parts) == 3 else ("v8" if _norm_arch(parts[1]) == "arm64" else ""),
        )
    raise err(f"failed to parse platform {value}: {value!r}: invalid platform specifier")


def _norm_arch(arch: str) -> str:
    return {
        "x86_64": "amd64",
        "x86-64": "amd64",
        "aarch64": "arm64",
        "armhf": "arm",
        "i386": "386",
    }.get(arch, arch)


def _normalize_workdir(current: str, requested: str) -> str:
    if not requested:
        raise DockerfileError("cannot normalize nothing")
    if not requested.startswith("/"):
        requested = posixpath.join("/", current, requested)
    out = posixpath.normpath(requested)
    return "/" if out.startswith("//") and out.strip("/") == "" else ("/" + out.lstrip("/"))


def _path_relative_to_workdir(cwd: str, dest: str) -> str:
    keep_slash = dest.endswith("/") or dest in (".", "")
    if dest in (".", ""):
        dest = "./"
    if dest.startswith("/"):
        out = posixpath.normpath(dest)
    else:
        out = posixpath.normpath(posixpath.join(cwd, dest))
    if out.startswith("//"):
        out = "/" + out.lstrip("/")
    if keep_slash and not out.endswith("/"):
        out += "/"
    return out


def _parse_chown(value: str) -> ChownSpec:
    # llb.WithUser: no validation at conversion (a bad name fails when the copy runs), and
    # "root" is uid 0 without a user-database lookup.
    user, _, group = value.partition(":")
    return ChownSpec(user="0" if user == "root" else user, group="0" if group == "root" else group)


def _check_chmod(value: str) -> str:
    if value.isdigit() or (value and all(c in "01234567" for c in value)):
        try:
            mode = int(value, 8)
        except ValueError:
            mode = 0o10000
        if mode > 0o7777:
            raise DockerfileError(
                f"invalid chmod parameter: '{value}'. it should be octal string and between 0 and 07777"
            )
        return value
    if value and value[0].isdigit():
        raise DockerfileError(
            f"invalid chmod parameter: '{value}'. it should be octal string and between 0 and 07777"
        )
    _validate_symbolic_mode(value)
    return value


def _validate_symbolic_mode(value: str) -> None:
    for clause in value.split(","):
        i = 0
        while i < len(clause) and clause[i] in "ugoa":
            i += 1
        if i >= len(clause) or clause[i] not in "+-=":
            raise DockerfileError(f"invalid chmod parameter: '{value}'")
        while i < len(clause):
            if clause[i] not in "+-=":
                raise DockerfileError(f"invalid chmod parameter: '{value}'")
            i += 1
            while i < len(clause) and clause[i] in "rwxXstugo":
                i += 1


_SIGNALS = {
    "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
    "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
    "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
}  # fmt: skip


def _check_signal(value: str) -> None:
    if value.isdigit():
        if int(value) == 0:
            raise DockerfileError(f"invalid signal: {value}")
        return
    name = value.upper().removeprefix("SIG")
    if name in _SIGNALS:
        return
    if name.startswith("RTMIN") or name.startswith("RTMAX"):
        return
    raise DockerfileError(
        f"invalid signal: {value}", suggestion=did_you_mean(name, sorted(_SIGNALS))
    )


def _expand_ports(word: str) -> list[str]:
    port, _, proto = word.partition("/")
    proto = proto.lower() or "tcp"
    if proto not in ("tcp", "udp", "sctp"):
        raise DockerfileError(f"invalid proto: {proto}")
    if "-" in port:
        lo, _, hi = port.partition("-")
        if not (lo.isdigit() and hi.isdigit()) or int(lo) > int(hi):
            raise DockerfileError(f"invalid range specified for port: {port}")
        return [f"{p}/{proto}" for p in range(int(lo), int(hi) + 1)]
    if ":" in port:
        port = port.rsplit(":", 1)[1]
    if not port.isdigit():
        raise DockerfileError(f"invalid containerPort: {port}")
    return [f"{port}/{proto}"]


def _go_duration(ns: int) -> str:
    """Go's ``time.Duration.String()``."""
    if ns == 0:
        return "0s"
    sign, u = ("-", -ns) if ns < 0 else ("", ns)

    def frac(value: int, scale: int) -> str:
        whole, rem = divmod(value, scale)
        if not rem:
            return str(whole)
        digits = str(rem).rjust(len(str(scale)) - 1, "0").rstrip("0")
        return f"{whole}.{digits}"

    if u < 1_000:
        return f"{sign}{u}ns"
    if u < 1_000_000:
        return f"{sign}{frac(u, 1_000)}µs"
    if u < 1_000_000_000:
        return f"{sign}{frac(u, 1_000_000)}ms"
    out = frac(u % 60_000_000_000, 1_000_000_000) + "s"
    minutes = u // 60_000_000_000
    if minutes:
        out = f"{minutes % 60}m{out}"
        if minutes >= 60:
            out = f"{minutes // 60}h{out}"
    return sign + out


def _go_list(args: tuple[str, ...] | list[str]) -> str:
    return (
        "[" + " ".join('"' + a.replace("\\", "\\\\").replace('"', '\\"') + '"' for a in args) + "]"
    )


def _run_command_string(args: list[str], st: _Stage) -> str:
    env = st.env_map()
    build_env: dict[str, str] = {}
    for key, value in st.build_args:
        build_env[key] = env.get(key, value or "")
    prefix = (
        [f"|{len(build_env)}", *(f"{k}={v}" for k, v in build_env.items())] if build_env else []
    )
    return " ".join([*prefix, *args])


def _special_target(m: ins_mounts.Mount, target: str, ssh_index: int) -> str:
    return target


def _summarize_heredoc(doc: str) -> str:
    lines = doc.strip().replace("\r\n", "\n").split("\n")
    return lines[0] + ("..." if len(lines) > 1 else "")


def _is_heredoc_word(word: str) -> bool:
    """Whether a RUN command line is nothing but a heredoc word (BuildKit's ``MustParseHeredoc``
    of the whole line): ``<<EOF`` or ``<<-'EOF'`` is, ``<<EOF sh > out`` is not (the shell then
    gets the line and its documents as they are)."""
    try:
        return _heredoc_from_word(word) is not None
    except Exception:  # BuildKit's MustParseHeredoc: a lexing error means "not a heredoc"
        return False


def _ancestors(vertices: Mapping[str, Vertex], target: str | None) -> set[str]:
    needed: set[str] = set()
    stack = [target] if target else []
    while stack:
        digest = stack.pop()
        if digest in needed:
            continue
        needed.add(digest)
        stack.extend(vertices[digest].inputs)
    return needed
