"""`python -m demo.grounding_gate`: the sixth and seventh rounds' rules and their report."""

from demo.grounding_gate import ALPHAS, STATISTICS, format_report, select_alpha, select_statistic


def _seed(ungated, per_alpha, auc=None, change_per_alpha=None):
    """A seed's line: `per_alpha` the look-alike statistic's validation R@1 per α, `change_per_alpha` the change
    statistic's (the same when not given); `auc` {statistic: AUC}."""
    auc = auc or {"lookalike": 0.6, "change": 0.7}
    recalls = {"lookalike": per_alpha, "change": change_per_alpha or per_alpha}
    validation = {"ungated": ungated}
    for statistic in STATISTICS:
        validation[statistic] = {"auc": auc[statistic]}
        validation[statistic].update({str(alpha): {"threshold": 0.5, "R@1": value, "gated": 10.0}
                                      for alpha, value in zip(ALPHAS, recalls[statistic])})
    return {"validation": validation,
            "benchmark_ungated": {"colour": {"R@1": 10.0}, "count": {"R@1": 4.0}},
            "benchmark_gated_change": {"colour": {"R@1": 8.0}, "count": {"R@1": 5.0}},
            "gated_share_change": {"colour": 20.0, "count": 60.0}}


def test_the_rule_takes_the_strictest_alpha_that_keeps_the_validation_recall():
    # ALPHAS run from the loosest (0.9) to the strictest (0.1); the mean over seeds decides, not one seed
    seeds = {"0": _seed(60.0, [60.0, 59.0, 61.0, 58.0, 50.0], change_per_alpha=[59.0] * 5),
             "1": _seed(62.0, [62.0, 61.0, 62.0, 64.0, 50.0], change_per_alpha=[63.0] * 5)}
    assert select_alpha(seeds, "lookalike") == 0.25  # mean 61.0 = ungated 61.0; 0.1 loses
    assert select_alpha(seeds, "change") == 0.1  # each statistic by its own recalls
    seeds = {"0": _seed(60.0, [59.0, 59.0, 59.0, 59.0, 59.0])}
    assert select_alpha(seeds, "lookalike") is None  # every α loses: no gate


def test_the_statistic_is_the_one_with_the_higher_mean_auc():
    seeds = {"0": _seed(60.0, [60.0] * 5, auc={"lookalike": 0.70, "change": 0.65}),
             "1": _seed(60.0, [60.0] * 5, auc={"lookalike": 0.60, "change": 0.70})}
    assert select_statistic(seeds) == "change"  # means 0.675 against 0.65
    seeds["1"] = _seed(60.0, [60.0] * 5, auc={"lookalike": 0.60, "change": 0.60})
    assert select_statistic(seeds) == "lookalike"


def test_the_report_shows_every_alpha_the_selections_and_the_benchmark_rows():
    seeds = {"0": _seed(60.0, [60.0, 59.0, 61.0, 58.0, 50.0]), "1": _seed(62.0, [62.0, 61.0, 62.0, 64.0, 50.0])}
    results = {"variant": "v", "neighbours": 10, "seeds": seeds, "selected_statistic": "change",
               "selected_alpha": {"lookalike": None, "change": 0.25},
               "baselines": {"image": {"colour": {"R@1": 6.0}, "count": {"R@1": 3.0}},
                             "sum": {"colour": {"R@1": 11.0}, "count": {"R@1": 4.0}}}}
    report = format_report(results)
    assert all(f"| lookalike | 0.600 | {alpha} |" in report and f"| change | 0.700 | {alpha} |" in report
               for alpha in ALPHAS)
    assert "| no gate | | | — | 0 | 61.00 |" in report
    assert "the statistic `change`" in report and "lookalike none (no gate), change 0.25" in report
    assert "| v, ungated | 10.0 ± 0.0 | 4.0 ± 0.0 | 7.0 ± 0.0 |" in report
    assert "| v, gated, change (α 0.25) | 8.0 ± 0.0 | 5.0 ± 0.0 | 6.5 ± 0.0 |" in report
    assert "gated, lookalike" not in report  # no α of it kept the validation recall: no row
    assert "| change (α 0.25) | 20 | 60 |" in report
    assert "| image only | 6.0 | 3.0 | 4.5 |" in report and "| image + text | 11.0 | 4.0 | 7.5 |" in report
