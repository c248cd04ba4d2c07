"""The app in a real browser: `streamlit run` on a free port, headless Chromium via Playwright.

Needs Debian's `chromium` at /usr/bin/chromium (`apt-get install -y chromium`); Playwright's
own browser downloads are not used.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ui.cli import streamlit_args

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
START_TIMEOUT_S = 60
PAGE_TIMEOUT_MS = 120_000  # the first session loads TensorFlow and the model
# every other expectation: Playwright's default (5 s) is too short on 2 cores while the other
# xdist worker runs a module beside this test (a dataframe's header was seen still hidden)
EXPECT_TIMEOUT_MS = 30_000

# `streamlit run`, after registering the tests' tiny backbone (the bundle was built with it)
TESTS = str(Path(__file__).resolve().parent)
LAUNCHER = (
    f"import sys; sys.path.insert(0, {TESTS!r}); import conftest; "
    "from streamlit.web.cli import main; main(prog_name='streamlit')"
)

pytestmark = pytest.mark.browser


def top_of(locator: Any, tries: int = 100) -> float:
    """The element's top edge. Streamlit re-renders a page after a click, so an element seen
    visible can be detached for a moment (its box is then None): wait for it to settle."""
    for _ in range(tries):
        box = locator.bounding_box()
        if box is not None:
            return float(box["y"])
        time.sleep(0.1)
    raise AssertionError(f"{locator} has no box after {tries / 10:.0f} s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"streamlit did not answer on {url} within {timeout} s")


@pytest.fixture
def server(tiny_bundle: Path, tmp_path: Path) -> Iterator[str]:
    """`streamlit run ui/app.py -- --bundle TINY` on a free local port; stopped afterwards."""
    port = free_port()
    env = {**os.environ, "EMBED_DOGS_CACHE": str(tmp_path / "cache")}
    env.pop("EMBED_DOGS_BUNDLE", None)  # the bundle comes from the command line here
    log = open(tmp_path / "streamlit.log", "wb")  # noqa: SIM115 - closed below
    # exactly the options `embed-dogs ui` passes, plus no file watcher
    args = streamlit_args(port, "127.0.0.1", True, str(tiny_bundle))
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, *args[:-3], "--server.fileWatcherType", "none",
         *args[-3:]],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, START_TIMEOUT_S)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
)
def test_upload_shows_breed_and_gallery_in_chromium(server: str, dataset: Path, tmp_path: Path):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    photo = sorted((dataset / "Beagle").glob("*.jpg"))[0]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            page.goto(server)
            expect(page.get_by_text("Identify a dog")).to_be_visible(timeout=PAGE_TIMEOUT_MS)
            page.locator("input[type=file]").set_input_files(str(photo))
            expect(page.get_by_text("Look-alikes")).to_be_visible(timeout=PAGE_TIMEOUT_MS)
            buttons = page.get_by_role("button", name="use as query")
            expect(buttons).to_have_count(12, timeout=PAGE_TIMEOUT_MS)
            query = page.get_by_text(f"Query: {photo.name} (your photo)")
            expect(query).to_be_visible(timeout=PAGE_TIMEOUT_MS)
            page.screenshot(path=str(tmp_path / "identify.png"), full_page=True)
            text = page.inner_text("body")

            # use as query: the dataset photo becomes the query, the uploader lets go
            uploaded = page.locator("[data-testid=stFileUploader]").get_by_text(photo.name)
            expect(uploaded).to_have_count(1)
            buttons.first.click()
            expect(page.get_by_text("(dataset photo, labelled")).to_be_visible()
            expect(uploaded).to_have_count(0)
            page.screenshot(path=str(tmp_path / "use_as_query.png"), full_page=True)

            # the full-size view opens in a dialog
            page.get_by_role("button", name="View full size").click()
            dialog = page.get_by_role("dialog")
            expect(dialog).to_be_visible()
            expect(dialog.locator("img")).to_have_count(1)
            page.screenshot(path=str(tmp_path / "full_size.png"))
            page.keyboard.press("Escape")

            # Browse: a photo's look-alikes appear above the grid, where the click was seen
            page.get_by_role("link", name="Browse").click()
            expect(page.get_by_text("Browse the dataset")).to_be_visible()
            page.get_by_role("button", name="look-alikes").nth(1).click()
            selected = page.get_by_text("Selected photo")
            expect(selected).to_be_visible()
            grid = page.get_by_role("button", name="look-alikes").first
            assert top_of(selected) < top_of(grid)
            page.screenshot(path=str(tmp_path / "browse.png"), full_page=True)

            # Map: an own photo placed among its nearest photos and marked with a cross
            page.get_by_role("link", name="Map").click()
            expect(page.get_by_text("Map of the embeddings")).to_be_visible()
            expect(page.get_by_text("Selected photo")).to_have_count(0)  # Browse's query
            page.locator("input[type=file]").set_input_files(str(photo))
            expect(page.get_by_text("The black cross marks")).to_be_visible(
                timeout=PAGE_TIMEOUT_MS)
            expect(page.locator(".vega-embed").first).to_be_visible()
            page.screenshot(path=str(tmp_path / "map_query.png"), full_page=True)

            # Report: named columns, the misclassified gallery and a confusion-matrix cell
            page.get_by_role("link", name="Report").click()
            expect(page.get_by_text("Misclassified test photos")).to_be_visible(
                timeout=PAGE_TIMEOUT_MS)
            expect(page.get_by_text("Confusion matrix cells")).to_be_visible()
            # the grid draws on a canvas: its header cells live in a hidden accessibility table
            expect(page.locator("[data-testid=stDataFrame] th",
                                has_text="Test photos").first).to_be_attached()
            expect(page.get_by_text("✓ beagle → beagle").first).to_be_visible(
                timeout=PAGE_TIMEOUT_MS)  # the first cell's photos, under the select
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
            report_text = page.inner_text("body")

            # several uploads at once: a table with thumbnails and the CSV to download
            page.get_by_role("link", name="Identify").click()
            expect(page.get_by_text("Identify a dog")).to_be_visible()
            several = [sorted((dataset / breed).glob("*.jpg"))[1]
                       for breed in ("Beagle", "samoyed", "n02085620-Chihuahua")]
            page.locator("input[type=file]").set_input_files([str(p) for p in several])
            expect(page.get_by_text("3 photos", exact=True)).to_be_visible(
                timeout=PAGE_TIMEOUT_MS)
            expect(page.get_by_role("button", name="Download CSV")).to_be_visible()
            table = page.locator("[data-testid=stMain] [data-testid=stDataFrame]")
            expect(table).to_have_count(1)
            page.screenshot(path=str(tmp_path / "batch.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "identify.png").stat().st_size > 10_000
    assert "beagle" in text
    assert "similarity" in text
    assert "knn_fpr_at_95" not in report_text and "None" not in report_text
    for shot in ("map_query.png", "report.png", "batch.png"):
        assert (tmp_path / shot).stat().st_size > 10_000
