from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from layerbisect.comparison.comparator import compare_captures
from layerbisect.comparison.findings import Finding
from layerbisect.comparison.gate import evaluate
from layerbisect.comparison.record import (
    Audits,
    BisectSummary,
    Continuation,
    Continuations,
    Localization,
    Paths,
    RunRecord,
    Runtime,
    Tokens,
)
from layerbisect.comparison.report import MARKER, Report
from layerbisect.comparison.sections import Column, Section
from layerbisect.comparison.synthetic import plant_growing_scale, plant_nan, synthetic_pair
from layerbisect.errors import InputError
from layerbisect.reports import html, junit, markdown, terminal
from layerbisect.reports.common import fmt_cell

TOKENS = ("<bos>", "The", " capital", " of", " France", " is", " Paris", ".")


def make_record(runtime_s: float = 1.25) -> RunRecord:
    """A record with every part filled, as the pipeline makes it (values made up, shapes real)."""
    n = 4
    layers = [dict(layer=i, local_cosine=0.999 - 0.01 * i, local_rel_l2=0.01 * (i + 1), accumulated_cosine=0.99,
                   accumulated_rel_l2=0.02 * (i + 1), added_rel_l2=0.01, worst_local_op="mlp.down",
                   verdict="amplifies earlier error" if i == 3 else "") for i in range(n)]  # fmt: skip
    modules = [dict(module=f"layers.{i}.{op}", layer=i, op=op, cosine=0.999, rel_l2=0.05 * (i + 1), alpha=1.01,
                    nonfinite=0, scheme="nvfp4") for i in range(n) for op in ("attn.q_proj", "mlp.down_proj")]
    headroom = [dict(module=f"layers.{i}.mlp.down_proj", layer=i, op="mlp.down_proj", scale_kind="fp8 input_scale",
                     limit=448.0, input_amax=100.0 * (i + 1), ratio=(i + 1) / 4.48, share_over=0.0,
                     extra_key_ignored=1) for i in range(n)]  # fmt: skip
    weights = [dict(name=f"layers.{i}.mlp.down_proj.weight", kind="linear", layer=i, op="mlp.down_proj",
                    scheme="nvfp4", shape=(64, 128), cosine=0.99, rel_err=0.1, alpha=2.0 if i == 2 else 1.0,
                    nonfinite=0, status="fault" if i == 2 else "ok", cause="double_scale" if i == 2 else "",
                    note="cand ≈ 2·ref" if i == 2 else "") for i in range(n)]  # fmt: skip

    class FakeBisect:
        culprits, verdict, runs, n_modules, after_passed = ["layers.2.mlp.down_proj"], "culprits", 5, 8, True
        history = [{"quantized": k, "passed": k < 3, "min_residual_cosine": 0.9, "logit_mean_kl": 0.2,
                    "top1_agreement": 1.0} for k in (0, 8, 4, 2, 3)]  # fmt: skip

    return RunRecord(
        title="tiny-nvfp4/ vs tiny.gguf",
        labels=(("scheme", "NVFP4"),),
        paths=Paths("tiny.gguf", "tiny-nvfp4/"),
        tokens=Tokens(tuple(range(8)), TOKENS, 6, "The capital of France is"),
        continuations=Continuations(Continuation(" Paris.", (1, 2)), Continuation(" a a", (1, 3))),
        runtime=Runtime({"load_reference": runtime_s, "run_candidate": 2.5}, {"host_rss": 3 * 2**30}),
        localization=Localization.from_rows(layers, sorted(modules, key=lambda m: -m["rel_l2"])),
        audits=Audits.build("double_scale", headroom, weights),
        bisect=BisectSummary.from_result(FakeBisect()),
    )


def make_report(bug: str = "nan") -> Report:
    ref, cand, info = synthetic_pair()
    if bug == "nan":
        plant_nan(cand, "layers.2.mlp.down", 3)
    elif bug == "blowup":
        plant_growing_scale(cand, 1, 2.0, final_softcap=info.final_softcap)
    rep = Report(compare_captures(ref, cand, info), record=make_record())
    rep.add_finding(Finding("error", "culprit", "Weight scale of layers.2.mlp.down_proj is 1e4× off",
                            point="layers.2.mlp.down", layer=2, op="mlp.down", evidence={"scale": 1e4}))  # fmt: skip
    rows = pd.DataFrame({"layer": [0, 1], "local_cos": [0.999, 0.5]}).to_dict("records")
    rep.add_section(Section.from_records("local-vs-accumulated-extra", "Local vs accumulated (extra)", rows))
    return rep


