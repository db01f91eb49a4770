from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from layerbisect.comparison.comparator import compare_captures
from layerbisect.comparison.findings import Finding
from layerbisect.comparison.gate import evaluate
from layerbisect.comparison.report import MARKER, Report
from layerbisect.comparison.synthetic import plant_growing_scale, plant_nan, synthetic_pair
from layerbisect.errors import InputError
from layerbisect.reports import html, junit, markdown, terminal

META = {
    "ref_model": "tiny.gguf",
    "cand_model": "tiny-nvfp4/",
    "prompt": "The capital of France is",
    "token_strings": ["<bos>", "The", " capital", " of", " France", " is", " Paris", "."],
    "continuations": {"ref": {"text": " Paris.", "ids": [1, 2]}, "cand": {"text": " a a", "ids": [1, 3]}},
    "timings": {"reference": 1.25, "candidate": 2.5},
    "peak_memory": {"reference": 3 * 2**30},
}


def make_report(bug: str = "nan") -> Report:
    ref, cand, info = synthetic_pair()
    if bug == "nan":
        plant_nan(cand, "layers.2.mlp.down", 3)
    elif bug == "blowup":
        plant_growing_scale(cand, 1, 2.0, final_softcap=info.final_softcap)
    rep = Report(compare_captures(ref, cand, info), meta=META)
    rep.add_finding(Finding("error", "culprit", "Weight scale of layers.2.mlp.down_proj is 1e4× off",
                            point="layers.2.mlp.down", layer=2, op="mlp.down", evidence={"scale": 1e4}))  # fmt: skip
    rep.add_section("Local vs accumulated", pd.DataFrame({"layer": [0, 1], "local_cos": [0.999, 0.5]}))
    return rep


def test_json_is_byte_identical_across_runs_and_valid():
    a, b = make_report().to_json(), make_report().to_json()
    assert a == b

    def no_constants(c):
        raise AssertionError(f"non-standard JSON constant {c}")

    data = json.loads(a, parse_constant=no_constants)  # strict JSON: no NaN/Infinity literals
    assert data["points"]["layers.2.mlp.down"]["min_cosine"] == "nan"
    assert '"culprit"' in a and "Local vs accumulated" in a


def test_save_writes_all_formats_and_parquet_round_trips(tmp_path):
    rep = make_report()
    out = rep.save(tmp_path / "r")
    assert sorted(out) == ["html", "json", "md", "parquet"]
    assert (tmp_path / "r" / MARKER).exists()
    back = pd.read_parquet(out["parquet"])
    pd.testing.assert_frame_equal(back, rep.df, check_dtype=True)
    # Saving again into our own report directory is allowed.
    rep.save(tmp_path / "r")


def test_csv_fallback_without_pyarrow(tmp_path, monkeypatch):
    import layerbisect.comparison.report as report_mod

    rep = make_report()
    monkeypatch.setattr(report_mod, "parquet_available", lambda: False)
    out = rep.save(tmp_path / "r", formats=("parquet",))
    assert out["parquet"].name == "points.csv"
    back = pd.read_csv(out["parquet"])
    assert len(back) == len(rep.df) and list(back.columns) == list(rep.df.columns)


def test_save_refuses_foreign_nonempty_dir(tmp_path):
    d = tmp_path / "home"
    d.mkdir()
    (d / "thesis.tex").write_text("precious")
    with pytest.raises(InputError):
        make_report().save(d)
    assert (d / "thesis.tex").read_text() == "precious"
    make_report().save(d, overwrite=True)
    assert (d / "report.json").exists()


def test_markdown_findings_come_first_and_show_everything():
    md = markdown.render(make_report())
    pos = {k: md.index(k) for k in ("## Findings", "## Run", "## Per layer", "## Logits", "## Greedy continuations",
                                     "## Local vs accumulated")}  # fmt: skip
    assert pos["## Findings"] == min(pos.values())
    first_bullet = md[pos["## Findings"] :].splitlines()[2]
    assert "nonfinite_onset" in first_bullet and "layers.2.mlp.down @ token 3" in first_bullet
    assert "culprit" in md and " a a" in md and "Paris" in md


def test_terminal_report_has_findings_table_and_continuations():
    txt = terminal.render_text(make_report("blowup"), width=160)
    assert txt.index("Findings") < txt.index("Per layer")
    assert "norm_blowup" in txt and "residual cosine" in txt and " a a" in txt


def test_html_is_self_contained_and_has_plots():
    page = html.render(make_report())
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "http" not in page.lower()
    assert "<script" not in page.lower() and "@import" not in page and "url(" not in page
    for pid in ("plot-cosine", "plot-norm-ratio", "plot-rel-l2", "plot-saturation", "heatmap-residual-cosine"):
        assert f'id="{pid}"' in page
    assert page.index('id="findings"') < page.index('id="plots"')
    assert "Local vs accumulated" in page and "culprit" in page


def test_junit_and_step_summary(tmp_path):
    rep = make_report()
    gate = evaluate(rep)
    xml = junit.render(rep, gate)
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    suite = root.find("testsuite")
    assert int(suite.get("failures")) > 0
    names = [c.get("name") for c in suite.iter("testcase")]
    assert "layers.2.mlp.down" in names and "embed" in names
    assert junit.write_step_summary(rep, gate, env={}) is None
    summary = tmp_path / "summary.md"
    assert junit.write_step_summary(rep, gate, env={"GITHUB_STEP_SUMMARY": str(summary)}) == summary
    text = summary.read_text()
    assert "## Findings" in text and "Gate: ❌ failed" in text
