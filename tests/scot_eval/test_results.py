"""EvaluationResult: metric fields, the dict / JSON form metrics.json has always had, and the paper-style reports."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scot_eval.results import EvaluationResult, MetricValue, TaskCounts

CIRR = {
    "benchmark": "cirr", "split": "val", "method": "scot",
    "metrics": {"R@1": 12.5, "R@5": 37.5, "R@10": 50.0, "R@50": 100.0,
                "Rsubset@1": 25.0, "Rsubset@2": 62.5, "Rsubset@3": 87.5},
    "counts": {"cirr": {"queries": 8, "queries_evaluated": 7, "queries_skipped": 1,
                        "skipped_by_reason": {"reference image missing or unreadable": 1}, "gallery_images": 12,
                        "gallery_images_used": 11, "missing_images": 1, "unreadable_images": 0}},
    "model": "outputs/scot-model",
}
FASHIONIQ_METRICS = {"dress_R@10": 10.0, "dress_R@50": 20.0, "shirt_R@10": 30.0, "shirt_R@50": 40.0,
                     "toptee_R@10": 50.0, "toptee_R@50": 60.5,
                     "average_R@10": 30.0, "average_R@50": 40.166666666666664}


def test_metric_values_name_their_fields():
    metric = MetricValue("Rsubset", 2, 62.5)
    assert (metric.name, metric.key, metric.metric_id) == ("Rsubset@2", "Rsubset@2", "recall_subset@2")
    grouped = MetricValue.from_key("dress_R@10", 10)
    assert grouped == MetricValue("R", 10, 10.0, "dress")
    assert (grouped.key, grouped.metric_id) == ("dress_R@10", "recall@10")
    assert MetricValue.from_key("mAP@50", 3.0).metric_id == "map@50"
    for bad in ("loss", "R@0", "P@10", "dress_R@ten"):
        with pytest.raises(ValueError, match=f"{bad!r} is not a metric of this package"):
            MetricValue.from_key(bad, 1.0)
    with pytest.raises(ValueError, match="Unknown metric kind 'P'"):
        MetricValue("P", 1, 0.0)


def test_dict_form_is_metrics_json_and_survives_a_json_round_trip():
    result = EvaluationResult.from_dict(CIRR)
    assert isinstance(result.counts["cirr"], TaskCounts) and result.counts["cirr"].queries_skipped == 1
    assert result.to_dict() == CIRR  # the same object metrics.json always held
    assert EvaluationResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    assert result.metric("Rsubset", 1) == 25.0 and result.metrics["R@50"] == 100.0
    with pytest.raises(KeyError, match="no metric mAP@5"):
        result.metric("mAP", 5)
    # dict-style reading, for callers written when results were plain dicts
    assert result["metrics"] == CIRR["metrics"] and result["submissions"] == {}
    # CIRCO's extra count appears only where it was counted
    circo_counts = TaskCounts(3, 3, 12, 12, 0, 0, ground_truths_not_in_gallery=2)
    assert circo_counts.to_dict()["ground_truths_not_in_gallery"] == 2
    assert TaskCounts.from_dict(circo_counts.to_dict()) == circo_counts
    with pytest.raises(ValueError, match="needs at least a 'benchmark'"):
        EvaluationResult.from_dict({"metrics": {}})


def test_tables_are_laid_out_like_the_papers():
    assert EvaluationResult.from_dict(CIRR).format_table() == "\n".join([
        "cirr val, method scot",
        "method          R@1        R@5       R@10       R@50  Rsubset@1  Rsubset@2  Rsubset@3",
        "scot          12.50      37.50      50.00     100.00      25.00      62.50      87.50",
    ])
    fashioniq = EvaluationResult.from_dict({"benchmark": "fashioniq", "split": "val", "method": "sum",
                                            "metrics": FASHIONIQ_METRICS, "fashioniq_captions": "searle"})
    assert fashioniq.format_table() == "\n".join([
        "fashioniq val, method sum, captions searle",
        "            Average          Dress           Shirt          Top/Tee     ",  # the average first
        "method      R@10    R@50    R@10    R@50    R@10    R@50    R@10    R@50",
        "sum        30.00   40.17   10.00   20.00   30.00   40.00   50.00   60.50",
    ])
    test_split = EvaluationResult("circo", "test", "text", submissions={"circo_test_submission.json": {"0": [1]}})
    assert test_split.format_table() == ("circo test, method text: no public targets; submission files written "
                                         "instead of metrics.")


def test_counts_report_what_was_skipped():
    assert EvaluationResult.from_dict(CIRR).format_counts() == (
        "cirr: 7/8 queries evaluated, gallery 11/12 images (1 missing, 0 unreadable images skipped); "
        "skipped: 1 reference image missing or unreadable")
    assert TaskCounts(4, 4, 6, 6, 0, 0).describe("shirt") == "shirt: 4/4 queries evaluated, gallery 6/6 images"


def test_counts_name_missing_ground_truths_and_the_queries_ranked_by_text_alone():
    circo = TaskCounts(3, 3, 12, 11, 1, 0, ground_truths_not_in_gallery=2, text_only_queries=["1"])
    assert circo.describe("circo") == (
        "circo: 3/3 queries evaluated, gallery 11/12 images (1 missing, 0 unreadable images skipped); 2 ground truths "
        "not in the gallery (still counted in the mAP denominator, as CIRCO's server does); 1 queries ranked by their "
        "text alone (reference image missing or unreadable): 1")
    assert circo.to_dict()["text_only_queries"] == ["1"] and TaskCounts.from_dict(circo.to_dict()) == circo
    assert "text_only_queries" not in TaskCounts(4, 4, 6, 6, 0, 0).to_dict()  # metrics.json as before
    many = TaskCounts(30, 30, 6, 5, 1, 0, text_only_queries=[str(index) for index in range(25)])
    assert many.describe("cirr").endswith(": 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 15 more (metrics.json lists all)")
    assert len(many.to_dict()["text_only_queries"]) == 25


def test_write_outputs_and_read_back(tmp_path):
    submission = {"version": "rc2", "metric": "recall", "12060": ["dev-0-1-img0"]}
    result = EvaluationResult.from_dict(CIRR)
    result.submissions = {"cirr_test1_recall.json": submission}
    written = result.write_outputs(tmp_path / "out")
    assert [path.name for path in written] == ["metrics.json", "cirr_test1_recall.json"]
    assert json.loads(written[0].read_text()) == CIRR  # no submissions in metrics.json
    assert json.loads(written[1].read_text()) == submission
    read = EvaluationResult.read(written[0])
    assert read.metric_values == result.metric_values and read.submissions == {}
    (tmp_path / "broken.json").write_text('{"benchmark": "cirr", "metrics": {"accuracy": 1}}')
    with pytest.raises(ValueError, match="broken.json is not an evaluation result"):
        EvaluationResult.read(tmp_path / "broken.json")


def test_reading_results_needs_no_torch():
    # hub_cards and other readers of metrics.json import this module; the evaluation's heavy parts load on first use
    code = ("import sys, scot_eval, scot_eval.results; heavy = {'torch', 'numpy', 'transformers'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], check=True, timeout=120)
