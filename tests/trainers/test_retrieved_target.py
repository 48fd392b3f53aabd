"""Retrieved-image supervision (the paper's Table 3 comparison): the target is the training image nearest to the
modified caption, never the reference itself."""

import pytest
import torch
import torch.nn.functional as F

from trainers.embedding_cache import CachedTripletDataset, EmbeddingCache, retrieved_image_targets
from trainers.training_args import DataArguments


def _unit(*values):
    return F.normalize(torch.tensor(values, dtype=torch.float32), dim=-1)


# Gallery in 3-d: a red hat, a blue hat, a blue shoe, and a byte-different copy of the red hat.
RED_HAT, BLUE_HAT, BLUE_SHOE = _unit(1.0, 0.1, 0.0), _unit(0.2, 1.0, 0.1), _unit(0.0, 0.8, 1.0)
GALLERY = torch.stack([RED_HAT, BLUE_HAT, BLUE_SHOE, RED_HAT.clone()])


def test_the_nearest_image_to_the_modified_caption_is_chosen_and_the_reference_left_out():
    # "a blue hat" (from the red hat) lies nearest the blue hat; "a red hat" from the blue hat lies nearest the red
    # hat, itself and its copy; a caption nearest the reference falls back to the next image.
    modified = torch.stack([_unit(0.25, 1.0, 0.05), _unit(1.0, 0.05, 0.0), _unit(1.0, 0.12, 0.0)])
    references = torch.stack([RED_HAT, BLUE_HAT, RED_HAT])
    assert retrieved_image_targets(modified, references, GALLERY).tolist() == [1, 0, 1]


# 4-d: a red kangaroo (the reference), its mirror image and its blue tint (both lookalikes), and two unrelated
# pictures, one of them a road sign the words "facing left" match.
KANGAROO, MIRRORED, BLUE = _unit(1.0, 0.0, 0.0, 0.0), _unit(0.95, 0.3, 0.0, 0.0), _unit(0.9, 0.0, 0.45, 0.0)
OTHER, LEFT_SIGN = _unit(0.0, 0.1, 0.2, 1.0), _unit(0.0, 0.3, 0.0, 1.0)
KANGAROO_GALLERY = torch.stack([KANGAROO, MIRRORED, BLUE, OTHER, LEFT_SIGN])
FACING_LEFT, BLUE_KANGAROO = _unit(0.3, 0.2, 0.0, 1.0), _unit(0.5, 0.0, 1.0, 0.0)  # modified captions


def test_weighing_the_reference_keeps_the_lookalike_where_the_encoder_does_not_see_the_change():
    modified, references = torch.stack([FACING_LEFT, BLUE_KANGAROO]), torch.stack([KANGAROO, KANGAROO])
    # by the caption alone "facing left" lands on the road sign (the encoder does not ground orientation) ...
    assert retrieved_image_targets(modified, references, KANGAROO_GALLERY).tolist() == [4, 2]
    # ... by caption and reference together on the mirrored kangaroo; a change it sees (blue) keeps its image
    assert retrieved_image_targets(modified, references, KANGAROO_GALLERY, reference_weight=1.0).tolist() == [1, 2]
    with pytest.raises(ValueError, match="reference_weight"):
        retrieved_image_targets(modified, references, KANGAROO_GALLERY, reference_weight=-1.0)


def test_the_reference_weight_moves_the_training_target_and_never_the_probe():
    text = torch.stack([FACING_LEFT, _unit(0.0, 0.0, 0.0, 1.0), _unit(1.0, 0.0, 0.0, 0.0)])  # T_u, T_m, T
    rows = {name: torch.tensor([index]) for name, index in
            (("image", 0), ("modified_caption", 0), ("modification", 1), ("caption", 2))}
    cache = EmbeddingCache(None, KANGAROO_GALLERY, text, rows, {"skipped": {}})
    plain = CachedTripletDataset(cache, with_probes=True)[0]
    weighted = CachedTripletDataset(cache, with_probes=True, reference_weight=1.0)[0]
    assert torch.equal(plain["retrieved_image_embeds"], LEFT_SIGN)
    assert torch.equal(plain["probe_image_embeds"], LEFT_SIGN)
    assert torch.equal(weighted["retrieved_image_embeds"], MIRRORED)
    assert torch.equal(weighted["probe_image_embeds"], LEFT_SIGN)
    target = CachedTripletDataset(cache, target="retrieved_image", reference_weight=1.0)[0]["modified_caption_embeds"]
    assert torch.equal(target, MIRRORED)
    with pytest.raises(ValueError, match="retrieval_reference_weight"):
        DataArguments(retrieval_reference_weight=-0.5)


