"""The `evaluate`-library module loads from its local folder without the network and equals scot_eval.metrics."""

import socket

import pytest
import torch

from scot_eval import CIR_RETRIEVAL_METRIC
from scot_eval.metrics import circo_map_at_k, cirr_recall, cirr_recall_subset, recall_at_k

evaluate = pytest.importorskip("evaluate")

NUM_QUERIES, GALLERY_SIZE = 40, 60


@pytest.fixture(scope="module")
def no_network():
    def refuse(*args, **kwargs):
        raise AssertionError(f"the metric tried to reach the network: {args}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        yield


@pytest.fixture(scope="module")
def load(tmp_path_factory, no_network):
    # evaluate copies the script into its modules cache before importing it: a temporary one, not the user's
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluate.config, "HF_MODULES_CACHE", tmp_path_factory.mktemp("evaluate_modules"))
        yield lambda *config: evaluate.load(CIR_RETRIEVAL_METRIC, *config, keep_in_memory=True)


@pytest.fixture(scope="module")
def data():
    generator = torch.Generator().manual_seed(0)
    # rounded scores: ties happen, and the tie rule (gallery order) must agree too
    scores = (torch.randn(NUM_QUERIES, GALLERY_SIZE, generator=generator) * 4).round() / 4
    references = torch.randint(0, GALLERY_SIZE, (NUM_QUERIES,), generator=generator)
    targets = (references + torch.randint(1, GALLERY_SIZE, (NUM_QUERIES,), generator=generator)) % GALLERY_SIZE
    others = torch.randint(0, GALLERY_SIZE, (NUM_QUERIES, 4), generator=generator).tolist()
    subsets = [sorted({reference, target, *row})
               for reference, target, row in zip(references.tolist(), targets.tolist(), others)]
    ground_truths = [torch.randint(0, GALLERY_SIZE, (1 + index % 5,), generator=generator).tolist()
                     for index in range(NUM_QUERIES)]
    return scores.float(), references, targets, subsets, ground_truths


def test_recall_equals_recall_at_k(load, data):
    scores, _, targets, _, _ = data
    recall = load()  # the default configuration: FashionIQ's recall, the reference kept
    assert recall.compute(scores=scores.numpy(), target_indices=targets.tolist()) == recall_at_k(scores, targets)
    ks = (1, 5, 20)
    assert load("recall").compute(scores=scores, target_indices=targets, ks=ks) == recall_at_k(scores, targets, ks)


def test_cirr_equals_recall_without_the_reference_and_recall_subset(load, data):
    scores, references, targets, subsets, _ = data
    expected = cirr_recall(scores, references, targets)
    expected.update(cirr_recall_subset(scores, references, targets, subsets))
    cirr = load("cirr")
    measured = cirr.compute(scores=scores, reference_indices=references, target_indices=targets,
                            subset_indices=subsets)
    assert measured == expected and list(measured) == list(expected)
    # added in batches, as evaluate allows, the same numbers
    for start in range(0, NUM_QUERIES, 16):
        stop = start + 16
        cirr.add_batch(scores=scores[start:stop], reference_indices=references[start:stop],
                       target_indices=targets[start:stop], subset_indices=subsets[start:stop])
    assert cirr.compute() == expected


def test_circo_equals_map_at_k(load, data):
    scores, _, _, _, ground_truths = data
    measured = load("circo").compute(scores=scores, ground_truth_indices=ground_truths)
    assert measured == circo_map_at_k(scores, ground_truths)
    # the server's denominator: annotated ground truths, some not in the gallery
    annotated = [len(row) + position % 3 for position, row in enumerate(ground_truths)]
    measured = load("circo").compute(scores=scores, ground_truth_indices=ground_truths, num_ground_truths=annotated)
    assert measured == circo_map_at_k(scores, ground_truths, num_ground_truths=annotated)
    assert measured["mAP@50"] < circo_map_at_k(scores, ground_truths)["mAP@50"]


def test_bad_configuration_and_inputs_get_clear_errors(load, data):
    with pytest.raises(ValueError, match="Unknown configuration 'coco' of cir_retrieval"):
        load("coco")
    scores, _, targets, _, _ = data
    with pytest.raises(ValueError, match=r"target_index\[0\] = 999 is not a gallery index"):
        load().compute(scores=scores, target_indices=[999] + targets.tolist()[1:])
