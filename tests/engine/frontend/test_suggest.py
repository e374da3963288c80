from __future__ import annotations

import pytest

from engine.frontend.suggest import did_you_mean, levenshtein


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [
        ("", "", 0),
        ("abc", "", 3),
        ("kitten", "sitting", 3),
        ("chmod", "chmodd", 1),
        ("ab", "ba", 2),
    ],
)
def test_levenshtein(a: str, b: str, distance: int) -> None:
    assert levenshtein(a, b) == distance
    assert levenshtein(b, a) == distance


def test_closest_candidate_within_two_edits() -> None:
    assert did_you_mean("cahce", ["bind", "cache", "tmpfs"]) == "cache"
    assert did_you_mean("chmodd", ["chown", "chmod", "from"]) == "chmod"


def test_nothing_when_too_far() -> None:
    assert did_you_mean("xyzzy", ["bind", "cache"]) is None
    # distance 3 is already too far (BuildKit: strictly below 3)
    assert did_you_mean("abc", ["xyz"]) is None


def test_exact_match_gives_no_suggestion() -> None:
    assert did_you_mean("cache", ["cache", "cachex"]) is None
    assert did_you_mean("RUN", ["run", "runs"]) is None


def test_case_insensitive_keeps_users_casing() -> None:
    assert did_you_mean("RUNN", ["run", "cmd"]) == "RUN"
    assert did_you_mean("runn", ["RUN", "CMD"]) == "run"
    assert did_you_mean("Runn", ["RUN", "CMD"]) == "run"


def test_case_sensitive() -> None:
    assert did_you_mean("CACHE", ["cache"], case_sensitive=True) is None
    assert did_you_mean("cachee", ["cache"], case_sensitive=True) == "cache"


def test_closest_wins_regardless_of_order() -> None:
    assert did_you_mean("lnk", ["linked", "link"]) == "link"
    assert did_you_mean("lnk", ["link", "linked"]) == "link"
