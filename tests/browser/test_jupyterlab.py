"""``%%dockerfile`` in a real browser: JupyterLab on localhost, Debian's chromium driven by Playwright.

The test serves a temporary directory with JupyterLab (``--no-browser``, a random token passed
in the URL (``--IdentityProvider.token``, the current name of ``--ServerApp.token``), port 0: the server picks a free port and writes it to its runtime file), opens a
notebook with a ``%%dockerfile`` cell in headless chromium, runs the cell twice with the
keyboard, as a user would, and asserts on the DOM:

- while the first build runs, the live widget draws the build graph (SVG nodes);
- after each run the cell shows the widget's summary and the result, whose static graph is
  inline SVG with one node per step; the first run executed steps, on the second every step
  is ``cached`` (in the graph and in the step table).

Nothing is downloaded: chromium is Debian's (``apt-get install chromium``, see the Makefile),
Playwright only drives it (``executable_path``), and JupyterLab's news and update checks are
off. Screenshots of both runs (and of the page when the test fails) go to
``tests/browser/screenshots/`` (git-ignored).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook
from playwright.sync_api import Locator, Page, expect, sync_playwright

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SERVER_START_TIMEOUT = 60.0  # seconds for JupyterLab to answer /api/status
RUN_TIMEOUT_MS = 60_000  # one build (kernel start included) as seen in the page
UI_TIMEOUT_MS = 30_000  # JupyterLab loading, a widget or an output appearing

DOCKERFILE = """\
%%dockerfile --name browser
FROM busybox
COPY hello.txt /hello.txt
RUN sleep 3 && cat /hello.txt > /copy
RUN wc -c /copy"""
STEPS = 4  # FROM, COPY, RUN, RUN

pytestmark = pytest.mark.timeout(180)


@dataclass(frozen=True)
class Lab:
    url: str  # the notebook's page, token included
    log: Path  # the server's output


def _busybox_store(root: Path, work: Path) -> None:
    """A fresh store at ``root`` with ``busybox:latest`` imported (there is no Docker Hub)."""
    tar = work / "busybox.tar"
    subprocess.run(
        ["bash", str(REPO / "scripts" / "busybox-rootfs.sh"), str(work / "rootfs"), str(tar)],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "nbbuild",
            "image",
            "import",
            "--root",
            str(root),
            str(tar),
            "busybox:latest",
        ],
        check=True,
        capture_output=True,
    )


def _server_info(runtime: Path, pid: int) -> dict[str, Any] | None:
    path = runtime / f"jpserver-{pid}.json"
    try:
        info: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):  # not written yet, or half written
        return None
    return info


def _wait_ready(proc: subprocess.Popen[bytes], runtime: Path, token: str, log: Path) -> str:
    """The server's base URL once ``/api/status`` answers."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()}")
        info = _server_info(runtime, proc.pid)
        if info is not None:
            base = f"http://127.0.0.1:{info['port']}/"
            try:
                with urllib.request.urlopen(f"{base}api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        return base
            except OSError:
                pass
        time.sleep(0.2)
    raise AssertionError(f"JupyterLab did not start in {SERVER_START_TIMEOUT}s:\n{log.read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server (it shuts its kernels down), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """JupyterLab serving a directory with ``build.ipynb`` and a fresh busybox store."""
    store, work, jupyter = tmp_path / "store", tmp_path / "work", tmp_path / "jupyter"
    work.mkdir()
    _busybox_store(store, tmp_path)
    (work / "hello.txt").write_text("hello from the browser test\n")
    nb = new_notebook(
        cells=[new_code_cell("%load_ext nbbuild"), new_code_cell(DOCKERFILE)],
        metadata={
            "kernelspec": {
                "name": "python3",
                "display_name": "Python 3 (ipykernel)",
                "language": "python",
            },
        },
    )
    nbformat.write(nb, work / "build.ipynb")

    # No news, no update checks, no toasts over the screenshots (JupyterLab asks for consent to
    # fetch news on first start, even with --LabApp.news_url=None).
    notification = (
        jupyter
        / "settings"
        / "@jupyterlab"
        / "apputils-extension"
        / "notification.jupyterlab-settings"
    )
    notification.parent.mkdir(parents=True)
    notification.write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False, "doNotDisturbMode": True})
    )

    token = secrets.token_hex(24)
    env = dict(os.environ)
    env.update(
        NBBUILD_ROOT=str(store),
        # the server's config, data, runtime files and the lab's settings and workspaces in
        # the test's directory: nothing read from or written to the user's ~/.jupyter
        JUPYTER_CONFIG_DIR=str(jupyter / "config"),
        JUPYTER_DATA_DIR=str(jupyter / "data"),
        JUPYTER_RUNTIME_DIR=str(jupyter / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(jupyter / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(jupyter / "workspaces"),
        JUPYTER_PLATFORM_DIRS="1",
    )
    env.pop("JUPYTER_PORT", None)
    log = tmp_path / "jupyterlab.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "jupyterlab",
                "--no-browser",
                "--allow-root",
                "--ServerApp.ip=127.0.0.1",
                "--ServerApp.port=0",
                "--ServerApp.port_retries=0",
                f"--IdentityProvider.token={token}",
                "--ServerApp.password=",
                f"--ServerApp.root_dir={work}",
                "--LabApp.news_url=None",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                "--LabApp.extension_manager=readonly",
            ],
            cwd=work,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        base = _wait_ready(proc, jupyter / "runtime", token, log)
        yield Lab(url=f"{base}lab/tree/build.ipynb?token={token}", log=log)
    finally:
        _stop(proc)


def _prompt(cell: Locator) -> str:
    return cell.locator(".jp-InputPrompt").inner_text().strip()


def _run(page: Page, cell: Locator) -> None:
    """Run ``cell`` in place as a user does: click into its editor, press Ctrl+Enter.

    The key goes to the focused editor; the cell's prompt then changes (``[*]:``, or the next
    count when it is quick).
    """
    before = _prompt(cell)
    cell.locator(".cm-content").click()
    expect(cell.locator(".cm-editor")).to_have_class(re.compile(r"\bcm-focused\b"))
    page.keyboard.press("Control+Enter")
    expect(cell.locator(".jp-InputPrompt")).not_to_have_text(before, timeout=UI_TIMEOUT_MS)


def _wait_prompt(page: Page, cell: Locator, expected: str) -> None:
    """Wait until the cell's prompt reads ``expected`` (``[n]:``: the run finished)."""
    handle = cell.element_handle()
    page.wait_for_function(
        "([cell, expected]) => cell.querySelector('.jp-InputPrompt').innerText.trim() === expected",
        arg=[handle, expected],
        timeout=RUN_TIMEOUT_MS,
    )


def _node_statuses(output: Locator, container: str) -> list[str]:
    """Each step node's status in a graph: its second label line reads ``<key> · <status>``."""
    statuses = []
    for node in output.locator(f"{container} .nbb-graph svg g.node").all():
        texts = [t.strip() for t in node.locator("text").all_text_contents()]
        subs = [t for t in texts if " · " in t]
        if subs:  # internal vertices (the build context) have no key line
            statuses.append(subs[-1].rsplit(" · ", 1)[1])
    return statuses


def _table_statuses(output: Locator) -> list[str]:
    rows = output.locator(".nbb-result table.nbb-steps tbody tr")
    return [r.locator("td").nth(3).inner_text().strip() for r in rows.all()]


def _check_run(output: Locator) -> tuple[list[str], list[str]]:
    """The cell after a run: the widget's summary, and the result's SVG graph and step table."""
    widget = output.locator(".jupyter-widgets .nbb-live")
    widget.first.wait_for(state="visible", timeout=UI_TIMEOUT_MS)
    assert "built" in widget.first.inner_text()
    result = output.locator(".nbb-result")
    result.first.wait_for(state="visible", timeout=UI_TIMEOUT_MS)
    assert result.count() == 1
    assert output.locator(".nbb-result .nbb-graph svg g.node").count() >= STEPS
    nodes, table = _node_statuses(output, ".nbb-result"), _table_statuses(output)
    assert len(nodes) == STEPS, nodes
    assert len(table) == STEPS, table
    return nodes, table


def test_dockerfile_cell_twice_in_jupyterlab(lab: Lab) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(UI_TIMEOUT_MS)
        try:
            page.goto(lab.url, timeout=UI_TIMEOUT_MS)
            cells = page.locator(".jp-Notebook .jp-CodeCell")
            cells.nth(1).wait_for(state="visible")
            load, build = cells.nth(0), cells.nth(1)
            # Keys pressed before the kernel is connected run nothing: wait until the status bar
            # reads "Python 3 (ipykernel) | Idle" (the toolbar's indicator says idle before
            # there is a kernel at all).
            expect(page.locator("#jp-main-statusbar")).to_contain_text(
                re.compile(r"ipykernel\) \| Idle"), timeout=RUN_TIMEOUT_MS
            )
            output = build.locator(".jp-OutputArea")

            _run(page, load)
            _wait_prompt(page, load, "[1]:")
            _run(page, build)

            # While the first build runs (its RUN sleeps), the live widget draws the graph.
            live_nodes = output.locator(".jupyter-widgets .nbb-graph svg g.node")
            live_nodes.first.wait_for(state="visible", timeout=RUN_TIMEOUT_MS)
            assert live_nodes.count() >= 1
            page.screenshot(path=str(SCREENSHOTS / "1-building.png"), full_page=True)

            _wait_prompt(page, build, "[2]:")
            nodes, table = _check_run(output)
            assert "executed" in nodes and "executed" in table, (nodes, table)
            page.screenshot(path=str(SCREENSHOTS / "2-first-run.png"), full_page=True)

            # The same cell again: every step is cached.
            _run(page, build)
            _wait_prompt(page, build, "[3]:")
            nodes, table = _check_run(output)
            assert nodes == ["cached"] * STEPS, nodes
            assert table == ["cached"] * STEPS, table
            assert f"{STEPS} cached" in output.locator(".nbb-result .nbb-summary").inner_text()
            page.screenshot(path=str(SCREENSHOTS / "3-second-run.png"), full_page=True)
        except BaseException:
            page.screenshot(path=str(SCREENSHOTS / "failure.png"), full_page=True)
            print(lab.log.read_text(errors="replace")[-5000:])
            raise
        finally:
            browser.close()
