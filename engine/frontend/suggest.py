"""Did-you-mean suggestions, like BuildKit's ``util/suggest`` package.

BuildKit offers the closest candidate whose Levenshtein distance to the misspelt word is below
3 (the same threshold HCL uses), and offers nothing when the word is an exact match (then the
error is about something else than spelling).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["did_you_mean", "levenshtein"]

# BuildKit: "mindist := 3 // same as hcl"; only strictly closer candidates are offered.
_MAX_DISTANCE = 3


def levenshtein(a: str, b: str) -> int:
    """Return the edit distance between ``a`` and ``b`` (insert, delete, substitute cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _match_case(candidate: str, original: str) -> str:
    # A case-insensitive match is returned in the casing the user wrote (RUNN -> RUN,
    # runn -> run), as BuildKit's matchCase does.
    if original == original.lower():
        return candidate.lower()
    if original == original.upper():
        return candidate.upper()
    return candidate


def did_you_mean(
    word: str, candidates: Iterable[str], *, case_sensitive: bool = False
) -> str | None:
    """Return the candidate closest to ``word``, if it is close enough to be a typo.

    Args:
        word: the misspelt word as the user wrote it.
        candidates: the valid words.
        case_sensitive: compare exactly instead of case-insensitively (BuildKit compares flag
            names, mount types and mount keys case-sensitively, instruction names not).

    Returns:
        The closest candidate within distance 2, or None when there is none or when ``word``
        is itself one of the candidates. Ties go to the alphabetically first candidate so the
        answer does not depend on the order of ``candidates``.
    """
    value = word if case_sensitive else word.lower()
    best: str | None = None
    best_distance = _MAX_DISTANCE
    for option in sorted(candidates):
        compared = option if case_sensitive else option.lower()
        if compared == value:
            return None
        distance = levenshtein(value, compared)
        if distance < best_distance:
            best = compared if case_sensitive else _match_case(compared, word)
            best_distance = distance
    return best
