"""The evaluation entry: every benchmark x method on a tiny model, submissions, caching, caption protocols."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from trainers import evaluate
from trainers.evaluate import (
    evaluate_benchmark,
    evaluate_prepared,
    fashioniq_query_texts,
    load_model_and_processor,
    main,
    prepare_benchmark,
    query_embeddings,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
EXPECTED_METRICS = {
    "fashioniq": {f"{group}_R@{k}" for group in ("dress", "shirt", "toptee", "average") for k in (10, 50)},
    "cirr": {"R@1", "R@5", "R@10", "R@50", "Rsubset@1", "Rsubset@2", "Rsubset@3"},
    "circo": {"mAP@5", "mAP@10", "mAP@25", "mAP@50"},
}


@pytest.fixture(scope="module")
def model_and_processor(scot_folder):
    model, processor, trained = load_model_and_processor(scot_folder, "cpu")
    assert trained
    return model, processor


def test_fashioniq_caption_protocols():
    captions = ["Is Dark Red.", " has short sleeves?"]
    # CLIP4Cir: strip ".?, ", capitalize the first (which also lowercases the rest of it), join with " and "
    assert fashioniq_query_texts(captions, "clip4cir") == ["Is dark red and has short sleeves"]
    assert fashioniq_query_texts(captions, "searle") == ["Is Dark Red and has short sleeves",
                                                         "has short sleeves and Is Dark Red"]
    with pytest.raises(ValueError, match="Unknown FashionIQ caption protocol 'both'"):
        fashioniq_query_texts(captions, "both")


def test_query_embeddings_per_method(model_and_processor):
    model, _ = model_and_processor
    generator = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(5, model.config.embed_dim, generator=generator), dim=-1)
    texts = F.normalize(torch.randn(5, 2, model.config.embed_dim, generator=generator), dim=-1)
    first = texts[:, 0]
    assert torch.allclose(query_embeddings(model, images, first, "image"), images)
    assert torch.allclose(query_embeddings(model, images, first, "text"), first)
    assert torch.allclose(query_embeddings(model, images, first, "sum"), F.normalize(images + first, dim=-1))
    with torch.no_grad():
        composed = [model.compose(images, texts[:, order]) for order in (0, 1)]
    assert torch.allclose(query_embeddings(model, images, first, "scot"), composed[0], atol=1e-6)
    # two phrasings (SEARLE's both orders): the mean of the two normalised queries, normalised
    assert torch.allclose(query_embeddings(model, images, texts, "scot"),
                          F.normalize(composed[0] + composed[1], dim=-1), atol=1e-6)
    with pytest.raises(ValueError, match="Unknown method 'concat'"):
        query_embeddings(model, images, first, "concat")


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
    assert set(result["metrics"]) == EXPECTED_METRICS[benchmark]
    assert all(0.0 <= value <= 100.0 for value in result["metrics"].values())
    assert f"{benchmark} val, method {method}" in printed
    if benchmark == "fashioniq":
        assert "Average" in printed and "Top/Tee" in printed
        # the dress gallery lists an image that does not exist: skipped and counted, never fatal
        assert result["counts"]["dress"]["missing_images"] == 1
        assert result["counts"]["dress"]["queries_evaluated"] == 3 and "1 missing" in printed
    elif benchmark == "cirr":
        assert "Rsubset@1" in printed


def _independent_metrics(model, processor, data_dir, benchmark):
    """The same numbers from scratch: encode every image and text directly, rank with a full stable sort."""
    from trainers.benchmarks import load_benchmark

    (task,) = load_benchmark(benchmark, data_dir, "val")
    names = list(task.gallery)
    with torch.no_grad():
        images = {name: embed for name, embed in zip(names, model.get_image_features(
            **processor(images=[str(task.gallery[name]) for name in names], return_tensors="pt")))}
        texts = model.get_text_features(**{key: value for key, value in processor(
            text=[query.texts[0] for query in task.queries], return_tensors="pt").items()})
    gallery = torch.stack([images[name] for name in names])
    ranks, average_precisions = [], []
    for query, text in zip(task.queries, texts):
        order = torch.sort(F.normalize(images[query.reference] + text, dim=-1) @ gallery.T, descending=True,
                           stable=True).indices.tolist()
        ranked = [names[index] for index in order]
        if benchmark == "cirr":
            ranked.remove(query.reference)
            ranks.append(ranked.index(query.target))
        else:
            hits, total = 0, 0.0
            for position, name in enumerate(ranked[:5], start=1):
                if name in query.ground_truth:
                    hits += 1
                    total += hits / position
            average_precisions.append(total / min(len(query.ground_truth), 5))
    if benchmark == "cirr":
        return {"R@1": 100 * sum(rank < 1 for rank in ranks) / len(ranks),
                "R@5": 100 * sum(rank < 5 for rank in ranks) / len(ranks)}
    return {"mAP@5": 100 * sum(average_precisions) / len(average_precisions)}


@pytest.mark.parametrize("benchmark", ["cirr", "circo"])
def test_metrics_match_an_independent_end_to_end_computation(benchmark, model_and_processor, cir_data, tmp_path):
    model, processor = model_and_processor
    result = evaluate_benchmark(model, processor, benchmark, cir_data[benchmark], "val", "sum",
                                cache_dir=tmp_path, show_progress=False)
    for name, value in _independent_metrics(model, processor, cir_data[benchmark], benchmark).items():
        assert result["metrics"][name] == pytest.approx(value, abs=1e-6)


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


def test_circo_test_split_writes_its_submission(cir_data, model_and_processor, tmp_path):
    model, processor = model_and_processor
    result = evaluate_benchmark(model, processor, "circo", cir_data["circo"], "test", "text", cache_dir=tmp_path,
                                show_progress=False)
    evaluate.write_outputs(result, tmp_path / "out")
    submission = json.loads((tmp_path / "out" / "circo_test_submission.json").read_text())
    assert list(submission) == ["0", "1", "2"]
    assert all(len(ids) == 12 and all(isinstance(image_id, int) for image_id in ids) for ids in submission.values())


def test_gallery_embeddings_are_cached_as_safetensors_and_reused(model_and_processor, cir_data, tmp_path, monkeypatch):
    model, processor = model_and_processor
    first = evaluate_benchmark(model, processor, "cirr", cir_data["cirr"], "val", "image", cache_dir=tmp_path,
                               show_progress=False)
    cached = sorted(path.name for path in tmp_path.iterdir())
    assert cached and all(name.endswith(".safetensors") for name in cached)
    assert any(name.startswith("images-cirr-val-cirr-") for name in cached)

    def fail(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(evaluate, "encode_images", fail)
    monkeypatch.setattr(evaluate, "encode_texts", fail)
    assert evaluate_benchmark(model, processor, "cirr", cir_data["cirr"], "val", "image", cache_dir=tmp_path,
                              show_progress=False)["metrics"] == first["metrics"]
    # changed encoder weights change the fingerprint: the stale cache is not used
    fingerprint = evaluate.encoder_fingerprint(model, processor)
    with torch.no_grad():
        parameter = next(model.encoder.parameters())
        parameter.add_(1.0)
        try:
            assert evaluate.encoder_fingerprint(model, processor) != fingerprint
            with pytest.raises(AssertionError, match="the cache should have been used"):
                evaluate_benchmark(model, processor, "cirr", cir_data["cirr"], "val", "image", cache_dir=tmp_path,
                                   show_progress=False)
        finally:
            parameter.sub_(1.0)
    assert evaluate.encoder_fingerprint(model, processor) == fingerprint


def test_prepare_once_then_evaluate_like_the_trainer(model_and_processor, cir_data, tmp_path):
    model, processor = model_and_processor
    prepared = prepare_benchmark(model, processor, "fashioniq", cir_data["fashioniq"], "val",
                                 fashioniq_captions="searle", cache_dir=tmp_path, show_progress=False)
    assert [task.name for task in prepared] == ["dress", "shirt", "toptee"]
    assert prepared[1].text_embeds.shape == (4, 2, model.config.embed_dim)  # both caption orders
    model.train()
    result = evaluate_prepared(model, prepared, "scot")
    assert model.training  # restored after evaluating in eval mode
    model.eval()
    assert result["metrics"] == evaluate_prepared(model, prepared, "scot")["metrics"]  # no dropout: deterministic
    assert result["metrics"]["average_R@10"] == pytest.approx(
        sum(result["metrics"][f"{name}_R@10"] for name in ("dress", "shirt", "toptee")) / 3)


def test_bad_arguments_get_clear_errors(model_and_processor, cir_data, tmp_path):
    model, processor = model_and_processor
    with pytest.raises(ValueError, match="Unknown method 'best'"):
        evaluate_benchmark(model, processor, "cirr", cir_data["cirr"], "val", "best", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        evaluate_benchmark(model, processor, "cirr", tmp_path / "nowhere", "val", "image", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="--model .* not a folder"):
        load_model_and_processor(tmp_path / "no-model")


def _run(*args, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH="")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_runs_as_a_script_and_as_a_module(cir_data, backbone_folders, tmp_path):
    # `python trainers/evaluate.py` on a bare encoder folder (the baselines need no trained Combiner)
    completed = _run("trainers/evaluate.py", "--model", str(backbone_folders["clip"]), "--benchmark", "cirr",
                     "--data_dir", str(cir_data["cirr"]), "--method", "text", "--output_dir", str(tmp_path / "out"),
                     "--cache_dir", str(tmp_path / "cache"), "--no_progress", cwd=REPO_ROOT)
    assert completed.returncode == 0, completed.stderr
    assert "cirr val, method text" in completed.stdout and (tmp_path / "out" / "metrics.json").is_file()
    # `python -m trainers.evaluate check`
    completed = _run("-m", "trainers.evaluate", "check", "--benchmark", "fashioniq", "--data_dir",
                     str(cir_data["fashioniq"]), "--no_progress", cwd=REPO_ROOT)
    assert completed.returncode == 0, completed.stderr
    assert "val/dress" in completed.stdout and "missing: B00MISSING" in completed.stdout
