"""``make demo``: the main job on the embedded engine, on a fresh machine (as root, or as a
normal user: rootless).

1. makes a busybox base image from Debian's ``busybox-static`` and imports it
   (``nbbuild image import``: there is no Docker Hub here);
2. builds the dependency-first example (manifest first, dependency step, then sources, the
   artifact copied into a small final stage);
3. rebuilds it (everything cached), edits a source file and rebuilds (only the steps after
   ``COPY . .`` run), edits the manifest and rebuilds (the dependency step runs too);
4. prints what ran and what hit, with times.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from engine.build import BuildRequest, BuildResult, build

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "depfirst"


def base_image(root: Path, work: Path) -> None:
    """Import a busybox rootfs as ``busybox:latest`` (once per store)."""
    from engine.images.store import ImageStore
    from engine.store.store import Store

    store = Store.open(root)
    try:
        if ImageStore(store).get("busybox") is not None:
            return
    finally:
        store.close()
    tar = work / "busybox-rootfs.tar"
    subprocess.run(["bash", str(REPO / "scripts" / "busybox-rootfs.sh"), str(work / "rootfs"), str(tar)], check=True)
    subprocess.run(
        [sys.executable, "-m", "nbbuild", "image", "import", "--root", str(root), str(tar), "busybox:latest"],
        check=True,
    )


def run(ctx: Path, root: Path) -> BuildResult:
    request = BuildRequest(
        dockerfile=(ctx / "Dockerfile").read_text(),
        context=ctx,
        dockerfile_path=ctx / "Dockerfile",
        tags=("demo:latest",),
    )
    return build(request, root=root)


def table(title: str, result: BuildResult) -> None:
    print(f"\n== {title}")
    ran = hit = 0
    saved = 0.0
    for s in result.steps:
        if s.step is None:
            continue
        if s.status == "executed":
            ran += 1
            what = f"ran    {s.duration_ns / 1e9:6.2f}s"
        elif s.status == "cached":
            hit += 1
            saved += s.saved_ns / 1e9
            what = f"CACHED (saved {s.saved_ns / 1e9:.2f}s)"
        else:
            what = s.status
        print(f"  {what:<24} {s.name}")
    print(f"  -> {ran} ran, {hit} cached, {saved:.2f}s of work reused")


def main() -> int:
    if os.geteuid() != 0:
        # a normal user's builds run as root of a user namespace (engine/userns)
        print("rootless: building in a user namespace (see `nbbuild doctor`)")
    with tempfile.TemporaryDirectory(prefix="nbbuild-demo-") as tmp:
        work = Path(tmp)
        root = Path(os.environ.get("NBBUILD_ROOT") or work / "store")
        ctx = work / "depfirst"
        shutil.copytree(EXAMPLE, ctx)
        base_image(root, work)
        table("first build", run(ctx, root))
        table("rebuild, nothing changed", run(ctx, root))
        (ctx / "src" / "main.txt").write_text('print("hello, edited")\n')
        table("after editing src/main.txt", run(ctx, root))
        (ctx / "requirements.txt").write_text("numpy\npandas\nscipy\n")
        table("after editing requirements.txt", run(ctx, root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