def test_json_is_byte_identical_across_runs_and_valid():
    a, b = make_report().to_json(), make_report().to_json()
    assert a == b

    def no_constants(c):
        raise AssertionError(f"non-standard JSON constant {c}")

    data = json.loads(a, parse_constant=no_constants)  # strict JSON: no NaN/Infinity literals
    assert data["points"]["layers.2.mlp.down"]["min_cosine"] == "nan"
    assert '"culprit"' in a and "Local vs accumulated" in a
    # run-time measurements never reach report.json: a slower run gives the same bytes
    slow = make_report()
    slow.put(runtime=Runtime({"load_reference": 99.0}, {"host_rss": 1}))
    assert slow.to_json() == a
    assert data["run"]["tokens"]["strings"] == list(TOKENS) and "runtime" not in data["run"]
    keys = [s["key"] for s in data["sections"]]
    assert keys == ["local-vs-accumulated", "per-module", "scale-headroom", "weight-audit", "module-bisect",
                    "local-vs-accumulated-extra"], keys  # fmt: skip


def test_save_writes_all_formats_and_parquet_round_trips(tmp_path):
    rep = make_report()
    out = rep.save(tmp_path / "r")
    assert sorted(out) == ["html", "json", "md", "parquet", "runtime"]
    assert json.loads(out["runtime"].read_text())["timings_s"]["load_reference"] == 1.25
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
                                     "## Local vs accumulated", "## Weight audit", "## Module bisect")}  # fmt: skip
    assert pos["## Findings"] == min(pos.values())
    first_bullet = md[pos["## Findings"] :].splitlines()[2]
    assert "nonfinite_onset" in first_bullet and "layers.2.mlp.down @ token 3" in first_bullet
    assert "culprit" in md and " a a" in md and "Paris" in md
    assert "All points" not in md, "every point is in report.html / points.parquet, not in the PR-sized report"
    # the brief view: the worst rows first, a pointer to the rest
    loc = md[pos["## Local vs accumulated"] :]
    assert loc.index("| 3 |") < loc.index("| 0 |") and "largest local rel err first" in loc
    assert "double_scale" in md[pos["## Weight audit"] :] and "1 fault(s) in 4 tensors" in md
    assert "load reference 1.25 s" in md, "timings reach the report from the typed record"


DICT_REPR = re.compile(r"""\{\s*['"][^'"]+['"]\s*:|\[\s*\{|\{…\}|mappingproxy|\bdict\(|<[a-z_.]+ object at 0x""", re.I)


def _visible(page: str) -> str:
    """The HTML without its scripts (plotly.js and the figure JSON are code, not text for a reader)."""
    return re.sub(r"<script\b.*?</script>", "", page, flags=re.S | re.I)


def test_no_dict_reprs_in_markdown_or_html():
    rep = make_report()
    # a finding whose evidence nests records (as the culprit's does) and a section added by a later stage
    rep.add_finding(Finding("critical", "weight_audit", "nested evidence", layer=1,
                            evidence={"first": {"name": "x", "cos": 0.5}, "rows": [{"a": 1}], "n": 3}))  # fmt: skip
    rep.add_section("Routing agreement", [{"layer": 1, "expert_overlap": 0.75, "module": "layers.1.mlp.router"}])
    md, page, term = markdown.render(rep), html.render(rep), terminal.render_text(rep, width=200)
    for name, text in (("report.md", md), ("report.html", _visible(page)), ("terminal", term)):
        m = DICT_REPR.search(text)
        assert m is None, f"{name} shows a Python container repr: ...{text[max(0, m.start() - 80) : m.end() + 80]}..."
    assert "Routing agreement" in md and "layers.1.mlp.router" in md and "0.75" in md


def test_section_cells_are_scalars():
    with pytest.raises(TypeError, match="cells are scalars"):
        Section("x", "X", (Column("a"),), (({"nested": 1},),))
    with pytest.raises(TypeError):
        Section.from_records("x", "X", [{"a": [1, 2]}])
    s = Section.from_records("x", "X", [{"module": "layers.1.mlp.up_proj", "n": 2, "ok": True, "v": 0.5}])
    assert [c.kind for c in s.columns] == ["name", "int", "bool", "float"]


