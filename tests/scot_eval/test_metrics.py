"""scot_eval.metrics on hand-computed rankings: ties, reference exclusion, subsets, several ground truths."""

import numpy as np
import pytest
import torch

from scot_eval.metrics import (
    circo_map_at_k,
    cirr_recall,
    cirr_recall_subset,
    recall_at_k,
    subset_topk_indices,
    target_ranks,
    topk_indices,
)

# Three queries over a gallery of five. Rankings (best first, ties in gallery order):
#   query 0: 1 (.9), 3 (.7), 0 (.5), 2 (.5), 4 (.1)
#   query 1: all tied -> 0, 1, 2, 3, 4
#   query 2: 4 (.8), 0 (.6), 2 (.6), 1 (.2), 3 (.0)
SCORES = np.array([
    [0.5, 0.9, 0.5, 0.7, 0.1],
    [0.3, 0.3, 0.3, 0.3, 0.3],
    [0.6, 0.2, 0.6, 0.0, 0.8],
])


def test_target_ranks_break_ties_by_gallery_order():
    # query 0: target 2 is tied with gallery item 0, which comes first -> rank 3 (0-based)
    # query 1: target 3 in an all-tied row -> rank 3; query 2: target 0 ties with 2 but comes first -> rank 1
    assert target_ranks(SCORES, [2, 3, 0]).tolist() == [3, 3, 1]
    assert target_ranks(SCORES, [0, 0, 2]).tolist() == [2, 0, 2]


def test_recall_at_k_hand_computed_and_in_percent():
    # ranks [3, 3, 1]
    assert recall_at_k(SCORES, [2, 3, 0], ks=(1, 2, 4, 5)) == pytest.approx(
        {"R@1": 0.0, "R@2": 100 / 3, "R@4": 100.0, "R@5": 100.0})
    assert list(recall_at_k(SCORES, [2, 3, 0])) == ["R@10", "R@50"]


def test_recall_at_k_keeps_the_reference_in_the_gallery():
    # FashionIQ protocol: an item scored above the target (here the reference, index 1) still counts.
    assert recall_at_k(SCORES[:1], [3], ks=(1, 2)) == {"R@1": 0.0, "R@2": 100.0}


def test_numpy_torch_and_dtypes_agree():
    expected = recall_at_k(SCORES, [2, 3, 0], ks=(1, 2, 3))
    for scores in (torch.tensor(SCORES), torch.tensor(SCORES, dtype=torch.float32), SCORES.astype(np.float16)):
        assert recall_at_k(scores, torch.tensor([2, 3, 0]), ks=(1, 2, 3)) == expected


def test_cirr_recall_removes_each_reference_first():
    # query 0, reference 1 removed: 3, 0, 2, 4 -> target 2 at rank 2 (was 3)
    # query 1, reference 0 removed: 1, 2, 3, 4 -> target 3 at rank 2
    # query 2, reference 4 removed: 0, 2, 1, 3 -> target 2 at rank 1
    result = cirr_recall(SCORES, reference_index=[1, 0, 4], target_index=[2, 3, 2], ks=(1, 2, 3))
    assert result == pytest.approx({"R@1": 0.0, "R@2": 100 / 3, "R@3": 100.0})
    assert recall_at_k(SCORES, [2, 3, 2], ks=(3,))["R@3"] == pytest.approx(100 / 3)  # without removal


def test_cirr_recall_does_not_modify_the_scores():
    scores = torch.tensor(SCORES)
    cirr_recall(scores, [1, 0, 4], [2, 3, 2])
    assert torch.equal(scores, torch.tensor(SCORES))


def test_cirr_recall_rejects_a_target_equal_to_its_reference():
    with pytest.raises(ValueError, match="query 1: the target is the excluded"):
        cirr_recall(SCORES, [1, 3, 4], [2, 3, 2])


