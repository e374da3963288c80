"""``python -m nbbuild``: the CLI, as the ``nbbuild`` command runs it (:mod:`nbbuild.client`)."""

from __future__ import annotations

from nbbuild.client import main

main()
