"""`python -m demo.novelty_gate`: the eighth round's rule and its report."""

from demo.novelty_gate import adopt, format_report


def _seed(ungated, gated, shares=(10.0, 40.0)):
    return {"validation": {"threshold": 0.4, "gated_fraction": 0.05, "bank_size": 1480.0,
                           "floor_R@1_ungated": ungated, "floor_R@1_gated": gated},
            "benchmark_ungated": {"colour": {"R@1": 12.0}, "orientation": {"R@1": 40.0}},
            "benchmark_gated": {"colour": {"R@1": 11.0}, "orientation": {"R@1": 43.0}},
            "gated_share": {"colour": shares[0], "orientation": shares[1]}}


def test_the_rule_allows_one_point_of_validation_recall_on_the_mean_of_the_seeds():
    assert adopt({"0": _seed(60.0, 59.0), "1": _seed(62.0, 61.0)})  # exactly one point: adopted
    assert not adopt({"0": _seed(60.0, 58.0), "1": _seed(62.0, 61.5)})  # 1.25 points: not
    assert adopt({"0": _seed(60.0, 57.0), "1": _seed(62.0, 63.0)})  # the mean decides, not one seed


def test_the_report_has_the_validation_line_the_decision_and_every_row():
    seeds = {"0": _seed(60.0, 58.0), "1": _seed(62.0, 61.5, shares=(20.0, 50.0))}
    results = {"variant": "v", "alpha": 0.05, "neighbours": 10, "tolerance": 1.0, "seeds": seeds,
               "adopted": adopt(seeds),
               "baselines": {"image": {"colour": {"R@1": 6.0}, "orientation": {"R@1": 44.0}}}}
    report = format_report(results)
    assert "floor R@1 61.00 ungated, 59.75 gated" in report and "**not adopted**" in report
    assert "| v, ungated | 12.0 ± 0.0 | 40.0 ± 0.0 | 26.0 ± 0.0 |" in report
    assert "| v, novelty gate | 11.0 ± 0.0 | 43.0 ± 0.0 | 27.0 ± 0.0 |" in report
    assert "| image only | 6.0 | 44.0 | 25.0 |" in report
    assert "| 15 | 45 |" in report  # the shares gated, mean of the seeds