def test_cirr_recall_subset_ranks_only_the_members_without_the_reference():
    # query 0: members {1 (ref), 0, 2, 4}; without the reference: 0 (.5), 2 (.5), 4 (.1) -> target 2 at rank 1
    # query 1: members {0 (ref), 3, 4}: all tied -> 3, 4 -> target 4 at rank 1
    # query 2: members {4 (ref), 3, 1}: 1 (.2), 3 (.0) -> target 1 at rank 0
    subsets = [[1, 0, 2, 4], [0, 3, 4], [4, 3, 1]]
    result = cirr_recall_subset(SCORES, [1, 0, 4], [2, 4, 1], subsets, ks=(1, 2, 3))
    assert result == pytest.approx({"Rsubset@1": 100 / 3, "Rsubset@2": 100.0, "Rsubset@3": 100.0})
    assert list(cirr_recall_subset(SCORES, [1, 0, 4], [2, 4, 1], subsets)) == ["Rsubset@1", "Rsubset@2", "Rsubset@3"]
    assert subset_topk_indices(SCORES, [1, 0, 4], subsets, k=3) == [[0, 2, 4], [3, 4], [1, 3]]


def test_cirr_recall_subset_requires_the_target_among_the_members():
    with pytest.raises(ValueError, match="query 0: target index 3 is not among its subset members"):
        cirr_recall_subset(SCORES, [1, 0, 4], [3, 4, 1], [[1, 0, 2], [0, 3, 4], [4, 3, 1]])


def test_circo_map_with_several_ground_truths():
    # query 0 ranking 1, 3, 0, 2, 4; ground truths {3, 2}: hits at ranks 2 and 4
    #   AP@1 = 0; AP@2 = (1/2) / min(2, 2) = 0.25; AP@4 = (1/2 + 2/4) / 2 = 0.5
    # query 2 ranking 4, 0, 2, 1, 3; ground truths {4, 2, 3}: hits at ranks 1, 3, 5
    #   AP@1 = 1 / min(3, 1) = 1; AP@2 = 1 / 2; AP@4 = (1 + 2/3) / 3 = 0.5556
    result = circo_map_at_k(SCORES[[0, 2]], [[3, 2], [4, 2, 3]], ks=(1, 2, 4))
    assert result["mAP@1"] == pytest.approx(50.0)
    assert result["mAP@2"] == pytest.approx((0.25 + 0.5) / 2 * 100)
    assert result["mAP@4"] == pytest.approx((0.5 + 5 / 9) / 2 * 100)


def test_circo_map_denominator_is_min_of_ground_truths_and_k():
    # five ground truths, all ranked first: AP@2 = (1 + 1) / min(5, 2) = 1, not 2/5
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    assert circo_map_at_k(scores, [[0, 1, 2, 3, 4]], ks=(2, 5, 6)) == pytest.approx(
        {"mAP@2": 100.0, "mAP@5": 100.0, "mAP@6": 100.0})
    # one ground truth ranked 2nd: AP@k = 1/2 for every k >= 2; a duplicate in the list counts once
    assert circo_map_at_k(scores, [[1, 1]], ks=(1, 2, 50)) == pytest.approx(
        {"mAP@1": 0.0, "mAP@2": 50.0, "mAP@50": 50.0})


def test_circo_map_rejects_an_empty_ground_truth_set():
    with pytest.raises(ValueError, match=r"ground_truth_indices\[1\] is empty"):
        circo_map_at_k(SCORES[:2], [[0], []])


def test_circo_map_divides_by_every_annotated_ground_truth_as_the_server_does():
    # query 0 ranks 1, 3, 0, 2, 4. Four ground truths annotated, two of them (3, 2) in the gallery: hits at ranks 2
    # and 4. The server divides by min(4, K), so the two missing ones lower the AP:
    #   AP@2 = (1/2) / 2 = 0.25; AP@4 = (1/2 + 2/4) / 4 = 0.25 (0.5 if only the two present were counted)
    # query 2: one annotated ground truth, not in the gallery: AP 0, and the query still counts
    result = circo_map_at_k(SCORES[[0, 2]], [[3, 2], []], ks=(2, 4), num_ground_truths=[4, 1])
    assert result == pytest.approx({"mAP@2": 0.25 / 2 * 100, "mAP@4": 0.25 / 2 * 100})
    assert circo_map_at_k(SCORES[[0]], [[3, 2]], ks=(4,)) == pytest.approx({"mAP@4": 50.0})  # the default: present
    # the server's own code (CIRCO src/evaluation.py), on the same top-4 predictions
    predictions, annotated = np.array([1, 3, 0, 2]), np.array([3, 2, 77, 78])  # 77, 78: not in the gallery
    labels = np.isin(predictions, annotated)
    precisions = np.cumsum(labels) * labels / np.arange(1, 5)
    assert result["mAP@4"] == pytest.approx((np.sum(precisions[:4]) / min(len(annotated), 4) + 0.0) / 2 * 100)
    with pytest.raises(ValueError, match=r"num_ground_truths\[0\] = 1, but the query has 2 ground truth"):
        circo_map_at_k(SCORES[[0]], [[3, 2]], num_ground_truths=[1])
    with pytest.raises(ValueError, match="num_ground_truths must hold one count per query"):
        circo_map_at_k(SCORES[[0]], [[3, 2]], num_ground_truths=[2, 2])