def test_terminal_report_has_findings_table_and_continuations():
    txt = terminal.render_text(make_report("blowup"), width=160)
    assert txt.index("Findings") < txt.index("Per layer")
    assert "norm_blowup" in txt and "cos min" in txt and " a a" in txt


def test_terminal_fits_80_columns_and_never_cuts_names():
    rep = make_report("blowup")
    txt = terminal.render_text(rep, width=80)
    long = [line for line in txt.splitlines() if len(line) > 80]
    assert not long, long[:3]
    ops = [o for o in rep.comparison.layer_table()["worst_op"] if o]
    for name in ("layers.3.mlp.down_proj", "layers.2.mlp.down_proj.weight", *ops):
        assert name in txt, f"{name} missing or cut in the 80-column terminal report"
    assert not re.search(r"layers\.…|\w…\s", txt), "a name or header was cut with an ellipsis"
    for header in ("cos min", "norm ratio", "rel err", "worst op", "NaN/Inf"):
        assert header in txt


def test_terminal_wide_section_continues_below_without_cutting_numbers():
    """A section with more numeric columns than 80 columns hold (per-expert weight error, routing per layer)
    continues in a second part with the name column repeated; every value is printed whole."""
    cols = (Column("tensor", "tensor", "name"), *(Column(f"k{i}", f"mean top-k overlap {i}") for i in range(8)))
    rows = tuple((f"layers.{j}.mlp.experts.5.down_proj.weight", *(0.123456789 * (i + 1) + j for i in range(8)))
                 for j in range(3))
    rep = make_report("blowup")
    rep.add_section(Section(key="wide", title="Wide", columns=cols, rows=rows))
    txt = terminal.render_text(rep, width=80)
    assert not [line for line in txt.splitlines() if len(line) > 80]
    part = txt[txt.index("Wide"):]
    assert "…" not in part
    assert part.count("layers.0.mlp.experts.5.down_proj.weight") == 2  # two parts, the name in each
    for j in range(3):
        for i in range(8):
            assert fmt_cell(0.123456789 * (i + 1) + j, cols[1 + i]) in part, (i, j)


def test_terminal_multiword_headers_do_not_widen_columns_past_80():
    """GGUF vs GGUF's type-pair table: text keys, numbers under long headers (rich sized a column to its
    unwrapped header and the line was cropped: "min sqnr db" showed "15." for 15.79)."""
    keys = ["tensors", "params", "cand_bpw", "ref_bpw", "identical", "median_sqnr_db", "min_sqnr_db", "mean_rel_err",
            "mean_module_out_rel_l2"]
    cols = (Column("ref_type", kind="text"), Column("cand_type", kind="text"),
            *(Column(k, kind="int" if k in ("tensors", "params", "identical") else "float") for k in keys),
            Column("worst_tensor", kind="text"))
    rows = tuple(("Q6_K", "Q3_K", 9, 167772160, 3.438, 6.562, 0, 15.9856033, 15.7935191, 0.158610966, 0.24682153,
                  f"layers.{j}.mlp.down_proj.weight") for j in (4, 13))
    rep = make_report()
    rep.add_section(Section(key="pairs", title="Pairs", columns=cols, rows=rows))
    txt = terminal.render_text(rep, width=80)
    part = txt[txt.index("Pairs"):]
    assert not [line for line in part.splitlines() if len(line) > 80]
    for v, c in zip(rows[0], cols):
        assert fmt_cell(v, c) in part, (c.key, fmt_cell(v, c))


def test_html_is_self_contained_and_has_plots():
    page = html.render(make_report())
    markup = _visible(page)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", markup, re.I)
    assert "http" not in markup.lower() and "@import" not in markup and "url(" not in markup
    assert not re.search(r"<script[^>]*\bsrc=", page, re.I) and "<link" not in page.lower()
    for pid in ("plot-cosine", "plot-norm-ratio", "plot-rel-l2", "plot-local", "plot-saturation", "heatmap-ops",
                "heatmap-tokens", "plot-logits"):  # fmt: skip
        assert f'id="{pid}"' in page, pid
    assert page.index('id="findings"') < page.index('id="depth"')
    assert "Local vs accumulated" in page and "culprit" in page and 'id="layer-2"' in page
    assert 'data-layer="2"' in page, "findings with a layer must be clickable"


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
