"""nbbuild: Dockerfile builds with BuildKit's caching model, where data scientists work.

In a notebook::

    %load_ext nbbuild

    %%dockerfile -t app
    FROM busybox
    RUN echo hello > /greeting

or from Python, ``nbbuild.build("FROM busybox\\nRUN echo hi\\n", tags="app")``. Both return a
:class:`BuildResult` (the steps with their cache keys and statuses, the graph, the image) and
raise a :class:`BuildError` (``StepFailed``, …) when the build fails. ``%nbbuild`` inspects
builds (history, cache, doctor, run, images).

The engine lives in the ``engine`` package, the CLI in :mod:`nbbuild.cli`. ``import nbbuild``
imports neither IPython nor the engine's heavy parts: they load when first used.
"""

from __future__ import annotations

import os

from engine.errors import (
    BuildCanceled,
    BuildError,
    DockerfileError,
    NbbuildError,
    StepFailed,
    UsageError,
)

# Not `from typing import TYPE_CHECKING`: every nbbuild command imports this package first
# (nbbuild.client), and typing costs milliseconds of each one (mypy takes the name as True).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path
    from typing import Any

    from IPython.core.interactiveshell import InteractiveShell

    from nbbuild._result import BuildResult
    from nbbuild._session import Session, Settings

__all__ = [
    "BuildCanceled",
    "BuildError",
    "BuildResult",
    "DockerfileError",
    "NbbuildError",
    "StepFailed",
    "UsageError",
    "build",
    "load_ipython_extension",
    "unload_ipython_extension",
]

_API_SESSION: list[Session] = []  # the session of builds made without the extension loaded


def __getattr__(name: str) -> Any:
    # BuildResult is re-exported lazily: it imports the display code.
    if name == "BuildResult":
        from nbbuild._result import BuildResult

        return BuildResult
    raise AttributeError(f"module 'nbbuild' has no attribute {name!r}")


def load_ipython_extension(ipython: InteractiveShell) -> None:
    """``%load_ext nbbuild``: register ``%%dockerfile`` and ``%nbbuild`` on ``ipython``."""
    from nbbuild._magics import DockerfileMagics

    if "DockerfileMagics" in ipython.magics_manager.registry:
        unload_ipython_extension(ipython)  # loaded by hand twice: start afresh
    ipython.register_magics(DockerfileMagics(shell=ipython))


def unload_ipython_extension(ipython: InteractiveShell) -> None:
    """``%unload_ext nbbuild``: cancel running builds, close the store, remove the magics."""
    manager = ipython.magics_manager
    magics = manager.registry.pop("DockerfileMagics", None)
    if magics is None:
        return
    magics.session.stop()
    for kind, names in magics.magics.items():
        for name in names:
            if manager.magics[kind].get(name) is not None:
                owner = getattr(manager.magics[kind][name], "__self__", None)
                if owner is magics:
                    del manager.magics[kind][name]
    if magics in ipython.configurables:
        ipython.configurables.remove(magics)


def _context() -> tuple[Session, Settings]:
    """The loaded extension's session and settings, else the API's own with the defaults."""
    from nbbuild._session import Session, Settings

    try:
        from IPython.core.getipython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency
        shell = None
    else:
        shell = get_ipython()
    magics = shell.magics_manager.registry.get("DockerfileMagics") if shell is not None else None
    if magics is not None:
        return magics.session, magics.settings
    if not _API_SESSION:
        _API_SESSION.append(Session())
    return _API_SESSION[0], Settings()


def build(
    dockerfile: str | os.PathLike[str],
    context: str | os.PathLike[str] | None = None,
    *,
    tags: str | Sequence[str] = (),
    target: str = "",
    build_args: Mapping[str, str] | None = None,
    build_contexts: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    no_cache: bool = False,
    no_cache_filter: str | Sequence[str] = (),
    network: str | None = None,
    allow: str | Sequence[str] = (),
    outputs: str | Sequence[str] = (),
    progress: str | None = None,
    name: str = "",
    raise_error: bool | None = None,
) -> BuildResult:
    """Build a Dockerfile, as ``%%dockerfile`` does, and return the same :class:`BuildResult`.

    Args:
        dockerfile: the Dockerfile's text, or the path of a Dockerfile (a ``Path``, or a
            one-line string naming an existing file).
        context: the build context directory (default: the current working directory). The
            notebook's own files (``*.ipynb``, ``.ipynb_checkpoints``) are left out unless the
            context's ``.dockerignore`` brings them back.
        tags: ``name[:tag]`` for the local image store (buildx ``-t``).
        target: the stage to build (default: the last).
        build_args: build-time variables (``--build-arg``).
        build_contexts: named contexts (``--build-context``).
        labels: image labels.
        no_cache: do not use the cache (results are still saved).
        no_cache_filter: stages not to take from the cache.
        network: network for RUN steps: ``default``, ``none`` or ``host``.
        allow: entitlements to grant: ``network.host``, ``security.insecure``.
        outputs: exports, buildx ``--output`` syntax (``type=local,dest=out``).
        progress: ``auto``, ``widget``, ``html``, ``plain`` or ``none`` (default: the
            ``DockerfileMagics.progress`` setting when the extension is loaded, else auto).
        name: the build's name in the history (default: the tag, else the context dir).
        raise_error: raise when the build fails (default: the ``raise_on_error`` setting,
            True); False returns the failed result.

    Returns:
        The result: steps with cache keys and statuses, the graph, the image id.

    Raises:
        StepFailed: a step failed (the error's ``result`` is the failed build's result).
        DockerfileError: the Dockerfile is not valid.
        UsageError: an invalid option.
        BuildCanceled: the build was canceled.
        KeyboardInterrupt: Ctrl-C (the build was canceled and has wound down).
    """
    from nbbuild._options import options_from_kwargs, to_request
    from nbbuild._session import run_build

    options = options_from_kwargs(
        context=context,
        tags=tags,
        target=target,
        build_args=build_args,
        build_contexts=build_contexts,
        labels=labels,
        no_cache=no_cache,
        no_cache_filter=no_cache_filter,
        network=network,
        allow=allow,
        outputs=outputs,
        progress=progress,
        name=name,
        raise_error=raise_error,
    )
    text, filename, path = _read_dockerfile(dockerfile, "Dockerfile")
    request = to_request(options, text, dockerfile_name=filename, dockerfile_path=path)
    session, settings = _context()
    result: BuildResult = run_build(
        session, settings, request, progress=options.progress, raise_error=options.raise_error
    )
    return result


def _read_dockerfile(
    dockerfile: str | os.PathLike[str], text_name: str
) -> tuple[str, str, Path | None]:
    """(text, name shown in errors, path) of a Dockerfile given as text or as a path."""
    if isinstance(dockerfile, str) and ("\n" in dockerfile or not os.path.isfile(dockerfile)):
        return dockerfile, text_name, None
    from pathlib import Path

    path = Path(os.fspath(dockerfile))
    try:
        return path.read_text(encoding="utf-8"), path.name, path
    except OSError as exc:
        raise UsageError(f"cannot read Dockerfile {str(path)!r}: {exc.strerror}") from None
