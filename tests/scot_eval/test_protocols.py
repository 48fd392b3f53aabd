"""The protocol objects: each benchmark's phrasing, metrics, summary and submission files, on hand-made tasks."""

import pytest
import torch

from scot_eval.benchmarks import CIRQuery
from scot_eval.metrics import circo_map_at_k, cirr_recall, cirr_recall_subset, recall_at_k
from scot_eval.protocols import PROTOCOLS, fashioniq_query_texts, get_protocol
from scot_eval.results import MetricValue, TaskCounts
from scot_eval.tasks import PreparedTask

GALLERY = [f"img{index}" for index in range(6)]
REFERENCES, TARGETS = torch.tensor([0, 1, 2]), torch.tensor([3, 0, 5])
SUBSETS = [[0, 3, 4], [1, 0, 2], [2, 5, 1]]  # CIRR's image sets hold the reference


def _scores(num_queries: int = 3) -> torch.Tensor:
    return torch.randn(num_queries, len(GALLERY), generator=torch.Generator().manual_seed(0))


def _prepared(benchmark: str, split: str = "val", name: str | None = None, **fields) -> PreparedTask:
    num_queries = len(fields.get("reference_index", [0, 1, 2]))
    defaults = dict(
        gallery_names=GALLERY, gallery_embeds=torch.zeros(len(GALLERY), 4),
        query_ids=[str(index) for index in range(num_queries)], reference_embeds=torch.zeros(num_queries, 4),
        text_embeds=torch.zeros(num_queries, 1, 4), reference_index=REFERENCES,
        counts=TaskCounts(num_queries, num_queries, len(GALLERY), len(GALLERY), 0, 0),
    )
    return PreparedTask(benchmark=benchmark, split=split, name=name or benchmark, **{**defaults, **fields})


def test_fashioniq_caption_protocols():
    captions = ["Is Dark Red.", " has short sleeves?"]
    # CLIP4Cir: strip ".?, ", capitalize the first (which also lowercases the rest of it), join with " and "
    assert fashioniq_query_texts(captions, "clip4cir") == ["Is dark red and has short sleeves"]
    assert fashioniq_query_texts(captions, "searle") == ["Is Dark Red and has short sleeves",
                                                         "has short sleeves and Is Dark Red"]
    with pytest.raises(ValueError, match="Unknown FashionIQ caption protocol 'both'"):
        fashioniq_query_texts(captions, "both")
    query = CIRQuery("dress-0", "a", tuple(captions), target="b")
    assert PROTOCOLS["fashioniq"].query_texts(query, "searle") == fashioniq_query_texts(captions, "searle")
    # the other benchmarks have one caption, used as it is whatever the FashionIQ option says
    assert PROTOCOLS["cirr"].query_texts(CIRQuery("1", "a", ("is red",)), "searle") == ["is red"]


def test_fashioniq_metrics_are_per_category_with_their_mean():
    protocol, scores = get_protocol("fashioniq"), _scores()
    per_category = []
    for name in ("dress", "shirt"):
        values, submission = protocol.evaluate_task(_prepared("fashioniq", name=name, target_index=TARGETS), scores)
        assert submission == {}
        expected = recall_at_k(scores, TARGETS, (10, 50))  # the reference stays in the gallery
        assert values == [MetricValue("R", k, expected[f"R@{k}"], name) for k in (10, 50)]
        per_category += values
    assert protocol.summarize(per_category) == [MetricValue("R", k, expected[f"R@{k}"], "average") for k in (10, 50)]
    with pytest.raises(ValueError, match="fashioniq test has no targets to evaluate against"):
        protocol.evaluate_task(_prepared("fashioniq", "test"), scores)


def test_cirr_metrics_remove_the_reference_and_rank_subsets():
    protocol, scores = get_protocol("cirr"), _scores()
    values, _ = protocol.evaluate_task(_prepared("cirr", target_index=TARGETS, subset_indices=SUBSETS), scores)
    expected = cirr_recall(scores, REFERENCES, TARGETS, (1, 5, 10, 50))
    expected.update(cirr_recall_subset(scores, REFERENCES, TARGETS, SUBSETS, (1, 2, 3)))
    assert {value.key: value.value for value in values} == expected and list(expected)[0] == values[0].key
    assert all(value.group is None for value in values) and protocol.summarize(values) == []


def test_cirr_test_split_gives_both_submission_files():
    scores = _scores()
    prepared = _prepared("cirr", "test1", subset_indices=SUBSETS)
    values, submission = get_protocol("cirr").evaluate_task(prepared, scores)
    assert values == [] and set(submission) == {"cirr_test1_recall.json", "cirr_test1_recall_subset.json"}
    recall, subset = submission["cirr_test1_recall.json"], submission["cirr_test1_recall_subset.json"]
    assert (recall.pop("version"), recall.pop("metric"), subset.pop("version"), subset.pop("metric")) == (
        "rc2", "recall", "rc2", "recall_subset")
    for query, (reference, members) in enumerate(zip(REFERENCES.tolist(), SUBSETS)):
        order = [index for index in torch.sort(scores[query], descending=True, stable=True).indices.tolist()
                 if index != reference]
        # top 50: here the whole gallery but the reference
        assert recall[str(query)] == [GALLERY[index] for index in order]
        assert subset[str(query)] == [GALLERY[index] for index in order if index in members]


def test_circo_metrics_and_submission():
    protocol, scores = get_protocol("circo"), _scores()
    ground_truths = [[3, 4], [0], [5, 1, 2]]
    values, _ = protocol.evaluate_task(
        _prepared("circo", target_index=TARGETS, ground_truth_indices=ground_truths), scores)
    assert {value.key: value.value for value in values} == circo_map_at_k(scores, ground_truths, (5, 10, 25, 50))
    gallery = [str(100 + index) for index in range(len(GALLERY))]  # COCO ids
    _, submission = protocol.evaluate_task(_prepared("circo", "test", gallery_names=gallery), scores)
    ranked = submission["circo_test_submission.json"]
    order = torch.sort(scores[0], descending=True, stable=True).indices
    assert ranked["0"] == [int(gallery[index]) for index in order]
    assert protocol.gallery_cache_split("val") == protocol.gallery_cache_split("test")  # one gallery for both


def test_a_task_with_no_usable_query_and_an_unknown_benchmark_get_clear_errors():
    empty = _prepared("cirr", query_ids=[], counts=TaskCounts(2, 0, 6, 6, 0, 0, {"reference image missing": 2}))
    with pytest.raises(ValueError, match=r"cirr val cirr: no query could be evaluated .*Run the `check` command"):
        get_protocol("cirr").evaluate_task(empty, _scores())
    with pytest.raises(ValueError, match="Unknown benchmark 'coco'"):
        get_protocol("coco")
