"""Image references: Docker's normalisation (``alpine`` → ``docker.io/library/alpine:latest``)."""

from __future__ import annotations

import re

from engine.errors import DockerfileError

__all__ = ["normalize_ref"]

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_REF = re.compile(
    rf"^(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?$"
)


def normalize_ref(name: str) -> str:
    """Normalise like Docker's ``ParseNormalizedNamed`` + ``TagNameOnly``.

    Raises:
        DockerfileError: the reference is not valid (no location: the caller adds it).
    """
    if not name or name != name.strip():
        raise DockerfileError(f"failed to parse stage name {name!r}: invalid reference format")
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        domain, remainder = first, rest
    else:
        domain, remainder = "docker.io", name
    if domain == "index.docker.io":
        domain = "docker.io"
    if domain == "docker.io" and "/" not in remainder.split("@")[0].split(":")[0]:
        remainder = "library/" + remainder
    candidate = f"{domain}/{remainder}"
    match = _REF.match(candidate)
    if match is None or match.group("domain") != domain:
        if any(c.isupper() for c in remainder.split(":")[0].split("@")[0]):
            reason = "repository name must be lowercase"
        else:
            reason = "invalid reference format"
        raise DockerfileError(f"failed to parse stage name {name!r}: {reason}")
    if match.group("tag") is None and match.group("digest") is None:
        candidate += ":latest"
    return candidate
