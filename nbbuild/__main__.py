"""``python -m nbbuild``: the CLI."""

from __future__ import annotations

import sys

from nbbuild.cli import main

sys.exit(main())
