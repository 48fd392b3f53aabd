"""Query composition per method, through the model's one composed-query entry point."""

import pytest
import torch
import torch.nn.functional as F

from scot_core import load_scot_or_backbone
from scot_eval.ranking import query_embeddings, similarity_scores


@pytest.fixture(scope="module")
def model_and_processor(scot_folder):
    model, processor, trained = load_scot_or_backbone(scot_folder, device="cpu")
    assert trained
    return model, processor


def _inputs(model, phrasings: int = 2):
    generator = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(5, model.config.embed_dim, generator=generator), dim=-1)
    texts = F.normalize(torch.randn(5, phrasings, model.config.embed_dim, generator=generator), dim=-1)
    return images, texts


def test_query_embeddings_per_method(model_and_processor):
    model, _ = model_and_processor
    images, texts = _inputs(model)
    first = texts[:, 0]
    assert torch.allclose(query_embeddings(model, images, first, "image"), images)
    assert torch.allclose(query_embeddings(model, images, first, "text"), first)
    assert torch.allclose(query_embeddings(model, images, first, "sum"), F.normalize(images + first, dim=-1))
    with torch.no_grad():
        composed = [model.get_composed_features(image_embeds=images, text_embeds=texts[:, order]) for order in (0, 1)]
    assert torch.allclose(query_embeddings(model, images, first, "scot"), composed[0], atol=1e-6)
    # two phrasings (SEARLE's both orders): the mean of the two normalised queries, normalised
    assert torch.allclose(query_embeddings(model, images, texts, "scot"),
                          F.normalize(composed[0] + composed[1], dim=-1), atol=1e-6)
    with pytest.raises(ValueError, match="Unknown method 'concat'"):
        query_embeddings(model, images, first, "concat")


def test_scot_queries_come_from_get_composed_features_not_compose(model_and_processor, monkeypatch):
    model, _ = model_and_processor
    images, texts = _inputs(model, phrasings=1)
    expected = query_embeddings(model, images, texts, "scot")

    def compose(*args, **kwargs):
        raise AssertionError("callers must ask get_composed_features for composed queries")

    monkeypatch.setattr(model, "compose", compose)
    assert torch.equal(query_embeddings(model, images, texts, "scot"), expected)


def test_a_composer_that_reads_tokens_gets_the_query_texts(model_and_processor, monkeypatch):
    model, processor = model_and_processor
    query_texts = [["is red"], ["has long sleeves and a collar"], ["darker"], ["with a cat print"], ["no logo"]]
    images, _ = _inputs(model)
    with torch.no_grad():
        text_embeds = model.get_text_features(**processor(text=[texts[0] for texts in query_texts],
                                                          return_tensors="pt"))[:, None]
    from_embeddings = query_embeddings(model, images, text_embeds, "scot")
    # a composer that needs the modification's tokens (as a pseudo-word composer will) refuses cached embeddings
    monkeypatch.setattr(model, "composer_accepts_text_embeds", False)
    with pytest.raises(ValueError, match="reads the modification's tokens: pass the query texts and the processor"):
        query_embeddings(model, images, text_embeds, "scot")
    from_tokens = query_embeddings(model, images, text_embeds, "scot", query_texts=query_texts, processor=processor)
    assert torch.allclose(from_tokens, from_embeddings, atol=1e-5)


def test_similarity_scores_are_float32_cosines():
    queries = F.normalize(torch.randn(3, 8, dtype=torch.float64), dim=-1)
    gallery = F.normalize(torch.randn(4, 8), dim=-1)
    scores = similarity_scores(queries, gallery)
    assert scores.dtype == torch.float32 and scores.shape == (3, 4)
    assert torch.allclose(scores, F.cosine_similarity(queries.float()[:, None], gallery[None], dim=-1), atol=1e-6)


