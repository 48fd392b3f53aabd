"""The two-step evaluation the trainer calls, against an independent computation; test splits; bad arguments."""

import json

import pytest
import torch
import torch.nn.functional as F

from scot_core import load_scot_or_backbone
from scot_eval.benchmarks import load_benchmark
from scot_eval.evaluation import evaluate_benchmark, evaluate_prepared, prepare_benchmark
from scot_eval.results import EvaluationResult


@pytest.fixture(scope="module")
def model_and_processor(scot_folder):
    model, processor, trained = load_scot_or_backbone(scot_folder, device="cpu")
    assert trained
    return model, processor


def _independent_metrics(model, processor, data_dir, benchmark):
    """The same numbers from scratch: encode every image and text directly, rank with a full stable sort."""
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
    assert isinstance(result, EvaluationResult) and (result.benchmark, result.split) == (benchmark, "val")
    for name, value in _independent_metrics(model, processor, cir_data[benchmark], benchmark).items():
        assert result.metrics[name] == pytest.approx(value, abs=1e-6)


def test_circo_test_split_writes_its_submission(cir_data, model_and_processor, tmp_path):
    model, processor = model_and_processor
    result = evaluate_benchmark(model, processor, "circo", cir_data["circo"], "test", "text", cache_dir=tmp_path,
                                show_progress=False)
    assert result.metric_values == [] and list(result.submissions) == ["circo_test_submission.json"]
    result.write_outputs(tmp_path / "out")
    submission = json.loads((tmp_path / "out" / "circo_test_submission.json").read_text())
    assert list(submission) == ["0", "1", "2"]
    assert all(len(ids) == 12 and all(isinstance(image_id, int) for image_id in ids) for ids in submission.values())


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
    assert result.metrics == evaluate_prepared(model, prepared, "scot").metrics  # no dropout: deterministic
    assert result.fashioniq_captions == "searle" and list(result.counts) == ["dress", "shirt", "toptee"]
    assert result.metric("R", 10, "average") == pytest.approx(
        sum(result.metric("R", 10, name) for name in ("dress", "shirt", "toptee")) / 3)


def test_bad_arguments_get_clear_errors(model_and_processor, cir_data, tmp_path):
    model, processor = model_and_processor
    with pytest.raises(ValueError, match="Unknown method 'best'"):
        evaluate_benchmark(model, processor, "cirr", cir_data["cirr"], "val", "best", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        evaluate_benchmark(model, processor, "cirr", tmp_path / "nowhere", "val", "image", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="fashioniq_captions must be one of clip4cir, searle"):
        prepare_benchmark(model, processor, "fashioniq", cir_data["fashioniq"], fashioniq_captions="both")
    with pytest.raises(ValueError, match="needs at least one prepared task"):
        evaluate_prepared(model, [])
