import numpy as np
import pytest
import torch
from PIL import Image

from scot_search import GallerySearcher


@pytest.fixture(scope="module")
def searcher(gallery_index):
    return GallerySearcher.from_pretrained(gallery_index)


def test_composed_query_ranks_by_the_composed_embedding(searcher, gallery_folder):
    reference = gallery_folder / "round" / "circle-red.png"
    result = searcher.query(image=str(reference), text="make it blue", k=5)

    model, processor = searcher.model, searcher.processor
    with torch.no_grad():
        inputs = processor(images=[Image.open(reference)], text=["make it blue"], return_tensors="pt")
        outputs = model(**inputs)
    scores = searcher.index.embeds @ outputs.composed_embeds[0].numpy()
    reference_position = searcher.index.ids.index("round/circle-red.png")
    expected = [i for i in np.argsort(-scores, kind="stable") if i != reference_position][:5]  # "this" is no answer
    assert result.mode == "composed"
    assert [hit.id for hit in result.hits] == [searcher.index.ids[i] for i in expected]
    np.testing.assert_allclose([hit.score for hit in result.hits], scores[expected], atol=1e-5)
    assert [hit.rank for hit in result.hits] == [1, 2, 3, 4, 5]
    assert result.text_weight == pytest.approx(float(outputs.text_weight[0, 0]), abs=1e-6)
    assert 0 < result.text_weight < 1
    assert result.image_anchor_weight is None  # β = 0: the paper's Combiner


def test_an_anchored_combiner_ranks_by_its_anchored_query_and_says_so(gallery_index, gallery_folder):
    from scot_search.cli import format_table

    searcher = GallerySearcher.from_pretrained(gallery_index)  # its own model: the config is changed below
    searcher.model.config.image_anchor_weight = 0.5
    reference = gallery_folder / "round" / "circle-red.png"
    result = searcher.query(image=str(reference), text="make it blue", k=11, exclude_reference=False)
    with torch.no_grad():
        inputs = searcher.processor(images=[Image.open(reference)], text=["make it blue"], return_tensors="pt")
        searcher.model.config.image_anchor_weight = 0.0
        plain = searcher.model(**inputs)
        searcher.model.config.image_anchor_weight = 0.5
    # every gallery image scores cos(composed, g) + 0.5 cos(image, g), up to one positive factor
    fused = searcher.index.embeds @ (plain.composed_embeds[0] + 0.5 * plain.image_embeds[0]).numpy()
    expected = [searcher.index.ids[i] for i in np.argsort(-fused, kind="stable")[:11]]
    assert [hit.id for hit in result.hits] == expected
    anchored = torch.nn.functional.normalize(plain.composed_embeds[0] + 0.5 * plain.image_embeds[0], dim=-1)
    hit_rows = [searcher.index.ids.index(hit.id) for hit in result.hits]
    np.testing.assert_allclose([hit.score for hit in result.hits], searcher.index.embeds[hit_rows] @ anchored.numpy(),
                               atol=1e-5)
    assert not np.allclose([hit.score for hit in result.hits],
                           searcher.index.embeds[hit_rows] @ plain.composed_embeds[0].numpy(), atol=1e-3)
    assert result.image_anchor_weight == 0.5
    assert "image anchor β = 0.5" in format_table(result)


def test_image_only_and_text_only_queries(searcher, gallery_folder):
    reference = gallery_folder / "angular" / "square-green.png"
    image_result = searcher.query(image=reference, k=3, exclude_reference=False)
    assert image_result.mode == "image" and image_result.text_weight is None
    assert image_result.hits[0].id == "angular/square-green.png"
    assert image_result.hits[0].score == pytest.approx(1.0, abs=1e-5)
    # by default the reference itself is left out and the others move up
    assert [hit.id for hit in searcher.query(image=reference, k=2).hits] == [hit.id for hit in image_result.hits[1:]]

    text_result = searcher.query(text="a green square", k=4)
    with torch.no_grad():
        tokens = searcher.processor(text=["a green square"], return_tensors="pt")
        text_embeds = searcher.model.get_text_features(**tokens)[0].numpy()
    expected = np.argsort(-(searcher.index.embeds @ text_embeds), kind="stable")[:4]
    assert text_result.mode == "text"
    assert [hit.id for hit in text_result.hits] == [searcher.index.ids[i] for i in expected]


