"""The grounding gate (`ScotConfig.grounding_gate_*`): z-scores from the gallery's statistics, the reference's look-
alikes, and the gated composed query through the one entry point."""

import pytest
import torch
import torch.nn.functional as F

from modeling_scot import GalleryStatistics, ScotConfig, nearest_gallery_images, text_grounding
from tests.tiny_backbones import EMBED_DIM


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_zscores_from_the_statistics_equal_zscores_over_the_whole_gallery():
    gallery, texts = _unit(50, 8), _unit(3, 8, seed=1)
    statistics = GalleryStatistics.from_embeds(gallery, block_size=7)  # blocks add up to the whole covariance
    cosines = texts @ gallery.T
    direct = (cosines - cosines.mean(dim=1, keepdim=True)) / cosines.std(dim=1, unbiased=False, keepdim=True)
    picked = torch.tensor([[0, 5, 9], [1, 2, 3], [49, 48, 0]])
    zscores = statistics.text_zscores(texts, gallery[picked])
    torch.testing.assert_close(zscores, direct.gather(1, picked), atol=1e-5, rtol=0)
    torch.testing.assert_close(text_grounding(texts, gallery[picked], statistics),
                               direct.gather(1, picked).max(dim=1).values, atol=1e-5, rtol=0)


def test_nearest_gallery_images_leave_out_the_reference_and_come_nearest_first():
    gallery = _unit(20, 8)
    references = gallery[[3, 7]]  # each reference is in the gallery: its copy is never its own look-alike
    looks = nearest_gallery_images(references, gallery, 4, block_size=1)
    assert looks.shape == (2, 4, 8)
    scores = references @ gallery.T
    scores[0, 3] = scores[1, 7] = -2
    expected = gallery[scores.topk(4, dim=1).indices]
    torch.testing.assert_close(looks, expected)
    with pytest.raises(ValueError, match="4 gallery neighbours: the gallery has 4"):
        nearest_gallery_images(references, gallery[:4], 4)


def test_a_text_naming_one_look_alike_is_grounded_and_an_unrelated_one_is_not():
    # a reference whose look-alikes differ along one direction; the text that names that direction picks one out
    torch.manual_seed(0)
    base = F.normalize(torch.randn(8), dim=0)
    direction = F.normalize(torch.randn(8) - (torch.randn(8) @ base) * base, dim=0)
    others = _unit(40, 8, seed=3)
    looks = F.normalize(torch.stack([base + 0.1 * torch.randn(8) for _ in range(4)] + [base + 0.8 * direction]),
                        dim=-1)
    statistics = GalleryStatistics.from_embeds(torch.cat([others, looks]))
    grounded = text_grounding(F.normalize(direction + 0.1 * base, dim=0)[None], looks[None], statistics)
    unrelated = text_grounding(_unit(1, 8, seed=9), looks[None], statistics)
    assert grounded.item() > 1.5 and grounded.item() > unrelated.item() + 1


def test_the_change_statistic_is_the_look_alikes_zscore_minus_the_references():
    gallery, texts, references = _unit(50, 8), _unit(3, 8, seed=1), _unit(3, 8, seed=4)
    statistics = GalleryStatistics.from_embeds(gallery)
    cosines = texts @ gallery.T
    mean, spread = cosines.mean(dim=1), cosines.std(dim=1, unbiased=False)
    picked = torch.tensor([[0, 5, 9], [1, 2, 3], [49, 48, 0]])
    look_alike_z = (cosines.gather(1, picked) - mean[:, None]) / spread[:, None]
    reference_z = ((texts * references).sum(dim=1) - mean) / spread
    expected = (look_alike_z - reference_z[:, None]).max(dim=1).values
    torch.testing.assert_close(text_grounding(texts, gallery[picked], statistics, references, "change"), expected,
                               atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="needs the reference image embeddings"):
        text_grounding(texts, gallery[picked], statistics, statistic="change")
    with pytest.raises(ValueError, match="must be one of"):
        text_grounding(texts, gallery[picked], statistics, references, "largest")


