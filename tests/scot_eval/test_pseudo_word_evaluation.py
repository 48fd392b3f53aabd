"""A pseudo-word (Map-to-Compose) model through scot_eval: the prepared task encodes the reference images' token
states once, and the benchmark metrics equal a from-scratch computation through the model's forward."""

import pytest
import torch
import torch.nn.functional as F

from modeling_scot import ScotModel, ScotProcessor
from scot_eval.benchmarks import load_benchmark
from scot_eval.evaluation import evaluate_benchmark, evaluate_prepared, prepare_benchmark
from scot_eval.ranking import query_embeddings


@pytest.fixture(params=["clip", "dual_encoder"])
def pseudo_word_model(request, backbone_folders):
    torch.manual_seed(0)
    folder = backbone_folders[request.param]
    return (ScotModel.from_backbone(folder, composer="pseudo_word", num_pseudo_tokens=2).eval(),
            ScotProcessor.from_backbone(folder))


def _independent_cirr_metrics(model, processor, data_dir) -> dict[str, float]:
    """R@1 / R@5 from scratch: every gallery image embedded, each query composed by `model(**processor(image,
    text))` from the image file and its caption, the reference removed from the ranking."""
    (task,) = load_benchmark("cirr", data_dir, "val")
    names = list(task.gallery)
    with torch.no_grad():
        gallery = model.get_image_features(**processor(images=[str(task.gallery[name]) for name in names],
                                                       return_tensors="pt"))
        ranks = []
        for query in task.queries:
            inputs = processor(images=[str(task.image_paths[query.reference])], text=[query.texts[0]],
                               return_tensors="pt")
            scores = F.normalize(model(**inputs).composed_embeds, dim=-1) @ gallery.T
            ranked = [names[index] for index in torch.sort(scores[0], descending=True, stable=True).indices.tolist()]
            ranked.remove(query.reference)
            ranks.append(ranked.index(query.target))
    return {"R@1": 100 * sum(rank < 1 for rank in ranks) / len(ranks),
            "R@5": 100 * sum(rank < 5 for rank in ranks) / len(ranks)}


def test_a_pseudo_word_model_evaluates_on_a_cirr_layout_benchmark(pseudo_word_model, cir_data, tmp_path):
    model, processor = pseudo_word_model
    result = evaluate_benchmark(model, processor, "cirr", cir_data["cirr"], "val", "scot", cache_dir=tmp_path,
                                show_progress=False)
    for name, value in _independent_cirr_metrics(model, processor, cir_data["cirr"]).items():
        assert result.metrics[name] == pytest.approx(value, abs=1e-6), name
    # the baselines run on the same prepared task
    assert "R@1" in evaluate_benchmark(model, processor, "cirr", cir_data["cirr"], "val", "sum", cache_dir=tmp_path,
                                       show_progress=False).metrics


def test_the_prepared_task_holds_each_distinct_reference_s_token_states_once(pseudo_word_model, cir_data, tmp_path):
    model, processor = pseudo_word_model
    (prepared,) = prepare_benchmark(model, processor, "cirr", cir_data["cirr"], "val", cache_dir=tmp_path,
                                    show_progress=False)
    tokens = prepared.reference_features["image_token_embeds"]
    rows = prepared.reference_feature_rows
    assert len(rows) == len(prepared.query_ids) and int(rows.max()) + 1 == len(tokens) <= len(prepared.query_ids)
    # the token states of query 0's reference are those of its image, fp16
    (task,) = load_benchmark("cirr", cir_data["cirr"], "val")
    reference = next(query.reference for query in task.queries if query.query_id == prepared.query_ids[0])
    with torch.no_grad():
        expected = model.get_composer_image_features(
            **processor(images=[str(task.image_paths[reference])], return_tensors="pt"))["image_token_embeds"][0]
    torch.testing.assert_close(tokens[rows[0]].float(), expected, atol=1e-2, rtol=1e-2)
    assert tokens.dtype == torch.float16
    assert "R@1" in evaluate_prepared(model, [prepared], "scot", processor=processor).metrics


def test_without_the_reference_token_states_the_error_says_what_to_pass(pseudo_word_model, cir_data, tmp_path):
    model, processor = pseudo_word_model
    (prepared,) = prepare_benchmark(model, processor, "cirr", cir_data["cirr"], "val", cache_dir=tmp_path,
                                    show_progress=False)
    with pytest.raises(ValueError, match="reference_features"):
        query_embeddings(model, prepared.reference_embeds, prepared.text_embeds, "scot",
                         query_texts=prepared.query_texts, processor=processor)
