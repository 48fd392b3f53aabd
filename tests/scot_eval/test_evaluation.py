"""The two-step evaluation the trainer calls, against an independent computation; test splits; bad arguments."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scot_core import load_scot_or_backbone
from scot_eval.benchmarks import load_benchmark
from scot_eval.evaluation import evaluate_benchmark, evaluate_prepared, prepare_benchmark
from scot_eval.ranking import query_embeddings
from scot_eval.results import EvaluationResult
from tests.trainers.cir_fixtures import build_circo, build_cirr


@pytest.fixture(scope="module")
def model_and_processor(scot_folder):
    model, processor, trained = load_scot_or_backbone(scot_folder, device="cpu")
    assert trained
    return model, processor


def _independent_rankings(model, processor, task, method: str) -> dict[str, list[str]]:
    """Each query's ranking of the gallery images on disk, from scratch: every image and text encoded directly, the
    query `sum` = normalize(normalize(image) + normalize(text)) or `raw_sum` = normalize(image + text) of the
    unnormalised features (CLIP4Cir's element_wise_sum), ranked by cosine with a full stable sort."""
    names = [name for name in task.gallery if name not in set(task.missing_images)]
    normalize = method == "sum"
    with torch.no_grad():
        features = model.get_image_features(**processor(images=[str(task.gallery[name]) for name in names],
                                                        return_tensors="pt"), normalize=normalize)
        texts = model.get_text_features(**processor(text=[query.texts[0] for query in task.queries],
                                                    return_tensors="pt"), normalize=normalize)
    images = dict(zip(names, features))
    gallery = F.normalize(torch.stack([images[name] for name in names]), dim=-1)
    rankings = {}
    for query, text in zip(task.queries, texts):
        order = torch.sort(F.normalize(images[query.reference] + text, dim=-1) @ gallery.T, descending=True,
                           stable=True).indices.tolist()
        rankings[query.query_id] = [names[index] for index in order]
    return rankings


def _independent_metrics(model, processor, data_dir, benchmark, method):
    (task,) = load_benchmark(benchmark, data_dir, "val")
    rankings = _independent_rankings(model, processor, task, method)
    ranks, average_precisions = [], []
    for query in task.queries:
        ranked = rankings[query.query_id]
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


@pytest.mark.parametrize("method", ["sum", "raw_sum"])
@pytest.mark.parametrize("benchmark", ["cirr", "circo"])
def test_metrics_match_an_independent_end_to_end_computation(benchmark, method, model_and_processor, cir_data,
                                                             tmp_path):
    model, processor = model_and_processor
    result = evaluate_benchmark(model, processor, benchmark, cir_data[benchmark], "val", method,
                                cache_dir=tmp_path, show_progress=False)
    assert isinstance(result, EvaluationResult) and (result.benchmark, result.split) == (benchmark, "val")
    for name, value in _independent_metrics(model, processor, cir_data[benchmark], benchmark, method).items():
        assert result.metrics[name] == pytest.approx(value, abs=1e-6)


def test_raw_sum_is_clip4cirs_element_wise_sum_and_sum_is_not(model_and_processor, cir_data, tmp_path):
    model, processor = model_and_processor
    (prepared,) = prepare_benchmark(model, processor, "cirr", cir_data["cirr"], "val", cache_dir=tmp_path,
                                    show_progress=False)
    (task,) = load_benchmark("cirr", cir_data["cirr"], "val")
    references = [str(task.gallery[query.reference]) for query in task.queries]
    with torch.no_grad():
        image_inputs = processor(images=references, return_tensors="pt")
        text_inputs = processor(text=[query.texts[0] for query in task.queries], return_tensors="pt")
        image_features = model.get_image_features(**image_inputs, normalize=False)
        text_features = model.get_text_features(**text_inputs, normalize=False)
    queries = {method: query_embeddings(model, prepared.reference_embeds, prepared.text_embeds, method,
                                        reference_norms=prepared.reference_norms, text_norms=prepared.text_norms)
               for method in ("sum", "raw_sum")}
    torch.testing.assert_close(queries["raw_sum"], F.normalize(image_features + text_features, dim=-1),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(queries["sum"], F.normalize(F.normalize(image_features, dim=-1)
                                                           + F.normalize(text_features, dim=-1), dim=-1),
                               atol=1e-5, rtol=0)
    assert not torch.allclose(queries["sum"], queries["raw_sum"], atol=1e-3)  # the two baselines differ here


def _circo_server_map(rankings: dict[str, list[str]], annotations: list[dict], k: int) -> float:
    """CIRCO's server (`compute_metrics` of its src/evaluation.py) on top-50 predictions: AP@k divides by
    min(len(gt_img_ids), k), all annotated ground truths."""
    average_precisions = []
    for entry in annotations:
        predictions = np.array([int(name) for name in rankings[str(entry["id"])][:50]])
        labels = np.isin(predictions, entry["gt_img_ids"])
        precisions = np.cumsum(labels) * labels / np.arange(1, len(labels) + 1)
        average_precisions.append(np.sum(precisions[:k]) / min(len(entry["gt_img_ids"]), k))
    return 100 * float(np.mean(average_precisions))


def test_circo_map_counts_ground_truths_missing_from_the_gallery_like_the_server(model_and_processor, tmp_path):
    model, processor = model_and_processor
    data_dir = build_circo(tmp_path)
    for image_id in (57541, 355099):  # one of query 0's five ground truths; query 2's only one (and its target)
        (data_dir / "COCO2017_unlabeled" / "unlabeled2017" / f"{image_id:012d}.jpg").unlink()
    result = evaluate_benchmark(model, processor, "circo", data_dir, "val", "sum", cache_dir=tmp_path / "cache",
                                show_progress=False)
    counts = result.counts["circo"]
    assert (counts.queries_evaluated, counts.ground_truths_not_in_gallery, counts.missing_images) == (3, 2, 2)
    assert "2 ground truths not in the gallery (still counted in the mAP denominator" in result.format_counts()
    (task,) = load_benchmark("circo", data_dir, "val")
    rankings = _independent_rankings(model, processor, task, "sum")
    annotations = json.loads((data_dir / "annotations" / "val.json").read_text())
    for k in (5, 10, 25, 50):
        assert result.metric("mAP", k) == pytest.approx(_circo_server_map(rankings, annotations, k), abs=1e-6)


def _remove_image(data_dir, benchmark: str, name: str) -> None:
    if benchmark == "circo":
        (data_dir / "COCO2017_unlabeled" / "unlabeled2017" / f"{int(name):012d}.jpg").unlink()
    else:
        (data_dir / "test1" / f"{name}.png").unlink()


@pytest.mark.parametrize("benchmark", ["circo", "cirr"])
def test_a_test_query_whose_reference_image_is_missing_is_still_submitted(benchmark, model_and_processor, tmp_path):
    model, processor = model_and_processor
    data_dir = (build_circo if benchmark == "circo" else build_cirr)(tmp_path)
    (task,) = load_benchmark(benchmark, data_dir, "test")
    query = task.queries[1]
    _remove_image(data_dir, benchmark, query.reference)
    submitted = {method: evaluate_benchmark(model, processor, benchmark, data_dir, "test", method,
                                            cache_dir=tmp_path / "cache", show_progress=False)
                 for method in ("scot", "text")}
    result = submitted["scot"]
    assert result.counts[task.name].text_only_queries == [query.query_id]
    assert f"1 queries ranked by their text alone (reference image missing or unreadable): {query.query_id}" in \
        result.format_counts()
    for file_name, submission in result.submissions.items():
        # every query id, as the servers require; the one without its image ranked by its text alone
        assert set(submission) - {"version", "metric"} == {entry.query_id for entry in task.queries}
        assert submission[query.query_id] == submitted["text"].submissions[file_name][query.query_id]
        assert all(len(ranked) >= 3 for key, ranked in submission.items() if key not in ("version", "metric"))
    if benchmark == "circo":  # on val, where metrics measure the method, such a query is skipped and counted
        _remove_image(data_dir, "circo", "85932")  # val query 0's reference
        counts = evaluate_benchmark(model, processor, "circo", data_dir, "val", "scot", cache_dir=tmp_path / "cache",
                                    show_progress=False).counts["circo"]
        assert counts.skipped_by_reason == {"reference image missing or unreadable": 1}
        assert counts.text_only_queries == [] and counts.queries_evaluated == 2


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
