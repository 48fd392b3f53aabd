"""`python -m demo.run`: its options (HfArgumentParser) and stage 6 (evaluation, report, grid, model card) on a tiny
SCOT model and a tiny colour benchmark; stages 1-5 are the library's and demo.data / demo.backbone's, tested there."""

import json
import re
import time

import pytest
import torch
from PIL import Image

from demo import run
from demo.benchmark import KINDS, build_kinds_benchmark, load_kinds
from demo.data import TINT_COLOURS, prepare_image, tint
from demo.report import METHOD_NAMES
from modeling_scot import ScotModel, ScotProcessor

from .test_benchmark import _black_stamp
from .test_benchmark_kinds import _stamp


@pytest.fixture
def kinds(tmp_path):
    stamps = [("circle", _black_stamp("circle"), "a circle"), ("arrow", _stamp("arrow"), "an arrow")]
    build_kinds_benchmark(stamps, lambda image, colour: prepare_image(tint(image, colour), 32), TINT_COLOURS,
                          tmp_path / "benchmark", size=32)
    return load_kinds(tmp_path / "benchmark")


def test_options_and_their_defaults():
    assert run.parse_args([]) == run.DemoArguments()
    args = run.parse_args(["--output_dir", "elsewhere", "--llm_rows", "12", "--scot_epochs", "1"])
    assert (args.output_dir, args.llm_rows, args.scot_epochs) == ("elsewhere", 12, 1)
    assert args.triplets_dir == "scot-triplets"  # the others keep their defaults


def test_stage_six_writes_metrics_report_grid_and_card_per_kind(scot_folder, kinds, tmp_path, monkeypatch):
    monkeypatch.setenv("SCOT_CACHE_DIR", str(tmp_path / "cache"))
    args = run.DemoArguments(output_dir=str(tmp_path / "out"), scot_model_dir=str(tmp_path / "scot-demo"))
    (tmp_path / "out").mkdir()
    triplet_stats = {"kept_rows": 64, "per_generator": {"templates": 64}}
    gated = tmp_path / "scot-gated"  # the default is gated: the report then has its ungated row too
    ScotModel.from_pretrained(scot_folder, grounding_gate_neighbours=2, grounding_gate_threshold=0.5).save_pretrained(
        gated)
    ScotProcessor.from_pretrained(scot_folder).save_pretrained(gated)
    novel = tmp_path / "scot-novelty"  # every text unfamiliar (θ 1 > any cosine): the image-only ranking
    model = ScotModel.from_pretrained(scot_folder)
    model.set_novelty_gate(torch.randn(4, model.config.embed_dim), neighbours=2, threshold=1.0)
    model.save_pretrained(novel)
    ScotProcessor.from_pretrained(scot_folder).save_pretrained(novel)
    combiners = {method: scot_folder for method in run.COMBINERS}  # the same model under every other name here
    combiners["scot"], combiners["scot_novelty_gate"] = gated, novel
    summary = run.evaluate_and_report(args, combiners, kinds, triplet_stats, {}, time.perf_counter())

    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written == {"kinds": summary["metrics"], "average": summary["average"]}
    assert list(written["kinds"]) == list(KINDS)
    for per_method in written["kinds"].values():
        assert list(per_method) == list(METHOD_NAMES)
        assert all(list(values) == list(run.BENCHMARK_METRICS) for values in per_method.values())
        assert per_method["scot_infonce"] == per_method["scot_ungated"]  # the same weights, without the gate
        assert per_method["scot_novelty_gate"] == per_method["image"]  # every query answered by the image alone
    for method, values in written["average"].items():  # the average is the mean of the kinds, metric by metric
        for key, value in values.items():
            mean = sum(written["kinds"][kind][method][key] for kind in KINDS) / len(KINDS)
            assert value == pytest.approx(mean, abs=0.006)

    report = (tmp_path / "out" / "report.md").read_text()
    counted = {kind: int(re.search(rf"{kind} (\d+) queries", report).group(1)) for kind in KINDS}
    on_disk = {kind: len(json.loads((folder / "cirr" / "captions" / "cap.rc2.val.json").read_text()))
               for kind, folder in kinds.items()}
    assert counted == on_disk and sum(counted.values()) == sum(on_disk.values())  # the kinds add up to all queries
    assert "| method | colour | count | add_object | background | orientation | average |" in report
    assert all(f"### {kind}" in report for kind in KINDS)
    assert all(f"| {name} | " in report for name in METHOD_NAMES.values())
    assert all(line in report for line in summary["verdict"].split("; "))
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


def test_model_dir_holding_another_kind_of_model_is_left_alone(scot_folder, tmp_path):
    from modeling_scot import ScotModel, ScotProcessor

    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "config.json").write_text('{"model_type": "clip"}')
    model, processor = ScotModel.from_pretrained(scot_folder), ScotProcessor.from_pretrained(scot_folder)
    with pytest.raises(FileExistsError, match="another kind of model"):
        run.publish_model(model, processor, tmp_path / "clip")
    assert (tmp_path / "clip" / "config.json").read_text() == '{"model_type": "clip"}'


def test_a_stage_folder_the_demo_did_not_write_is_refused_not_emptied(tmp_path):
    foreign = tmp_path / "triplets-llm"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="did not write"):
        run.fresh_folder(foreign, "key")
    assert (foreign / "notes.txt").read_text() == "mine"
    run.mark_fresh(tmp_path / "stale", "old-key")
    (tmp_path / "stale" / "output.bin").write_text("stale")
    assert not run.fresh_folder(tmp_path / "stale", "new-key") and not (tmp_path / "stale").exists()
    run.mark_fresh(tmp_path / "current", "key")
    assert run.fresh_folder(tmp_path / "current", "key")
