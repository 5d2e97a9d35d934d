"""A real browser: headless Debian Chromium opens the app, runs a generation, sees the image and the
acceptance maps rendered, and saves screenshots (to $SPECLENS_SCREENSHOTS, else a tmp folder)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from app_server import launched_demo

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ["SPECLENS_UMAP"] = "0"
os.environ["SPECLENS_PROJECTIONS_DIR"] = ""

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists() or shutil.which("chromium") is None,
                                reason="needs Debian's chromium (.ci/run installs it)")


@pytest.fixture(scope="module")
def url():
    with launched_demo() as demo:  # the bundled model when its weights are here, else the tiny one
        yield demo.local_url


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("SPECLENS_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def page(url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.goto(url, wait_until="domcontentloaded")
        pg.get_by_role("button", name="Generate", exact=True).wait_for(timeout=60000)
        yield pg
        browser.close()


def test_generation_renders_image_and_maps(page, shots):
    page.get_by_role("button", name="Generate", exact=True).click()
    page.wait_for_function("() => [...document.querySelectorAll('img[src*=\"gradio_api/file=\"]')]"
                           ".some(i => i.naturalWidth > 0)", timeout=60000)
    page.wait_for_selector(".js-plotly-plot .heatmaplayer", timeout=60000)
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 3", timeout=60000)
    card = page.locator("text=step compression").first.inner_text()
    assert "step compression" in card
    n_cells = page.evaluate("() => document.querySelectorAll('.js-plotly-plot .heatmaplayer .hm').length")
    assert n_cells >= 2  # the kind map and the second map
    page.screenshot(path=str(shots / "generate.png"), full_page=True)
    assert (shots / "generate.png").stat().st_size > 10_000


def test_codebook_tab_highlights_the_picked_code(page, shots):
    page.get_by_role("tab", name="Codebook").click()  # after the generation above: its groups are the trace's
    page.get_by_role("button", name="Show", exact=True).click()
    page.get_by_text("(picked)").first.wait_for(timeout=60000)
    page.get_by_text("nearest codes to 0").first.wait_for(timeout=10000)
    page.wait_for_function("() => document.querySelectorAll('img[src*=\"gradio_api/file=\"]').length >= 9",
                           timeout=60000)  # the picked code and its 8 nearest, decoded
    page.screenshot(path=str(shots / "codebook.png"), full_page=True)


def test_about_tab_lists_the_methods(page, shots):
    page.get_by_role("tab", name="About").click()
    page.wait_for_selector("text=Speculative Jacobi Decoding")
    assert page.locator("a[href='https://arxiv.org/abs/2508.07747']").count() >= 1
    page.screenshot(path=str(shots / "about.png"), full_page=True)