def test_a_query_without_a_gallery_reference_excludes_nothing():
    # -1: the query's reference image is not in the gallery (a test query whose reference is missing)
    assert topk_indices(SCORES, 2, exclude_index=[-1, 0, 4]).tolist() == [[1, 3], [1, 2], [0, 2]]
    assert subset_topk_indices(SCORES[:2], [-1, 0], [[1, 3, 0], [0, 3, 4]], k=3) == [[1, 3, 0], [3, 4]]
    with pytest.raises(ValueError, match=r"exclude_index\[0\] = -2 is not a gallery index"):
        topk_indices(SCORES, 2, exclude_index=[-2, 0, 4])
    with pytest.raises(ValueError, match=r"target_index\[0\] = -1 is not a gallery index"):
        recall_at_k(SCORES, [-1, 0, 4])


def test_topk_indices_ties_and_exclusion():
    assert topk_indices(SCORES, 3).tolist() == [[1, 3, 0], [0, 1, 2], [4, 0, 2]]
    assert topk_indices(SCORES, 2, exclude_index=[1, 0, 4]).tolist() == [[3, 0], [1, 2], [0, 2]]
    assert topk_indices(SCORES, 99, exclude_index=[1, 0, 4]).shape == (3, 4)  # clamped to what can be returned


@pytest.mark.parametrize("ties", [True, False])
@pytest.mark.parametrize("block_size", [1, 7, None])
def test_blocked_ranking_equals_a_stable_full_sort(block_size, ties):
    generator = torch.Generator().manual_seed(0)
    if ties:  # very many ties, at every cut-off
        scores = torch.randint(0, 6, (40, 300), generator=generator).double()
    else:  # continuous scores with a few exact ties: topk's fast path
        scores = torch.rand(40, 300, generator=generator).float()
        scores[:, 150:160] = scores[:, 10:20]
    target = torch.randint(0, 300, (40,), generator=generator)
    reference = (target + 1 + torch.randint(0, 299, (40,), generator=generator)) % 300
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    expected_rank = (order == target[:, None]).nonzero()[:, 1]
    assert torch.equal(target_ranks(scores, target, block_size=block_size), expected_rank)
    assert torch.equal(topk_indices(scores, 25, block_size=block_size), order[:, :25])
    masked = scores.clone()
    masked[torch.arange(40), reference] = float("-inf")
    masked_order = torch.sort(masked, dim=1, descending=True, stable=True).indices
    assert torch.equal(topk_indices(scores, 25, exclude_index=reference, block_size=block_size), masked_order[:, :25])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: recall_at_k(np.array([[0.1, np.nan]]), [0]), "NaN"),
        (lambda: recall_at_k(np.zeros(4), [0]), r"shape \[queries, gallery\]"),
        (lambda: recall_at_k(SCORES, [0, 1]), "one gallery index per query"),
        (lambda: recall_at_k(SCORES, [0, 1, 5]), r"target_index\[2\] = 5 is not a gallery index"),
        (lambda: recall_at_k(SCORES, [0.0, 1.0, 2.0]), "integer gallery indices"),
        (lambda: recall_at_k(SCORES, [0, 1, 2], ks=(0,)), "positive integers"),
        (lambda: cirr_recall_subset(SCORES, [1, 0, 4], [2, 4, 1], [[0, 2]]), "one list of gallery indices per query"),
        (lambda: recall_at_k([[0.1, 0.2]], [0]), "numpy array or torch tensor"),
    ],
)
def test_bad_input_gets_a_clear_error(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()
