"""The serve page in a real headless browser: Debian's chromium (/usr/bin/chromium, apt) driven by the
`playwright` Python package (its own browser download cannot run here, so executable_path points at Debian's).

Two indexes of a synthetic DeepFashion-MultiModal catalogue (a tiny ViT with an exported category head, and
another random init) served by
uvicorn on a free 127.0.0.1 port: type a query and see result images, upload a catalogue image and watch the
probability table follow the threshold slider, open the compare view; no request may leave 127.0.0.1.
Screenshots land in the test's tmp dir, and in $FASHIONTUNE_SCREENSHOTS when set (docs/img for the README).
Cost on one core: ~25 s (corpus, shards, eval and two indexes ~15 s, chromium start ~2 s, the page ~5 s).
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
import torch
from test_serve_api import build_index

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


FIELDS = "[category,sleeve_length,pattern_upper]"


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> tuple[Path, Path]:
    """A synthetic DeepFashion-MultiModal catalogue (48 drawn garments, every split indexed) served twice: a
    tiny ViT with an exported `category` head and its eval results, and another random init (compare view)."""
    from fashiontune.config import load_config
    from fashiontune.eval.config import EvalConfig
    from fashiontune.eval.run import run_eval
    from fashiontune.models import ModelConfig, load_clip
    from fashiontune.shards.build import build_shards
    from fashiontune.shards.config import ShardBuildConfig
    from fashiontune.synth import generate
    from fashiontune.tasks import build_task
    from fashiontune.tasks.config import TaskConfig

    root = tmp_path_factory.mktemp("browser")
    corpus = generate("deepfashion-mm", root / "corpus", 48, seed=0)
    shards = root / "shards"
    manifest = build_shards(ShardBuildConfig(source="deepfashion-mm", input=str(corpus), out=str(shards),
                                             image_size=96, splits="train=0.5,test=0.5", workers=1, progress=False))
    torch.manual_seed(1)
    loaded = load_clip(ModelConfig(name="ft-tiny-vit", image_size=32))
    build_task(TaskConfig(name="classify", field="category"), loaded, manifest).export(root / "export")
    common = [f"model.checkpoint={root / 'export'}", f"data.label_fields={FIELDS}", "data.num_workers=0"]
    run_eval(load_config(EvalConfig, None, [*common, f"data.shards={shards}", f"out_dir={root / 'eval'}",
                                            "plots.grid_queries=0"]))
    build_index(shards, root / "fine-tuned", *common, "data.split=all", f"results={root / 'eval/results.json'}")
    build_index(shards, root / "random-init", "model.name=ft-tiny-vit", "model.image_size=32", "seed=3",
                f"data.label_fields={FIELDS}", "data.split=all")
    return root / "fine-tuned", root / "random-init"


@pytest.fixture(scope="module")
def server(catalogue):
    """uvicorn in a thread over the two indexes; yields the base URL once /healthz answers (stays true)."""
    import uvicorn

    from fashiontune.serve.cli import build_app

    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(build_app([str(p) for p in catalogue]), host="127.0.0.1", port=port,
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
        from PIL import Image

        Path(out).mkdir(parents=True, exist_ok=True)
        with Image.open(tmp_path / f"serve-{name}.png") as im:  # 256 colours: a third of the bytes in the repo
            im.convert("RGB").quantize(256).save(Path(out) / f"serve-{name}.png", optimize=True)


def _images_loaded(page, selector: str, n: int) -> None:
    """Wait until at least n images under selector have decoded (naturalWidth > 0: the thumbnails arrived)."""
    page.wait_for_function(
        "([sel, n]) => { const im = [...document.querySelectorAll(sel)]; "
        "return im.length >= n && im.every((i) => i.complete && i.naturalWidth > 0); }",
        arg=[selector, n], timeout=TIMEOUT_MS)


def test_search_classify_and_compare_in_chromium(server, tmp_path):
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
            page.fill("#q", "a woman in a long-sleeve striped shirt")
            page.fill("#k", "8")
            page.click("#search-form button")
            _images_loaded(page, "#results img", 8)
            assert "striped shirt" in page.inner_text("#search-title")
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
            page.fill("#cq", "denim trousers")
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
