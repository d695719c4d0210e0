"""The Dagster UI of `make dev`, seen by a headless Chromium: the asset lineage shows the five stages."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.conftest import needs_tool

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
SCREENSHOT = ARTIFACTS / "dagster_ui_asset_graph.png"
CHROMIUM = Path("/usr/bin/chromium")
"""Debian's Chromium (installed by .ci/run): the test never downloads a Playwright browser."""
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
DEV_COMMAND = ["dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p"]
"""The recipe of `make dev` (Makefile), given a free port so a developer's own UI on 3000 is left alone."""
GROUPS = {"ingestion", "features", "training", "serving", "monitoring"}

STARTUP_TIMEOUT_S = 300
"""`dagster dev` starts a webserver, a daemon and a code server importing the code location: slow on
2 cores."""
RENDER_TIMEOUT_MS = 60_000
SHUTDOWN_TIMEOUT_S = 30

GROUP_LABELS = "svg foreignObject.group [data-tooltip]"
"""The graph's group boxes: each is a `foreignObject.group` whose title carries the group name
as `data-tooltip` (the sidebar tree also lists the groups, so plain page text would not prove
the graph rendered)."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Ctrl-C to the whole process group, as a user stops `make dev`; SIGKILL for whatever is left
    (webserver, daemon and code servers are children of `dagster dev`)."""
    with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=SHUTDOWN_TIMEOUT_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _wait_for_server(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"dagster dev exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
        try:
            if httpx.get(f"{url}/server_info", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    pytest.fail(f"dagster dev did not answer on {url} in {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


@pytest.fixture
def dagster_ui(tmp_path: Path) -> Iterator[str]:
    """The command of `make dev` on a free port, over a throwaway DAGSTER_HOME and data directory
    so the repository's `.dagster_home/` and `data/` stay untouched."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "orchestration" / "instance" / "local" / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "FRAUDPIPE_PROFILE": "local",
        "FRAUDPIPE_DATA_DIR": str(tmp_path / "data"),
    }
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "dagster_dev.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", *DEV_COMMAND, str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_for_server(url, proc, log)
        yield url
    finally:
        _stop(proc)


def _graph_groups(page: Page) -> set[str]:
    """The names on the group boxes drawn in the graph, once the first one is drawn: the layout is
    computed whole, so the others come in the same render."""
    labels = page.locator(GROUP_LABELS)
    labels.first.wait_for(timeout=RENDER_TIMEOUT_MS)
    return {label.get_attribute("data-tooltip") or "" for label in labels.all() if label.is_visible()}


@pytest.mark.e2e
@needs_tool(CHROMIUM.exists(), f"Debian's chromium at {CHROMIUM}")
def test_asset_lineage_shows_the_five_stage_groups(
    dagster_ui: str, record_property: Callable[[str, object], None]
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            # A returning user: the community sign-up dialog would cover the graph in the screenshot.
            page.add_init_script("window.localStorage.setItem('communityNux', JSON.stringify('1'))")
            page.goto(f"{dagster_ui}/asset-groups")
            try:
                groups = _graph_groups(page)
                # Statuses load after the layout; waiting for them makes the screenshot the page a user sees.
                expect(page.get_by_text("fetching statuses")).to_have_count(0, timeout=RENDER_TIMEOUT_MS)
            finally:
                page.screenshot(path=SCREENSHOT, full_page=True)
                record_property("screenshot", str(SCREENSHOT))
                print(f"screenshot: {SCREENSHOT}")
            assert groups == GROUPS
        finally:
            browser.close()
