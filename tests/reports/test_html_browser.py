"""The HTML report in real headless Chromium (Playwright): no network, a real hover, a real click, zoom, toggles.

Skips without Chromium (``make test`` installs Debian's as root) or without the ``playwright``
package (the ``test`` extra). Playwright drives the system Chromium (``executable_path``); it
never downloads a browser.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from layerbisect.comparison.comparator import compare_captures
from layerbisect.comparison.findings import Finding
from layerbisect.comparison.report import Report
from layerbisect.comparison.synthetic import plant_growing_scale, synthetic_pair

playwright = pytest.importorskip("playwright.sync_api", reason="install the [test] extra (playwright)")

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "chrome")) if p), None)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (apt-get install chromium)")


def make_page(tmp_path: Path) -> Path:
    from .test_outputs import make_record

    ref, cand, info = synthetic_pair(n_layers=6)
    plant_growing_scale(cand, 3, 2.0, final_softcap=info.final_softcap)
    rep = Report(compare_captures(ref, cand, info), record=make_record())
    rep.add_finding(Finding("critical", "culprit", "Culprit: layer 3, attn_norm", point="layers.3.attn_norm",
                            layer=3, op="attn_norm"))  # fmt: skip
    return rep.save(tmp_path / "out", formats=("html",))["html"]


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        # headless via Playwright's own switch; it gives every launch a fresh, temporary profile
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS[1:], headless=True)
        yield b
        b.close()


def test_html_in_chromium_hover_click_zoom_toggle_offline(browser, tmp_path):
    path = make_page(tmp_path)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.resolve().as_uri())
    page.wait_for_selector("body[data-plots-ready]", timeout=60_000)
    n_plots = int(page.get_attribute("body", "data-plots-ready") or 0)
    assert n_plots >= 8, f"only {n_plots} figures drawn"
    assert not errors, errors

    # nothing but the file itself is loaded: no CDN, no font, no tile server
    outside = [u for u in requests if not u.startswith(("file:", "data:", "blob:", "about:"))]
    assert not outside, f"the page fetched {outside[:5]}"

    # a real hover over the layers × ops heat map shows a tooltip naming a capture point and its cosine
    page.locator("#heatmap-ops").scroll_into_view_if_needed()
    box = page.locator("#heatmap-ops .nsewdrag").first.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    tip = page.locator("#heatmap-ops .hoverlayer .hovertext")
    tip.first.wait_for(timeout=10_000)
    text = tip.first.text_content() or ""
    assert "layers." in text and "min cosine" in text, text

    # the layers × tokens heat map too
    page.locator("#heatmap-tokens").scroll_into_view_if_needed()
    box = page.locator("#heatmap-tokens .nsewdrag").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.6)
    tip = page.locator("#heatmap-tokens .hoverlayer .hovertext")
    tip.first.wait_for(timeout=10_000)
    assert "token" in (tip.first.text_content() or "")

    # a real click on a legend entry hides that series
    page.locator("#plot-cosine").scroll_into_view_if_needed()
    page.locator("#plot-cosine .legend .traces").first.click()
    page.wait_for_function("document.getElementById('plot-cosine').data[0].visible === 'legendonly'")

    # zoom: a real drag over the norm-ratio plot narrows its x range
    box = page.locator("#plot-norm-ratio .nsewdrag").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5, steps=8)
    page.mouse.up()
    page.wait_for_function("document.getElementById('plot-norm-ratio').layout.xaxis.autorange === false")

    # a real click on a finding jumps to its layer: URL fragment, highlighted row, a marker on the plots
    page.locator(".finding[data-kind='culprit']").first.click()
    page.wait_for_function("location.hash === '#layer-3'")
    assert "hl" in (page.get_attribute("#layer-3", "class") or "")
    marked = page.evaluate(
        "(document.getElementById('plot-cosine').layout.shapes || []).filter(s => s.name === 'jump').map(s => s.x0)"
    )
    assert marked == [3], marked
    assert page.evaluate("document.getElementById('layer-3').getBoundingClientRect().top") < 1000

    # a click on a heat-map cell jumps too
    page.locator("#heatmap-ops").scroll_into_view_if_needed()
    box = page.locator("#heatmap-ops .nsewdrag").first.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.05)
    page.wait_for_function("location.hash === '#layer-0'")

    shot = tmp_path / "report.png"
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    target = os.environ.get("LAYERBISECT_SCREENSHOT")  # docs/img/report.png is made with this set
    if target:
        page.screenshot(path=target)
    page.close()
