"""`python -m demo.grounding_gate`: the sixth round's rule and its report."""

from demo.grounding_gate import ALPHAS, format_report, select_alpha


def _seed(ungated, per_alpha):
    validation = {"ungated": ungated}
    validation.update({str(alpha): {"threshold": 0.5, "R@1": value, "gated": 10.0}
                       for alpha, value in zip(ALPHAS, per_alpha)})
    return {"validation": validation,
            "benchmark_ungated": {"colour": {"R@1": 10.0}, "count": {"R@1": 4.0}},
            "benchmark_gated": {"colour": {"R@1": 8.0}, "count": {"R@1": 5.0}}}


def test_the_rule_takes_the_strictest_alpha_that_keeps_the_validation_recall():
    # ALPHAS run from the loosest (0.9) to the strictest (0.1); the mean over seeds decides, not one seed
    seeds = {"0": _seed(60.0, [60.0, 59.0, 61.0, 58.0, 50.0]), "1": _seed(62.0, [62.0, 61.0, 62.0, 64.0, 50.0])}
    assert select_alpha(seeds) == 0.25  # mean 61.0 = ungated 61.0; 0.1 loses
    seeds = {"0": _seed(60.0, [59.0, 59.0, 59.0, 59.0, 59.0])}
    assert select_alpha(seeds) is None  # every α loses: no gate


def test_the_report_shows_every_alpha_and_both_benchmark_rows():
    seeds = {"0": _seed(60.0, [60.0, 59.0, 61.0, 58.0, 50.0]), "1": _seed(62.0, [62.0, 61.0, 62.0, 64.0, 50.0])}
    results = {"variant": "v", "neighbours": 10, "seeds": seeds, "selected_alpha": 0.25,
               "baselines": {"image": {"colour": {"R@1": 6.0}, "count": {"R@1": 3.0}},
                             "sum": {"colour": {"R@1": 11.0}, "count": {"R@1": 4.0}}}}
    report = format_report(results)
    assert all(f"| {alpha} |" in report for alpha in ALPHAS)
    assert "| no gate | — | 0 | 61.00 |" in report
    assert "α = 0.25" in report
    assert "| v, ungated | 10.0 ± 0.0 | 4.0 ± 0.0 | 7.0 ± 0.0 |" in report
    assert "| v, gated | 8.0 ± 0.0 | 5.0 ± 0.0 | 6.5 ± 0.0 |" in report
    assert "| image only | 6.0 | 3.0 | 4.5 |" in report and "| image + text | 11.0 | 4.0 | 7.5 |" in report