def test_bad_queries_get_clear_errors(searcher, gallery_folder, tmp_path):
    with pytest.raises(ValueError, match="text is empty"):
        searcher.query(image=gallery_folder / "round" / "circle-red.png", text="   ")
    with pytest.raises(ValueError, match="reference image, a text, or both"):
        searcher.query()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        searcher.query(image=tmp_path / "missing.png", text="in blue")
    with pytest.raises(ValueError, match="Could not read the image file .*broken.png"):
        searcher.query(image=gallery_folder / "broken.png", text="in blue")
    with pytest.raises(ValueError, match="lone surrogate"):  # e.g. "\\udcff" in a JSON request to the web page
        searcher.query(image=gallery_folder / "round" / "circle-red.png", text="in \udcff blue")


def test_index_of_another_encoder_is_refused(gallery_index, scot_folder):
    from modeling_scot import ScotModel, ScotProcessor
    from scot_search import GalleryIndex

    model = ScotModel.from_pretrained(scot_folder)
    with torch.no_grad():
        next(model.encoder.parameters()).add_(0.01)  # another encoder, same shapes
    with pytest.raises(ValueError, match="different encoder"):
        GallerySearcher(model, ScotProcessor.from_pretrained(scot_folder), GalleryIndex.load(gallery_index))


def test_a_gated_model_answers_an_ungrounded_text_with_the_image_and_says_so(gallery_index, gallery_folder):
    from scot_search.cli import format_table

    searcher = GallerySearcher.from_pretrained(gallery_index)  # its own model: the config is changed below
    reference = gallery_folder / "round" / "circle-red.png"
    ungated = searcher.query(image=str(reference), text="make it blue", k=5)
    assert ungated.grounded is None  # no gate in the config
    searcher.model.config.grounding_gate_neighbours = 3
    for threshold, grounded in ((-1e6, True), (1e6, False)):  # every text passes / none does
        searcher.model.config.grounding_gate_threshold = threshold
        result = searcher.query(image=str(reference), text="make it blue", k=5)
        assert result.grounded is grounded
        if grounded:
            assert [hit.id for hit in result.hits] == [hit.id for hit in ungated.hits]
            assert result.text_weight == pytest.approx(ungated.text_weight)
        else:  # the image-only ranking, λ 0, and the table says why
            image_only = searcher.query(image=str(reference), k=5)
            assert [hit.id for hit in result.hits] == [hit.id for hit in image_only.hits]
            assert result.text_weight == 0.0
            assert "the image alone answers" in format_table(result)


def test_a_model_with_the_novelty_gate_answers_an_unfamiliar_text_with_the_image_and_says_so(gallery_index,
                                                                                             gallery_folder):
    from scot_search.cli import format_table

    searcher = GallerySearcher.from_pretrained(gallery_index)  # its own model: the gate is added below
    reference = gallery_folder / "round" / "circle-red.png"
    ungated = searcher.query(image=str(reference), text="make it blue", k=5)
    assert ungated.familiar_text is None  # no gate
    model = searcher.model
    bank = torch.nn.functional.normalize(torch.randn(4, model.config.embed_dim), dim=-1)
    for threshold, familiar in ((-1.0, True), (1.0, False)):  # every text passes / none does (cosines are < 1)
        model.set_novelty_gate(bank, neighbours=2, threshold=threshold)
        result = searcher.query(image=str(reference), text="make it blue", k=5)
        assert result.familiar_text is familiar
        if familiar:
            assert [hit.id for hit in result.hits] == [hit.id for hit in ungated.hits]
        else:
            image_only = searcher.query(image=str(reference), k=5)
            assert [hit.id for hit in result.hits] == [hit.id for hit in image_only.hits]
            assert result.text_weight == 0.0
            assert "novelty gate: the text is unlike the modifications" in format_table(result)
