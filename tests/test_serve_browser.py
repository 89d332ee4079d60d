"""The serve page in a real headless browser: Debian's chromium (/usr/bin/chromium, apt) driven by the
`playwright` Python package (its own browser download cannot run here, so executable_path points at Debian's).

Two indexes (the color-head export of test_serve_api and the same architecture at random init) served by
uvicorn on a free 127.0.0.1 port: type a query and see result images, upload a catalogue image and watch the
probability table follow the threshold slider, open the compare view; no request may leave 127.0.0.1.
Screenshots land in the test's tmp dir, and in $FASHIONTUNE_SCREENSHOTS when set (docs/img for the README).
Cost on one core: ~20 s (the shared index fixture ~15 s, chromium start ~2 s, the page ~3 s).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest
from test_serve_api import build_index, served  # noqa: F401 (fixture)

CHROMIUM = os.environ.get("FASHIONTUNE_CHROMIUM", "/usr/bin/chromium")
# a fresh profile that calls nowhere by itself (updates, sync, field trials): only the page's own requests
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-default-apps"]
TIMEOUT_MS = 60_000  # generous for a loaded 2-core CI machine; every wait is on a condition that stays true


def _chromium_or_skip() -> None:
    pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]' installs playwright")
    if not os.access(CHROMIUM, os.X_OK):
        if os.geteuid() == 0 and shutil.which("apt-get"):
            pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (make test's setup installs it)")
        pytest.skip(f"{CHROMIUM} is missing and this user cannot apt-get install chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(served, tmp_path_factory):  # noqa: F811
    """uvicorn in a thread over two indexes; yields the base URL once /healthz answers (stays true)."""
    import uvicorn

    from fashiontune.serve.cli import build_app

    shards = served[0]
    untrained = tmp_path_factory.mktemp("untrained") / "random-init"
    build_index(shards, untrained, "model.name=ft-tiny-vit", "model.image_size=32", "seed=3")
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(build_app([str(served[3]), str(untrained)]), host="127.0.0.1", port=port,
                                        log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            if time.monotonic() > deadline or not thread.is_alive():
                raise
            time.sleep(0.2)
    yield base
    srv.should_exit = True
    thread.join(timeout=30)


def _shot(page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / f"serve-{name}.png"), full_page=True)
    out = os.environ.get("FASHIONTUNE_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / f"serve-{name}.png", Path(out) / f"serve-{name}.png")


def _images_loaded(page, selector: str, n: int) -> None:
    """Wait until at least n images under selector have decoded (naturalWidth > 0: the thumbnails arrived)."""
    page.wait_for_function(
        "([sel, n]) => { const im = [...document.querySelectorAll(sel)]; "
        "return im.length >= n && im.every((i) => i.complete && i.naturalWidth > 0); }",
        arg=[selector, n], timeout=TIMEOUT_MS)


def test_search_classify_and_compare_in_chromium(server, served, tmp_path):  # noqa: F811
    _chromium_or_skip()
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    jpg = urllib.request.urlopen(f"{server}/thumb/0/4.jpg").read()
    (tmp_path / "upload.jpg").write_bytes(jpg)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1100, "height": 800})
            page = context.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(server + "/")
            page.wait_for_selector("body[data-ready='1']")
            # search: type a query, see result images
            page.fill("#q", "red dress")
            page.fill("#k", "8")
            page.click("#search-form button")
            _images_loaded(page, "#results img", 8)
            assert "red dress" in page.inner_text("#search-title")
            _shot(page, tmp_path, "search")
            # classify: upload, then the slider changes which rows are above the threshold
            page.click("nav button[data-tab=classify]")
            page.set_input_files("#file", str(tmp_path / "upload.jpg"))
            page.wait_for_selector("table.probs tr.above")
            _images_loaded(page, "#upload-results img", 1)
            counts = {}
            for t in ("0", "0.5", "1"):
                page.eval_on_selector("#threshold", "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", t)
                page.wait_for_function("(v) => document.getElementById('threshold-value').textContent === "
                                       "Number(v).toFixed(2)", arg=t)
                counts[t] = int(page.get_attribute("#above-count", "data-count"))
                assert page.locator("table.probs tr.above").count() == counts[t]
            rows = page.locator("table.probs tr").count() - page.locator("table.probs").count()  # minus headers
            assert counts["0"] == rows > counts["0.5"] >= counts["1"]
            page.eval_on_selector("#threshold", "(el) => { el.value = '0.3'; el.dispatchEvent(new Event('input')); }")
            _shot(page, tmp_path, "classify")
            page.click("nav button[data-tab=metrics]")
            assert page.locator("table.metrics tr").count() > 1  # the color head's per-class rows
            # compare: the same query against both models, side by side
            page.click("#compare-tab")
            page.fill("#cq", "blue shirt")
            page.click("#compare-form button")
            _images_loaded(page, "#c0 img", 12)
            _images_loaded(page, "#c1 img", 12)
            assert page.inner_text("#c1-title") == "random-init"
            _shot(page, tmp_path, "compare")
        finally:
            browser.close()
    hosts = {urlparse(u).hostname for u in requests if not u.startswith(("data:", "blob:"))}
    assert hosts == {"127.0.0.1"}, requests
    assert any("/thumb/1/" in u for u in requests) and any("/api/classify" in u for u in requests)