def test_a_gallery_of_one_image_is_refused():
    with pytest.raises(ValueError, match="at least two"):
        retrieved_image_targets(RED_HAT[None], RED_HAT[None], RED_HAT[None])


def test_the_cached_dataset_swaps_in_the_retrieved_image():
    text = torch.stack([_unit(0.25, 1.0, 0.05), _unit(0.0, 0.0, 1.0), _unit(1.0, 0.0, 0.0)])  # T_u, T_m, T
    rows = {name: torch.tensor([index]) for name, index in
            (("image", 0), ("modified_caption", 0), ("modification", 1), ("caption", 2))}
    cache = EmbeddingCache(None, GALLERY, text, rows, {"skipped": {}})
    by_text = CachedTripletDataset(cache)[0]
    by_image = CachedTripletDataset(cache, target="retrieved_image")[0]
    assert torch.equal(by_text["modified_caption_embeds"], text[0])
    assert torch.equal(by_image["modified_caption_embeds"], BLUE_HAT)
    assert all(torch.equal(by_text[key], by_image[key]) for key in ("image_embeds", "text_embeds", "caption_embeds"))
    with pytest.raises(ValueError, match="target must be one of"):
        CachedTripletDataset(cache, target="image")
    with pytest.raises(ValueError, match="target must be one of"):
        DataArguments(target="captions")


def test_the_gap_target_moves_the_caption_by_the_mean_image_minus_the_mean_text():
    images = torch.stack([_unit(1.0, 0.0, 0.0), _unit(0.0, 1.0, 0.0)])  # mean (0.5, 0.5, 0)
    text = torch.stack([_unit(0.0, 0.0, 1.0), _unit(0.0, 0.6, 0.8)])  # mean (0, 0.3, 0.9)
    rows = {name: torch.tensor([0]) for name in ("image", "modified_caption", "modification", "caption")}
    cache = EmbeddingCache(None, images, text, rows, {"skipped": {}})
    moved = CachedTripletDataset(cache, target="text_gap")[0]["modified_caption_embeds"]
    # (0, 0, 1) + (0.5, 0.2, -0.9) = (0.5, 0.2, 0.1), renormalised
    torch.testing.assert_close(moved, _unit(0.5, 0.2, 0.1))


def _one_row_cache():
    text = torch.stack([_unit(0.25, 1.0, 0.05), _unit(0.0, 0.0, 1.0), _unit(1.0, 0.0, 0.0)])  # T_u, T_m, T
    rows = {name: torch.tensor([index]) for name, index in
            (("image", 0), ("modified_caption", 0), ("modification", 1), ("caption", 2))}
    return EmbeddingCache(None, GALLERY, text, rows, {"skipped": {}}), text


def test_probes_carry_the_modified_caption_and_the_retrieved_image_whatever_the_target():
    cache, text = _one_row_cache()
    for target in ("text", "retrieved_image", "text_gap"):
        row = CachedTripletDataset(cache, target=target, with_probes=True)[0]
        assert torch.equal(row["probe_caption_embeds"], text[0])
        assert torch.equal(row["probe_image_embeds"], BLUE_HAT)
    assert "probe_image_embeds" not in CachedTripletDataset(cache)[0]


def test_target_mixing_weighs_the_text_and_the_retrieved_image_losses():
    from modeling_scot import ScotConfig
    from modeling_scot.modeling_scot import compute_scot_loss
    from trainers.trainer import ScotTrainer
    from trainers.training_args import ScotTrainingArguments

    torch.manual_seed(0)
    composed, targets, images, captions = (F.normalize(torch.randn(4, 3), dim=-1) for _ in range(4))
    config = ScotConfig(margin=0.2)
    trainer = ScotTrainer.__new__(ScotTrainer)  # only `args` is read by the loss mixing
    trainer.args = ScotTrainingArguments(output_dir="unused", retrieved_image_weight=0.25, report_to="none")
    mixed = trainer._mixed_loss(compute_scot_loss, config, composed, targets, captions,
                                {"retrieved_image_embeds": images})
    expected = (0.75 * compute_scot_loss(config, composed, targets, captions)
                + 0.25 * compute_scot_loss(config, composed, images, captions))
    torch.testing.assert_close(mixed, expected)
    with pytest.raises(ValueError, match="embedding cache"):
        trainer._mixed_loss(compute_scot_loss, config, composed, targets, captions, {})
    with pytest.raises(ValueError, match="retrieved_image_weight"):
        ScotTrainingArguments(output_dir="unused", retrieved_image_weight=1.5)


