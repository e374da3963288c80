"""Instruction flags (``COPY --from=x``), parsed like BuildKit's ``BFlags`` (``instructions/bflag.go``).

An instruction declares the flags it accepts, then :meth:`Flags.parse` checks the ``--flags``
the parser split off the instruction. Errors use BuildKit's wording; an unknown flag gets a
did-you-mean among the flags that instruction accepts.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from engine.errors import DockerfileError
from engine.frontend.suggest import did_you_mean

__all__ = ["FlagKind", "Flags", "ParsedFlags"]


class FlagKind(enum.Enum):
    """How a flag takes its value."""

    BOOL = "bool"  # --link, --link=true, --link=false
    STRING = "string"  # --from=x, once
    STRINGS = "strings"  # --mount=..., repeatable


@dataclass(frozen=True, slots=True)
class _Spec:
    kind: FlagKind
    default: str


@dataclass(frozen=True, slots=True)
class ParsedFlags:
    """The values of one instruction's flags after :meth:`Flags.parse`."""

    values: dict[str, str]
    lists: dict[str, tuple[str, ...]]
    used: frozenset[str]

    def string(self, name: str) -> str:
        """Value of a string flag (its default when not given)."""
        return self.values[name]

    def boolean(self, name: str) -> bool:
        """Value of a bool flag (its default when not given)."""
        return self.values[name] == "true"

    def optional_bool(self, name: str) -> bool | None:
        """Value of a bool flag, or None when the flag was not given at all."""
        return self.boolean(name) if name in self.used else None

    def strings(self, name: str) -> tuple[str, ...]:
        """Every value of a repeatable flag, in order."""
        return self.lists[name]


@dataclass(slots=True)
class Flags:
    """The flags one instruction accepts. Declare with ``add_*`` and then call :meth:`parse`."""

    specs: dict[str, _Spec] = field(default_factory=dict)

    def add_bool(self, name: str, default: bool = False) -> Flags:
        """Accept ``--name``, ``--name=true`` or ``--name=false``."""
        self.specs[name] = _Spec(FlagKind.BOOL, "true" if default else "false")
        return self

    def add_string(self, name: str, default: str = "") -> Flags:
        """Accept ``--name=value`` once."""
        self.specs[name] = _Spec(FlagKind.STRING, default)
        return self

    def add_strings(self, name: str) -> Flags:
        """Accept ``--name=value`` any number of times."""
        self.specs[name] = _Spec(FlagKind.STRINGS, "")
        return self

    def parse(self, args: Sequence[str]) -> ParsedFlags:
        """Check ``args`` (e.g. ``("--from=build", "--link")``) against the declared flags.

        Raises:
            DockerfileError: without a location (the caller adds it), in BuildKit's words.
        """
        values = {name: spec.default for name, spec in self.specs.items()}
        lists: dict[str, list[str]] = {
            name: [] for name, spec in self.specs.items() if spec.kind is FlagKind.STRINGS
        }
        used: set[str] = set()
        for arg in args:
            if arg == "--":
                # POSIX: "--" ends the options; BuildKit ignores everything after it.
                break
            if not arg.startswith("--"):
                raise DockerfileError(f"arg should start with -- : {arg}")
            flag_name, has_value, value = arg.partition("=")
            name = flag_name[2:]
            spec = self.specs.get(name)
            if spec is None:
                match = did_you_mean(name, self.specs, case_sensitive=True)
                raise DockerfileError(
                    f"unknown flag: {flag_name}",
                    suggestion=None if match is None else f"--{match}",
                )
            if name in used and spec.kind is not FlagKind.STRINGS:
                raise DockerfileError(f"duplicate flag specified: {flag_name}")
            used.add(name)
            if spec.kind is FlagKind.BOOL:
                # "--link" alone means true; "--link=" is a missing value.
                if has_value and value == "":
                    raise DockerfileError(f"missing a value on flag: {flag_name}")
                lowered = value.lower()
                if lowered in ("true", ""):
                    values[name] = "true"
                elif lowered == "false":
                    values[name] = "false"
                else:
                    raise DockerfileError(
                        f"expecting boolean value for flag {flag_name}, not: {value}"
                    )
            else:
                if not has_value:
                    raise DockerfileError(f"missing a value on flag: {flag_name}")
                if spec.kind is FlagKind.STRING:
                    values[name] = value
                else:
                    lists[name].append(value)
        return ParsedFlags(
            values=values,
            lists={name: tuple(items) for name, items in lists.items()},
            used=frozenset(used),
        )