def test_raw_sum_adds_the_projected_features_and_sum_the_normalised_ones(model_and_processor):
    model, _ = model_and_processor
    images, texts = _inputs(model)
    image_norms = torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0])
    text_norms = torch.tensor([[3.0, 1.0], [1.0, 1.0], [0.25, 2.0], [1.0, 0.5], [10.0, 1.0]])
    raw = query_embeddings(model, images, texts, "raw_sum", reference_norms=image_norms, text_norms=text_norms)
    # CLIP4Cir's element_wise_sum, per phrasing, on the features before normalisation: normalize(f(I) + f(T))
    per_phrasing = [F.normalize(images * image_norms[:, None] + texts[:, order] * text_norms[:, order, None], dim=-1)
                    for order in (0, 1)]
    torch.testing.assert_close(raw, F.normalize(per_phrasing[0] + per_phrasing[1], dim=-1))
    # sum weighs the two normalised embeddings equally, whatever the features' norms
    torch.testing.assert_close(query_embeddings(model, images, texts[:, :1], "sum"),
                               F.normalize(images + texts[:, 0], dim=-1))
    assert not torch.allclose(raw, query_embeddings(model, images, texts, "sum"), atol=1e-3)
    with pytest.raises(ValueError, match="'raw_sum' adds the projected features before normalisation"):
        query_embeddings(model, images, texts, "raw_sum")


@pytest.mark.parametrize("method", ["scot", "image", "sum", "raw_sum"])
def test_a_query_without_its_reference_image_is_ranked_by_its_text(model_and_processor, method):
    model, _ = model_and_processor
    images, texts = _inputs(model, phrasings=1)
    reference_norms, text_norms = torch.linspace(0.5, 2.0, 5), torch.full((5, 1), 1.5)
    available = torch.tensor([True, False, True, True, False])
    images[~available], reference_norms[~available] = 0.0, 0.0  # what prepare_task holds for a missing image
    queries = query_embeddings(model, images, texts, method, reference_available=available,
                               reference_norms=reference_norms, text_norms=text_norms)
    torch.testing.assert_close(queries[~available], texts[~available, 0])
    expected = query_embeddings(model, images[available], texts[available], method,
                                reference_norms=reference_norms[available], text_norms=text_norms[available])
    torch.testing.assert_close(queries[available], expected, atol=1e-6, rtol=0)


def test_the_grounding_gate_reads_the_gallery_it_ranks(model_and_processor, monkeypatch, caplog):
    from modeling_scot import GalleryStatistics, nearest_gallery_images, text_grounding

    model, _ = model_and_processor
    images, texts = _inputs(model, phrasings=1)
    gallery = F.normalize(torch.randn(20, model.config.embed_dim, generator=torch.Generator().manual_seed(5)), dim=-1)
    ungated = query_embeddings(model, images, texts, "scot", gallery_embeds=gallery)  # the gate off: unchanged
    assert torch.allclose(ungated, query_embeddings(model, images, texts, "scot"), atol=1e-6)
    grounding = text_grounding(texts[:, 0], nearest_gallery_images(images, gallery, 3),
                               GalleryStatistics.from_embeds(gallery))
    monkeypatch.setattr(model.config, "grounding_gate_neighbours", 3)
    # a threshold between two rows' groundings, not at one: the model recomputes them, and a value equal to the
    # threshold could fall either side by a rounding (it did on an AMX Xeon)
    ordered = grounding.sort().values
    monkeypatch.setattr(model.config, "grounding_gate_threshold", float(ordered[1] + ordered[2]) / 2)
    gated = query_embeddings(model, images, texts, "scot", gallery_embeds=gallery)
    below = grounding < model.config.grounding_gate_threshold
    assert 0 < int(below.sum()) < len(below)
    assert torch.allclose(gated[below], images[below], atol=1e-6)  # answered by the image alone
    assert torch.allclose(gated[~below], ungated[~below], atol=1e-6)
    assert torch.allclose(query_embeddings(model, images, texts, "scot"), ungated, atol=1e-6)  # no gallery: no gate
    # a gallery too small to hold the reference's look-alikes gates nothing, and says so
    assert torch.allclose(query_embeddings(model, images, texts, "scot", gallery_embeds=gallery[:3]), ungated,
                          atol=1e-6)
    assert "no query is gated" in caplog.text
