"""`python -m demo.run`: its options (HfArgumentParser) and stage 6 (evaluation, report, grid, model card) on a tiny
SCOT model and a tiny colour benchmark; stages 1-5 are the library's and demo.data / demo.backbone's, tested there."""

import json
import time

import pytest
from PIL import Image

from demo import run
from demo.benchmark import build_colour_benchmark
from demo.data import TINT_COLOURS, prepare_image, tint
from demo.report import METHOD_NAMES

from .test_benchmark import _black_stamp


@pytest.fixture
def benchmark_dir(tmp_path):
    stamps = [("circle", _black_stamp("circle")), ("square", _black_stamp("square"))]
    return build_colour_benchmark(stamps, lambda image, colour: prepare_image(tint(image, colour), 32),
                                  tuple(TINT_COLOURS), tmp_path / "benchmark")


def test_options_and_their_defaults():
    assert run.parse_args([]) == run.DemoArguments()
    args = run.parse_args(["--output_dir", "elsewhere", "--llm_rows", "12", "--scot_epochs", "1"])
    assert (args.output_dir, args.llm_rows, args.scot_epochs) == ("elsewhere", 12, 1)
    assert args.triplets_dir == "scot-triplets"  # the others keep their defaults


def test_stage_six_writes_metrics_report_grid_and_card(scot_folder, benchmark_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SCOT_CACHE_DIR", str(tmp_path / "cache"))
    args = run.DemoArguments(output_dir=str(tmp_path / "out"), scot_model_dir=str(tmp_path / "scot-demo"))
    (tmp_path / "out").mkdir()
    triplet_stats = {"kept_rows": 64, "per_generator": {"templates": 64}}
    summary = run.evaluate_and_report(args, scot_folder, scot_folder, benchmark_dir, triplet_stats, {},
                                      time.perf_counter())

    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert list(metrics) == list(METHOD_NAMES) and metrics == summary["metrics"]
    assert all(list(values) == list(run.BENCHMARK_METRICS) for values in metrics.values())
    assert metrics["scot_infonce"] == metrics["scot"]  # the same model twice here

    report = (tmp_path / "out" / "report.md").read_text()
    queries, gallery = 2 * 6 * 5, 2 * 6
    assert f"Benchmark: {queries} queries over\n{gallery} gallery images (held-out\n" in report
    assert "| method | R@1 | R@5 | R@10 | R@50 | Rsubset@1 | Rsubset@2 | Rsubset@3 |" in report
    assert all(f"| {name} | " in report for name in METHOD_NAMES.values())
    assert summary["verdict"] in report and "Training triplets: 64 ({'templates': 64})" in report
    with Image.open(tmp_path / "out" / "retrieval_grid.png") as grid:
        assert grid.width > 500

    card = (tmp_path / "scot-demo" / "README.md").read_text()
    assert all(f"| {name} | " in card for name in METHOD_NAMES.values())  # the card names methods as the report
    assert json.loads((tmp_path / "scot-demo" / "config.json").read_text())["model_type"] == "scot"


def test_model_dir_that_is_not_a_model_is_left_alone(scot_folder, tmp_path):
    from modeling_scot import ScotModel, ScotProcessor

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    model, processor = ScotModel.from_pretrained(scot_folder), ScotProcessor.from_pretrained(scot_folder)
    with pytest.raises(FileExistsError, match="holds no saved model"):
        run.publish_model(model, processor, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
