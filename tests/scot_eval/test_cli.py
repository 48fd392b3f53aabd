"""`scot-evaluate` (alias `python -m trainers.evaluate`): every benchmark x method, submissions, the check command."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scot_eval.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]
EXPECTED_METRICS = {
    "fashioniq": {f"{group}_R@{k}" for group in ("dress", "shirt", "toptee", "average") for k in (10, 50)},
    "cirr": {"R@1", "R@5", "R@10", "R@50", "Rsubset@1", "Rsubset@2", "Rsubset@3"},
    "circo": {"mAP@5", "mAP@10", "mAP@25", "mAP@50"},
}


@pytest.mark.parametrize("method", ["scot", "image", "text", "sum"])
@pytest.mark.parametrize("benchmark", ["fashioniq", "cirr", "circo"])
def test_evaluation_entry_on_each_benchmark_and_method(benchmark, method, cir_data, scot_folder, tmp_path, capsys):
    output_dir = tmp_path / "out"
    exit_code = main(["--model", str(scot_folder), "--benchmark", benchmark, "--data_dir", str(cir_data[benchmark]),
                      "--method", method, "--output_dir", str(output_dir), "--cache_dir", str(tmp_path / "cache"),
                      "--no_progress"])
    assert exit_code == 0
    printed = capsys.readouterr().out
    result = json.loads((output_dir / "metrics.json").read_text())
    assert (result["benchmark"], result["split"], result["method"]) == (benchmark, "val", method)
    assert result["model"] == str(scot_folder)
    assert set(result["metrics"]) == EXPECTED_METRICS[benchmark]
    assert all(0.0 <= value <= 100.0 for value in result["metrics"].values())
    assert f"{benchmark} val, method {method}" in printed
    if benchmark == "fashioniq":
        assert "Average" in printed and "Top/Tee" in printed and result["fashioniq_captions"] == "clip4cir"
        # the dress gallery lists an image that does not exist: skipped and counted, never fatal
        assert result["counts"]["dress"]["missing_images"] == 1
        assert result["counts"]["dress"]["queries_evaluated"] == 3 and "1 missing" in printed
    elif benchmark == "cirr":
        assert "Rsubset@1" in printed
    else:
        assert "ground_truths_not_in_gallery" in result["counts"]["circo"]


def test_cirr_test_split_writes_both_submission_files(cir_data, scot_folder, tmp_path):
    output_dir = tmp_path / "submission"
    assert main(["--model", str(scot_folder), "--benchmark", "cirr", "--data_dir", str(cir_data["cirr"]),
                 "--split", "test1", "--output_dir", str(output_dir), "--cache_dir", str(tmp_path / "cache"),
                 "--no_progress"]) == 0
    captions = json.loads((cir_data["cirr"] / "cirr" / "captions" / "cap.rc2.test1.json").read_text())
    gallery = set(json.loads((cir_data["cirr"] / "cirr" / "image_splits" / "split.rc2.test1.json").read_text()))
    recall = json.loads((output_dir / "cirr_test1_recall.json").read_text())
    subset = json.loads((output_dir / "cirr_test1_recall_subset.json").read_text())
    assert (recall.pop("version"), recall.pop("metric")) == ("rc2", "recall")
    assert (subset.pop("version"), subset.pop("metric")) == ("rc2", "recall_subset")
    assert set(recall) == set(subset) == {str(entry["pairid"]) for entry in captions}
    for entry in captions:
        ranked, ranked_subset = recall[str(entry["pairid"])], subset[str(entry["pairid"])]
        # top 50, here the whole gallery but the reference (12 - 1 images), no repeats
        assert len(ranked) == min(50, len(gallery) - 1) == len(set(ranked)) and set(ranked) <= gallery
        assert entry["reference"] not in ranked and entry["reference"] not in ranked_subset
        assert len(ranked_subset) == 3 and set(ranked_subset) <= set(entry["img_set"]["members"])
        # the subset list follows the full ranking's order
        assert ranked_subset == [name for name in ranked if name in entry["img_set"]["members"]][:3]
    assert json.loads((output_dir / "metrics.json").read_text())["metrics"] == {}


def test_check_command_and_argument_errors(cir_data, tmp_path, capsys):
    assert main(["check", "--benchmark", "cirr", "--data_dir", str(cir_data["cirr"]), "--no_progress"]) == 0
    printed = capsys.readouterr().out
    assert "cirr at" in printed and "test1" in printed
    # a folder with none of the benchmark's splits fails the check
    assert main(["check", "--benchmark", "circo", "--data_dir", str(tmp_path), "--no_progress"]) == 1
    for argv, message in (
        (["--check", "--benchmark", "cirr", "--data_dir", str(tmp_path)], "unrecognized arguments: --check"),
        (["--benchmark", "cirr", "--data_dir", str(tmp_path)], "--model is required to evaluate"),
        (["--model", str(tmp_path / "no-model"), "--benchmark", "cirr", "--data_dir", str(tmp_path),
          "--update_model_card"], "is not a local folder whose model card could be updated"),
    ):
        with pytest.raises(SystemExit) as raised:
            main(argv)
        assert raised.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(ValueError, match="no-model.* is not a model this package can load"):
        main(["--model", str(tmp_path / "no-model"), "--benchmark", "cirr", "--data_dir", str(cir_data["cirr"])])


def _run(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH="")
    return subprocess.run([*args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180)


@pytest.mark.slow
def test_runs_as_a_console_script_and_under_its_former_module_name(cir_data, backbone_folders, tmp_path):
    # `python -m trainers.evaluate` on a bare encoder folder (the baselines need no trained Combiner)
    completed = _run(sys.executable, "-m", "trainers.evaluate", "--model", str(backbone_folders["clip"]),
                     "--benchmark", "cirr", "--data_dir", str(cir_data["cirr"]), "--method", "text",
                     "--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache"), "--no_progress")
    assert completed.returncode == 0, completed.stderr
    assert "cirr val, method text" in completed.stdout and (tmp_path / "out" / "metrics.json").is_file()
    # the console script, from outside the repository, and its check command
    script = Path(sys.executable).with_name("scot-evaluate")
    completed = subprocess.run([str(script), "check", "--benchmark", "fashioniq", "--data_dir",
                                str(cir_data["fashioniq"]), "--no_progress"], cwd=tmp_path, capture_output=True,
                               text=True, timeout=180, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert completed.returncode == 0, completed.stderr
    assert "val/dress" in completed.stdout and "missing: B00MISSING" in completed.stdout
