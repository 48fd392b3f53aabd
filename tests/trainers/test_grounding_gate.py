"""`trainers.grounding_gate`: θ of the grounding gate from a permutation null on validation rows."""

import pytest
import torch
import torch.nn.functional as F

from modeling_scot import GalleryStatistics, nearest_gallery_images, text_grounding
from trainers.grounding_gate import (
    calibrate_grounding_threshold,
    grounding_auc,
    null_groundings,
    select_alpha,
    select_statistic,
)


def _rows(count=40, dim=12, seed=0):
    """References, a gallery holding a look-alike of each moved along its own direction, and texts naming the move."""
    generator = torch.Generator().manual_seed(seed)
    references = F.normalize(torch.randn(count, dim, generator=generator), dim=-1)
    directions = F.normalize(torch.randn(count, dim, generator=generator), dim=-1)
    looks = F.normalize(references + 0.6 * directions, dim=-1)
    gallery = torch.cat([references, looks, F.normalize(torch.randn(200, dim, generator=generator), dim=-1)])
    return references, directions, gallery


def test_the_null_is_each_rows_look_alikes_scored_with_permuted_texts():
    references, texts, gallery = _rows()
    own, null = null_groundings(references, texts, gallery, neighbours=3, permutations=4, seed=1)
    statistics = GalleryStatistics.from_embeds(gallery)
    looks = nearest_gallery_images(references, gallery, 3)
    torch.testing.assert_close(own, text_grounding(texts, looks, statistics))
    generator = torch.Generator().manual_seed(1)
    first = text_grounding(texts[torch.randperm(len(texts), generator=generator)], looks, statistics)
    assert null.shape == (4 * len(texts),)
    torch.testing.assert_close(null[:len(texts)], first)


def test_the_threshold_is_the_nulls_quantile_and_texts_that_name_the_change_pass_it():
    references, texts, gallery = _rows()
    calibration = calibrate_grounding_threshold(references, texts, gallery, neighbours=3, alpha=0.5, seed=1)
    own, null = null_groundings(references, texts, gallery, neighbours=3, seed=1)
    assert calibration["threshold"] == pytest.approx(float(null.median()), abs=0.05)
    assert calibration["gated_fraction"] == pytest.approx(float((own < calibration["threshold"]).float().mean()))
    assert calibration["gated_fraction"] < 0.2  # these texts name what tells the look-alike apart
    stricter = calibrate_grounding_threshold(references, texts, gallery, neighbours=3, alpha=0.1, seed=1)
    assert stricter["threshold"] > calibration["threshold"]
    assert stricter["gated_fraction"] >= calibration["gated_fraction"]


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.5])
def test_alpha_outside_the_open_unit_interval_is_refused(alpha):
    references, texts, gallery = _rows(count=4)
    with pytest.raises(ValueError, match=r"grounding_gate_alpha must be in \(0, 1\)"):
        calibrate_grounding_threshold(references, texts, gallery, neighbours=2, alpha=alpha)


def test_the_rule_picks_the_strictest_alpha_that_keeps_the_ungated_recall():
    assert select_alpha(60.0, {0.9: 60.0, 0.5: 61.0, 0.25: 60.0, 0.1: 59.9}) == 0.25  # ties count as kept
    assert select_alpha(60.0, {0.9: 61.0, 0.5: 59.0}) == 0.9
    assert select_alpha(60.0, {0.9: 59.9, 0.5: 58.0}) is None  # every α loses: no gate


def test_the_null_uses_the_statistic_it_is_given():
    references, texts, gallery = _rows()
    own, null = null_groundings(references, texts, gallery, neighbours=3, permutations=2, seed=1, statistic="change")
    statistics = GalleryStatistics.from_embeds(gallery)
    looks = nearest_gallery_images(references, gallery, 3)
    torch.testing.assert_close(own, text_grounding(texts, looks, statistics, references, "change"))
    generator = torch.Generator().manual_seed(1)
    first = text_grounding(texts[torch.randperm(len(texts), generator=generator)], looks, statistics, references,
                           "change")
    torch.testing.assert_close(null[:len(texts)], first)


def test_the_auc_counts_own_above_null_and_half_the_ties_by_hand():
    # own 1 beats null {0}, ties {1}; own 2 beats {0, 1}, ties {2}; own 3 beats all four: (1.5 + 2.5 + 4) / (3 * 4)
    assert grounding_auc(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 1.0, 2.0, 2.5])) == pytest.approx(8 / 12)
    assert grounding_auc(torch.tensor([5.0, 6.0]), torch.tensor([0.0, 1.0])) == 1.0
    assert grounding_auc(torch.tensor([1.0]), torch.tensor([1.0, 1.0])) == 0.5


def test_texts_that_name_the_change_separate_from_the_null_and_the_rule_takes_the_higher_auc():
    references, texts, gallery = _rows()
    calibration = calibrate_grounding_threshold(references, texts, gallery, neighbours=3, alpha=0.5, seed=1,
                                                statistic="change")
    assert calibration["auc"] > 0.9  # these texts name what tells the look-alike from the reference
    assert select_statistic({"lookalike": 0.70, "change": 0.74}) == "change"
    assert select_statistic({"lookalike": 0.74, "change": 0.70}) == "lookalike"
    assert select_statistic({"lookalike": 0.70, "change": 0.70}) == "lookalike"  # a tie keeps the first listed