def test_the_image_floor_is_added_to_the_mixed_loss_on_the_reference_and_the_retrieved_image():
    from modeling_scot import ScotConfig, image_floor_loss
    from modeling_scot.modeling_scot import compute_scot_loss
    from trainers.trainer import ScotTrainer
    from trainers.training_args import ScotTrainingArguments

    torch.manual_seed(0)
    composed, targets, images, captions, references = (F.normalize(torch.randn(4, 3), dim=-1) for _ in range(5))
    config = ScotConfig(margin=0.2)
    trainer = ScotTrainer.__new__(ScotTrainer)
    trainer.args = ScotTrainingArguments(output_dir="unused", retrieved_image_weight=0.5, image_floor_weight=2.0,
                                         image_floor_temperature=0.1, report_to="none")
    loss = trainer._mixed_loss(compute_scot_loss, config, composed, targets, captions,
                               {"retrieved_image_embeds": images, "image_embeds": references})
    expected = (0.5 * compute_scot_loss(config, composed, targets, captions)
                + 0.5 * compute_scot_loss(config, composed, images, captions)
                + 2.0 * image_floor_loss(composed, references, images, temperature=0.1))
    torch.testing.assert_close(loss, expected)
    with pytest.raises(ValueError, match="retrieved_image_weight > 0"):
        ScotTrainingArguments(output_dir="unused", image_floor_weight=1.0)
    with pytest.raises(ValueError, match="image_floor_weight"):
        ScotTrainingArguments(output_dir="unused", retrieved_image_weight=0.5, image_floor_weight=-1.0)


def test_validation_probes_report_caption_image_and_their_mean():
    from transformers import EvalPrediction

    from trainers.trainer import composed_to_caption_recall

    # two queries: the first finds its caption and its image at rank 1; the second its caption only at rank 2 and
    # its image at rank 1
    captions = torch.stack([_unit(1.0, 0.0, 0.0), _unit(0.0, 1.0, 0.0)])
    images = torch.stack([_unit(0.0, 0.0, 1.0), _unit(1.0, 1.0, 0.0)])
    composed = torch.stack([_unit(1.0, 0.0, 0.9), _unit(1.0, 0.9, 0.0)])
    references = torch.stack([_unit(0.0, 1.0, 1.0), _unit(0.0, 0.1, 1.0)])
    metrics = composed_to_caption_recall(EvalPrediction(composed.numpy(), (captions.numpy(), captions.numpy(),
                                                                           images.numpy(), images.numpy(),
                                                                           references.numpy())), ks=(1,))
    assert metrics["R@1"] == metrics["caption_R@1"] == 50.0
    assert metrics["image_R@1"] == 100.0
    assert metrics["probe_R@1"] == 75.0
    assert metrics["floor_R@1"] == 100.0
    # the references alone: the first finds its image, the second ranks the first row's image higher than its own
    assert metrics["floor_reference_R@1"] == 50.0
    assert metrics["floor_gap"] == 50.0


def test_the_floor_probe_leaves_each_rows_own_reference_out_of_its_ranking():
    from transformers import EvalPrediction

    from trainers.trainer import composed_to_caption_recall

    # row 0's reference is row 1's target image: left out of row 0's ranking, it cannot beat row 0's own target
    images = torch.stack([BLUE_HAT, RED_HAT])
    references = torch.stack([RED_HAT, BLUE_SHOE])
    composed = torch.stack([_unit(1.0, 0.5, 0.0), BLUE_SHOE])
    metrics = composed_to_caption_recall(EvalPrediction(composed.numpy(), (images.numpy(),) * 4
                                                        + (references.numpy(),)), ks=(1,))
    assert metrics["floor_reference_R@1"] == 50.0  # row 0 finds the blue hat once the red one is out; row 1 fails
    assert metrics["floor_R@1"] == 50.0


def test_the_floor_probe_is_the_image_retrieved_by_caption_and_reference_with_equal_weight():
    from trainers.embedding_cache import FLOOR_PROBE_REFERENCE_WEIGHT

    modified, references = torch.stack([FACING_LEFT, BLUE_KANGAROO]), torch.stack([KANGAROO, KANGAROO])
    expected = retrieved_image_targets(modified, references, KANGAROO_GALLERY, FLOOR_PROBE_REFERENCE_WEIGHT)
    assert expected.tolist() == [1, 2]  # the mirrored lookalike for the unseen change, the tint for the seen one
