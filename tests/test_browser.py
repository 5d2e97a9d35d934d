"""A real browser: headless Debian Chromium opens the app at 1440x900, finds Generate on the first
screen, runs a generation and sees the image and the acceptance maps, then visits every tab; each tab
is screenshotted at 1440x900 and 390x844 (to $SPECLENS_SCREENSHOTS, else a tmp folder)."""
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
DESKTOP, PHONE = {"width": 1440, "height": 900}, {"width": 390, "height": 844}
TABS = ("Generate", "Compare", "Codebook", "Sweep", "About")

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
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def open_page(browser, url, viewport):
    page = browser.new_page(viewport=viewport)
    page.goto(url, wait_until="domcontentloaded")
    page.get_by_role("button", name="Generate", exact=True).wait_for(timeout=60000)
    return page


def open_tab(page, name: str) -> None:
    """A tab by name; on a narrow screen the tabs that do not fit sit behind Gradio's "More tabs" menu."""
    tab = page.get_by_role("tab", name=name)
    if tab.count() and tab.first.is_visible():
        tab.first.click()
        return
    page.get_by_role("button", name="More tabs").click()
    page.locator(".overflow-dropdown button", has_text=name).first.click()


@pytest.fixture(scope="module")
def page(browser, url):
    pg = open_page(browser, url, DESKTOP)
    yield pg
    pg.close()


def test_generate_button_is_on_the_first_screen(page):
    box = page.get_by_role("button", name="Generate", exact=True).bounding_box()
    assert box is not None and box["y"] + box["height"] <= DESKTOP["height"], f"Generate at y={box}"


def test_generation_renders_image_and_maps(page, shots):
    page.get_by_role("button", name="Generate", exact=True).click()
    page.wait_for_function("() => [...document.querySelectorAll('img[src*=\"gradio_api/file=\"]')]"
                           ".some(i => i.naturalWidth > 0)", timeout=60000)
    page.wait_for_selector(".js-plotly-plot .heatmaplayer", timeout=60000)
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 3", timeout=60000)
    page.get_by_role("cell", name="step compression", exact=True).wait_for(timeout=10000)  # the numbers card
    n_cells = page.evaluate("() => document.querySelectorAll('.js-plotly-plot .heatmaplayer .hm').length")
    assert n_cells >= 2  # the kind map and the second map
    image = page.locator("img[src*='gradio_api/file=']").first.bounding_box()
    heat = page.locator(".js-plotly-plot .heatmaplayer").first.bounding_box()
    page.screenshot(path=str(shots / "generate_1440.png"))
    page.screenshot(path=str(shots / "generate_1440_full.png"), full_page=True)
    assert image["y"] < DESKTOP["height"] and heat["y"] < DESKTOP["height"], (image, heat)  # after one click


def test_codebook_tab_highlights_the_picked_code(page, shots):
    open_tab(page, "Codebook")  # after the generation above: its groups are the trace's
    page.get_by_role("button", name="Show", exact=True).click()
    page.get_by_text("(picked)").first.wait_for(timeout=60000)
    page.get_by_text("nearest codes to 0").first.wait_for(timeout=10000)
    page.wait_for_function("() => document.querySelectorAll('img[src*=\"gradio_api/file=\"]').length >= 9",
                           timeout=60000)  # the picked code and its 8 nearest, decoded
    page.screenshot(path=str(shots / "codebook_1440.png"), full_page=True)


def test_compare_tab_runs_the_ticked_decoders(page, shots):
    open_tab(page, "Compare")
    page.get_by_role("button", name="Compare", exact=True).click()
    page.get_by_text("over the seeds: mean and 95% interval").first.wait_for(timeout=10000)
    page.wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot')]"
                           ".filter(p => p.offsetParent !== null).length >= 3", timeout=120000)
    page.screenshot(path=str(shots / "compare_1440.png"), full_page=True)


def test_about_tab_lists_the_methods_and_says_what_lossless_means(page, shots):
    open_tab(page, "About")
    page.wait_for_selector("text=Speculative Jacobi Decoding")
    assert page.locator("a[href='https://arxiv.org/abs/2508.07747']").count() >= 1
    assert "not</em> mean the same image for the same seed" in page.content()
    page.screenshot(path=str(shots / "about_1440.png"), full_page=True)


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["1440", "390"])
def test_every_tab_renders(browser, url, shots, viewport):
    page = open_page(browser, url, viewport)
    try:
        for tab in TABS:
            open_tab(page, tab)
            page.wait_for_timeout(500)
            page.screenshot(path=str(shots / f"tab_{tab.lower()}_{viewport['width']}.png"))
            assert (shots / f"tab_{tab.lower()}_{viewport['width']}.png").stat().st_size > 5_000
    finally:
        page.close()
