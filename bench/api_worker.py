"""The engine API in a warm process, for bench.py's figures of another user (rootless).

bench.py starts this once, as the bench user, and sends one JSON request per line on stdin::

    {"context": DIR, "tag": NAME, "no_cache": false, "root": STORE}

and reads one JSON line per request on stdout: ``{"seconds": wall time of build(), "ran":
steps executed}`` or ``{"error": text}``. As a normal user ``engine.build.build`` forwards the
build to the rootless helper (a process inside a user namespace, started by the first call and
kept warm), so the figure includes what a notebook kernel pays: the round trip to the helper
and the pickled request, events and result.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main() -> int:
    from engine.build import BuildRequest, build

    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        context = Path(req["context"])
        try:
            request = BuildRequest(
                dockerfile=(context / "Dockerfile").read_text(),
                context=context,
                dockerfile_path=context / "Dockerfile",
                tags=(req["tag"],),
                no_cache=bool(req.get("no_cache")),
            )
            start = time.perf_counter()
            result = build(request, root=Path(req["root"]))
            elapsed = time.perf_counter() - start
            ran = sum(1 for s in result.steps if s.step is not None and s.status == "executed")
            reply: dict[str, object] = {"seconds": elapsed, "ran": ran}
        except Exception as exc:  # reported to bench.py, which stops with it
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
