"""`scot-evaluate` (alias `python -m trainers.evaluate`): every benchmark x method, submissions, the check command."""

import errno
import json
import os
import shutil
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
    assert main(["--model", str(tmp_path / "no-model"), "--benchmark", "cirr", "--data_dir",
                 str(cir_data["cirr"])]) == 2
    assert "no-model' is not a model this package can load" in _one_error_line(capsys.readouterr().err)


def _one_error_line(stderr: str) -> str:
    """The CLI's error: exactly one line on stderr (log lines aside), no traceback."""
    lines = [line for line in stderr.splitlines() if not line.startswith(("INFO ", "WARNING "))]
    assert len(lines) == 1 and "error: " in lines[0] and "Traceback" not in stderr, stderr
    return lines[0]


def _break_weights(folder: Path) -> str:
    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:3000])  # truncated
    return "its weights are not a readable safetensors file (a truncated or damaged download?)"


def _lone_surrogate_caption(data_dir: Path) -> str:
    path = data_dir / "cirr" / "captions" / "cap.rc2.val.json"
    entries = json.loads(path.read_text())
    entries[3]["caption"] = "change to a \ud800 car"
    path.write_text(json.dumps(entries))  # JSON's escape, as a careless export writes it
    return "cap.rc2.val.json: the text at [3]['caption'] is not valid Unicode"


def _malformed_json(data_dir: Path) -> str:
    path = data_dir / "cirr" / "image_splits" / "split.rc2.val.json"
    path.write_text(path.read_text()[:-20])
    return "split.rc2.val.json is not valid JSON (CIRR image split"


@pytest.mark.parametrize("damage, command", [(_break_weights, "evaluate"), (_lone_surrogate_caption, "evaluate"),
                                             (_lone_surrogate_caption, "check"), (_malformed_json, "evaluate"),
                                             (_malformed_json, "check")])
def test_bad_input_is_one_line_on_stderr_and_exit_status_2(damage, command, cir_data, scot_folder, tmp_path, capsys):
    model, data_dir = tmp_path / "model", tmp_path / "cirr_dataset"
    shutil.copytree(scot_folder, model)
    shutil.copytree(cir_data["cirr"], data_dir)
    message = damage(model if damage is _break_weights else data_dir)
    argv = ["--model", str(model), "--method", "text", "--cache_dir", str(tmp_path / "cache"),
            "--output_dir", str(tmp_path / "out")] if command == "evaluate" else ["check", "--split", "val"]
    assert main([*argv, "--benchmark", "cirr", "--data_dir", str(data_dir), "--no_progress"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert message in line and str(model if damage is _break_weights else data_dir) in line


def test_a_full_disk_while_caching_is_one_line_and_exit_status_2(cir_data, scot_folder, tmp_path, capsys,
                                                                 monkeypatch):
    from scot_eval import tasks

    def full_disk(tensors, path, metadata=None):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(tasks, "atomic_save_file", full_disk)
    assert main(["--model", str(scot_folder), "--benchmark", "cirr", "--data_dir", str(cir_data["cirr"]),
                 "--method", "image", "--cache_dir", str(tmp_path / "cache"), "--no_progress"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "No space left on device" in line and str(tmp_path / "cache") in line


def _custom_code_folder(folder: Path, marker: Path, config: dict) -> Path:
    """A model folder whose config asks for its own code (`auto_map`); running that code creates `marker`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**config, "auto_map": {
        "AutoConfig": "custom.CustomConfig", "AutoModel": "custom.CustomModel",
        "AutoTokenizer": ["custom.CustomTokenizer", None], "AutoImageProcessor": "custom.CustomImageProcessor"}}))
    (folder / "custom.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n")
    return folder


def test_a_folder_with_its_own_code_is_never_run_nor_asked_about(backbone_folders, cir_data, tmp_path, capsys,
                                                                  monkeypatch):
    # The attack: a folder with an unknown model_type and an auto_map made transformers prompt, and `echo y |` ran
    # its code. Loading passes trust_remote_code=False: if anything still asked, the answer would be "y".
    questions = []
    monkeypatch.setattr("builtins.input", lambda prompt="": questions.append(prompt) or "y")
    marker = tmp_path / "the-folder's-code-ran"
    unknown = _custom_code_folder(tmp_path / "unknown", marker, {"model_type": "custom_retriever"})
    argv = ["--benchmark", "cirr", "--data_dir", str(cir_data["cirr"]), "--method", "text", "--no_progress",
            "--cache_dir", str(tmp_path / "cache"), "--output_dir", str(tmp_path / "out")]
    assert main(["--model", str(unknown), *argv]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"'{unknown}' is not a model this package can load" in line and "contains custom code" in line
    # a CLIP folder whose files also name custom code: loaded as the CLIP it is, its code never imported
    clip = tmp_path / "clip"
    shutil.copytree(backbone_folders["clip"], clip)
    _custom_code_folder(clip, marker, json.loads((clip / "config.json").read_text()))
    for name in ("tokenizer_config.json", "preprocessor_config.json"):
        settings = json.loads((clip / name).read_text())
        settings["auto_map"] = {"AutoTokenizer": ["custom.CustomTokenizer", None],
                                "AutoImageProcessor": "custom.CustomImageProcessor"}
        (clip / name).write_text(json.dumps(settings))
    assert main(["--model", str(clip), *argv]) == 0
    assert not marker.exists() and questions == []


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
