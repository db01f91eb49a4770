"""Regenerate docs/img/report.png and report-heatmaps.png from a real report, in headless Chromium.

    bisect demo && python docs/img/make_report_png.py bisect-report/nvfp4/report.html

report.png: the top of the page (findings, depth plots); report-heatmaps.png: the heat maps
with a live tooltip (a real mouse hover). Playwright drives the system Chromium.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # fmt: skip


def main(page_path: str) -> None:
    here = Path(__file__).parent
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or "chromium"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1250})
        page.goto(Path(page_path).resolve().as_uri())
        page.wait_for_selector("body[data-plots-ready]", timeout=60_000)
        page.screenshot(path=str(here / "report.png"))
        page.evaluate("document.getElementById('heatmaps').scrollIntoView()")
        box = page.locator("#heatmap-ops .nsewdrag").first.bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.37, box["y"] + box["height"] * 0.08)
        page.wait_for_timeout(500)
        page.screenshot(path=str(here / "report-heatmaps.png"))
        browser.close()
    print(here / "report.png", here / "report-heatmaps.png")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bisect-report/nvfp4/report.html")
