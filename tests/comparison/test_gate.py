from __future__ import annotations

import json

import pytest

from layerbisect.comparison.comparator import compare_captures
from layerbisect.comparison.gate import EXIT_FAIL, EXIT_PASS, GateConfig, evaluate, load_baseline
from layerbisect.comparison.report import Report
from layerbisect.comparison.synthetic import plant_growing_scale, saturate_logits, synthetic_pair
from layerbisect.errors import InputError


def report(noise: float = 1e-3, **kw) -> Report:
    ref, cand, info = synthetic_pair(noise=noise, **kw)
    return Report(compare_captures(ref, cand, info))


def test_builtin_gate_passes_healthy_and_fails_blowup():
    res = evaluate(report())
    assert res.passed and res.exit_code == EXIT_PASS and res.failures == []
    ref, cand, info = synthetic_pair()
    plant_growing_scale(cand, 2, 2.0, final_softcap=info.final_softcap)
    bad = evaluate(Report(compare_captures(ref, cand, info)))
    assert not bad and bad.exit_code == EXIT_FAIL
    assert any(f.startswith("layers.2.attn_norm") and "max_norm_ratio" in f for f in bad.failures)
    # a token is named only beside the lowest cosine (worst_token is that one's), never beside a norm ratio alone
    assert all("(token " not in f or "min cosine" in f for f in bad.failures)


def test_toml_rules_per_pattern(tmp_path):
    rep = report(noise=0.05)  # cosine ~0.999, rel_l2 ~0.05-0.1; 1-2 of 8 near-tied top-1 logits flip
    strict = GateConfig.from_toml_text("[default]\nmin_cosine = 0.99999\n")
    assert not evaluate(rep, strict)
    p = tmp_path / "gate.toml"
    p.write_text(
        '[default]\nmin_cosine = 0.99999\nmax_rel_l2 = 0.2\n\n[[rule]]\npattern = "*"\nmin_cosine = 0.9\n\n'
        '[[rule]]\npattern = "logits*"\nmax_kl = 0.1\nmin_top1 = 0.5\nmax_norm_ratio = false\n'
    )
    cfg = GateConfig.from_toml(p)
    assert cfg.thresholds_for("layers.0.out").min_cosine == 0.9
    assert cfg.thresholds_for("logits").max_norm_ratio is None
    assert cfg.thresholds_for("layers.0.out").max_norm_ratio == 1.5
    assert evaluate(rep, cfg).passed
    assert evaluate(rep, cfg).notes == []  # both patterns match something


def test_a_rule_that_matches_no_point_is_noted_not_silent(tmp_path):
    rep = report()
    p = tmp_path / "gate.toml"
    p.write_text('[[rule]]\npattern = "layer.*.out"\nmin_cosine = 0.999\n\n[[rule]]\npattern = "layers.1.*"\n'
                 'min_cosine = 0.9\n')
    res = evaluate(rep, GateConfig.from_toml(p))
    assert res.notes == [f"{p} [[rule]] #1: pattern 'layer.*.out' matches no compared point"]
    assert evaluate(rep).notes == []  # the built-in rules are never reported


def test_critical_finding_fails_gate_unless_fail_on_is_empty():
    ref, cand, info = synthetic_pair()
    saturate_logits(cand, 30.0)
    rep = Report(compare_captures(ref, cand, info))
    cfg = GateConfig.from_toml_text(
        "[default]\nmax_rel_l2 = false\nmax_norm_ratio = false\nmin_cosine = false\nmax_saturation = false\n"
        "[[rule]]\npattern = 'logits*'\nmax_kl = false\nmin_top1 = false\n"
    )
    res = evaluate(rep, cfg)
    assert [f for f in res.failures if "softcap_saturation" in f] and len(res.failures) == 1
    none = GateConfig.from_toml_text(
        "[default]\nmax_rel_l2 = false\nmax_norm_ratio = false\nmin_cosine = false\nmax_saturation = false\n"
        "[[rule]]\npattern = 'logits*'\nmax_kl = false\nmin_top1 = false\n[gate]\nfail_on = []\n"
    )
    assert evaluate(rep, none).passed


def test_baseline_regression_both_ways(tmp_path):
    base = report(noise=1e-3)
    bpath = tmp_path / "baseline.json"
    bpath.write_text(base.to_json())
    assert load_baseline(bpath)["layers.0.out"] > 0.999
    # Same run vs itself: passes.
    assert evaluate(base, baseline=bpath).passed
    # Noisier candidate still within absolute thresholds but a regression vs the baseline.
    worse = report(noise=0.03)
    assert evaluate(worse).passed
    res = evaluate(worse, baseline=bpath)
    assert not res and any("dropped" in f and "vs baseline" in f for f in res.failures)
    # A looser tolerance accepts it.
    cfg = GateConfig.from_toml_text("[baseline]\nmax_cosine_drop = 0.05\n")
    assert evaluate(worse, cfg, baseline=bpath).passed
    # Mapping baseline works too.
    assert not evaluate(worse, baseline=json.loads(bpath.read_text()))


@pytest.mark.parametrize(
    "text",
    [
        "[default\nmin_cosine=1",  # not TOML
        "[default]\nmin_cosin = 0.9\n",  # typo
        "[default]\nmin_cosine = 'high'\n",
        "[[rule]]\nmin_cosine = 0.9\n",  # no pattern
        "[colours]\nx = 1\n",
        "[gate]\nfail_on = ['fatal']\n",
        "[default]\nmin_cosine = 1.5\n",  # no run can meet it
        '[[rule]]\npattern = "logits"\nmin_top1 = -0.1\n',
        "[default]\nmax_rel_l2 = -1\n",
    ],
    ids=["syntax", "unknown-key", "not-a-number", "rule-without-pattern", "unknown-section", "bad-severity",
         "cosine-above-1", "share-below-0", "negative-bound"],
)
def test_bad_toml_is_input_error(text):
    with pytest.raises(InputError):
        GateConfig.from_toml_text(text, where="gate.toml")


def test_bad_baseline_is_input_error(tmp_path):
    rep = report()
    with pytest.raises(InputError):
        evaluate(rep, baseline=tmp_path / "missing.json")
    p = tmp_path / "b.json"
    p.write_text("{not json")
    with pytest.raises(InputError):
        evaluate(rep, baseline=p)
    p.write_text('{"hello": 1}')
    with pytest.raises(InputError):
        evaluate(rep, baseline=p)
    with pytest.raises(InputError):
        GateConfig.from_toml(tmp_path / "nope.toml")


def test_the_comparisons_logit_verdict_follows_the_gates_logit_rule():
    """The logit keys of a `logits*` rule reach the comparison (``comparison_thresholds``), so the logit finding
    and JUnit say what the gate says; the default keys of other points are untouched."""
    cfg = GateConfig.from_toml_text('[default]\nmin_cosine = 0.5\n[[rule]]\npattern = "logits*"\nmax_kl = 1.0\n'
                                    "min_top1 = 0.25\n")
    t = cfg.comparison_thresholds()
    assert (t.max_kl, t.min_top1, t.min_cosine) == (1.0, 0.25, 0.5)
    ref, cand, info = synthetic_pair(noise=0.3)
    strict, loose = compare_captures(ref, cand, info), compare_captures(ref, cand, info, thresholds=t)
    assert not strict.logits and loose.logits
    assert GateConfig.builtin().comparison_thresholds().max_kl == 0.1
