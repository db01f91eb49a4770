"""Regenerate docs/img/report.png: a synthetic blow-up run rendered by headless Chromium.

python docs/img/make_report_png.py
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from layerbisect.comparison.comparator import compare_captures
from layerbisect.comparison.report import Report
from layerbisect.comparison.synthetic import plant_growing_scale, synthetic_pair


def main() -> None:
    ref, cand, info = synthetic_pair(n_layers=12, T=16, noise=2e-3, attn_softcap=50.0)
    info.arch = "gemma2 (synthetic)"
    plant_growing_scale(cand, 5, 1.6, final_softcap=info.final_softcap)
    toks = ["<bos>", "What", " is", " 2", "+", "2", "?", "\n", "The", " answer", " is", " 4", ".", " It", " is", " a"]
    meta = {
        "ref_model": "model.gguf (Q8_0 → FP32)",
        "cand_model": "model-fp8-block/ (emulated)",
        "prompt": "What is 2+2?",
        "token_strings": toks,
        "continuations": {
            "ref": {"text": " The answer is 4.", "ids": [651, 3448, 603, 235248, 235310]},
            "cand": {"text": " a a a a a", "ids": [476, 476, 476, 476, 476]},
        },
        "timings": {"reference": 1.84, "candidate": 3.12},
    }
    rep = Report(compare_captures(ref, cand, info), meta=meta)
    out = Path(tempfile.mkdtemp())
    page = rep.save(out / "report", formats=("html",))["html"]
    png = Path(__file__).with_name("report.png")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or "chromium"
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={out / 'profile'}", f"--screenshot={png}", "--window-size=1400,3000", page.as_uri()],
        check=True, capture_output=True,
    )  # fmt: skip
    print(png)


if __name__ == "__main__":
    main()