def test_a_text_the_reference_already_fits_grounds_no_change():
    # the text fits the reference and every look-alike alike (the encoder does not see the change it names): the
    # look-alike statistic calls it grounded, the change statistic does not; a text naming what one look-alike has and
    # the reference lacks is grounded by both
    torch.manual_seed(0)
    base = F.normalize(torch.randn(8), dim=0)
    direction = F.normalize(torch.randn(8) - (torch.randn(8) @ base) * base, dim=0)
    looks = F.normalize(torch.stack([base + 0.05 * torch.randn(8) for _ in range(4)] + [base + 0.8 * direction]),
                        dim=-1)
    statistics = GalleryStatistics.from_embeds(torch.cat([_unit(40, 8, seed=3), looks]))
    fits_all = F.normalize(base + 0.05 * torch.randn(8), dim=0)[None]
    names_one = F.normalize(direction + 0.1 * base, dim=0)[None]
    reference = base[None]
    no_change = text_grounding(fits_all, looks[None], statistics, reference, "change").item()
    assert text_grounding(fits_all, looks[None], statistics).item() > 1.5
    assert no_change < 0.5
    assert text_grounding(names_one, looks[None], statistics, reference, "change").item() > no_change + 1


@pytest.mark.parametrize("statistic", ["lookalike", "change"])
def test_the_gate_answers_ungrounded_queries_with_the_image_and_leaves_the_others(anchored_scot_model, statistic):
    images, texts, gallery = _unit(6, EMBED_DIM), _unit(6, EMBED_DIM, seed=1), _unit(30, EMBED_DIM, seed=2)
    statistics = GalleryStatistics.from_embeds(gallery)
    looks = nearest_gallery_images(images, gallery, 3)
    grounding = text_grounding(texts, looks, statistics, images, statistic)
    anchored_scot_model.config.grounding_gate_statistic = statistic
    gate = {"gallery_neighbour_embeds": looks, "gallery_statistics": statistics}
    with torch.no_grad():
        plain, plain_weight = anchored_scot_model.get_composed_features(image_embeds=images, text_embeds=texts,
                                                                return_text_weight=True)
        off = anchored_scot_model.get_composed_features(image_embeds=images, text_embeds=texts, **gate)
        anchored_scot_model.config.grounding_gate_neighbours = 3
        # between two rows' groundings, not at one, which the model's own recomputation could round either side
        ordered = grounding.sort().values
        anchored_scot_model.config.grounding_gate_threshold = float(ordered[2] + ordered[3]) / 2
        without_gallery = anchored_scot_model.get_composed_features(image_embeds=images, text_embeds=texts)
        gated, gated_weight = anchored_scot_model.get_composed_features(image_embeds=images, text_embeds=texts,
                                                                return_text_weight=True, **gate)
    torch.testing.assert_close(off, plain)  # the gate off in the config: the gallery changes nothing
    torch.testing.assert_close(without_gallery, plain)  # no gallery (training): no query is gated
    below = grounding < anchored_scot_model.config.grounding_gate_threshold
    assert 0 < int(below.sum()) < len(below)
    torch.testing.assert_close(gated[below], images[below])  # the image-only query
    torch.testing.assert_close(gated[~below], plain[~below])
    assert (gated_weight[below] == 0).all() and torch.equal(gated_weight[~below], plain_weight[~below])


def test_the_gate_names_what_it_lacks(anchored_scot_model):
    anchored_scot_model.config.grounding_gate_neighbours = 3
    images, texts, gallery = _unit(2, EMBED_DIM), _unit(2, EMBED_DIM, seed=1), _unit(10, EMBED_DIM, seed=2)
    with pytest.raises(ValueError, match="needs both gallery_neighbour_embeds and gallery_statistics"):
        anchored_scot_model.get_composed_features(image_embeds=images, text_embeds=texts,
                                          gallery_statistics=GalleryStatistics.from_embeds(gallery))
    with pytest.raises(ValueError, match=r"\[batch, grounding_gate_neighbours, embed_dim\] = \[2, 3, 16\]"):
        anchored_scot_model.get_composed_features(image_embeds=images, text_embeds=texts,
                                          gallery_neighbour_embeds=nearest_gallery_images(images, gallery, 2),
                                          gallery_statistics=GalleryStatistics.from_embeds(gallery))


def test_the_config_checks_the_gate_and_saves_it(tmp_path):
    with pytest.raises(Exception, match="grounding_gate_neighbours must be an integer >= 0"):  # strict's wrapper
        ScotConfig(grounding_gate_neighbours=-1)
    with pytest.raises(Exception, match="grounding_gate_threshold must be finite"):
        ScotConfig(grounding_gate_threshold=float("nan"))
    with pytest.raises(Exception, match="grounding_gate_statistic must be one of"):
        ScotConfig(grounding_gate_statistic="largest")
    ScotConfig(grounding_gate_neighbours=10, grounding_gate_threshold=1.25,
               grounding_gate_statistic="change").save_pretrained(tmp_path)
    loaded = ScotConfig.from_pretrained(tmp_path)
    assert (loaded.grounding_gate_neighbours, loaded.grounding_gate_threshold) == (10, 1.25)
    assert loaded.grounding_gate_statistic == "change"
