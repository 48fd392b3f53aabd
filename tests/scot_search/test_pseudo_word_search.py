"""scot_search with a pseudo-word (Map-to-Compose) model: a saved tiny pseudo-word model, its merged LoRA text encoder
and all, indexes the gallery, and its composed queries rank by the model's own `get_composed_features`."""

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_scot import ScotModel, ScotProcessor
from scot_search import GallerySearcher

REFERENCE = "round/circle-red.png"


@pytest.fixture(scope="module")
def pseudo_word_folder(tmp_path_factory, backbone_folders):
    """A saved pseudo-word model on the tiny CLIP, as stage 2 leaves it: LoRA adapters given weight, then merged."""
    torch.manual_seed(0)
    model = ScotModel.from_backbone(backbone_folders["clip"], composer="pseudo_word", num_pseudo_tokens=2)
    model.add_composer_adapters()
    with torch.no_grad():  # LoRA's B starts at zero: give the adapters weight, as training would
        for name, parameter in model.named_parameters():
            if ".lora_" in name:
                parameter.add_(0.05 * torch.randn_like(parameter))
    assert model.merge_composer_adapters() > 0
    folder = tmp_path_factory.mktemp("pseudo_word_model") / "m2c-tiny-clip"
    model.save_pretrained(folder)
    ScotProcessor.from_backbone(backbone_folders["clip"]).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def searcher(tmp_path_factory, gallery_folder, pseudo_word_folder):
    """The gallery indexed by `scot-search index` with the pseudo-word model, and its searcher."""
    from scot_search.cli import main

    output = tmp_path_factory.mktemp("pseudo_word_index") / "gallery-index"
    assert main(["index", str(gallery_folder), "--model", str(pseudo_word_folder), "--output", str(output),
                 "--batch_size", "5"]) == 0
    return GallerySearcher.from_pretrained(output)


@pytest.fixture(scope="module")
def model_and_processor(pseudo_word_folder):
    """The same model loaded on its own, to compute what the searcher should find."""
    return ScotModel.from_pretrained(pseudo_word_folder).eval(), ScotProcessor.from_pretrained(pseudo_word_folder)


def composed_query(model, processor, reference, text: str) -> np.ndarray:
    """The model's composed query for `reference` and `text`, straight from `get_composed_features`."""
    with torch.no_grad():
        pixels = processor(images=[Image.open(reference).convert("RGB")], return_tensors="pt")["pixel_values"]
        tokens = processor(text=[text], return_tensors="pt")
        composed = model.get_composed_features(**model.get_composer_image_features(pixel_values=pixels),
                                               input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    return composed[0].numpy()


def test_the_index_holds_the_pseudo_word_model_s_image_embeddings(searcher, model_and_processor, gallery_folder):
    model, processor = model_and_processor
    assert searcher.model.config.composer == "pseudo_word" and len(searcher.index) == 12
    images = [Image.open(gallery_folder / item_id).convert("RGB") for item_id in searcher.index.ids]
    with torch.no_grad():
        expected = model.get_image_features(processor(images=images, return_tensors="pt")["pixel_values"]).numpy()
    np.testing.assert_allclose(searcher.index.embeds, expected, atol=1e-5)


def test_composed_query_ranks_the_gallery_by_get_composed_features(searcher, model_and_processor, gallery_folder):
    query = composed_query(*model_and_processor, gallery_folder / REFERENCE, "make it blue")
    scores = searcher.index.embeds @ query
    full_sort = np.argsort(-scores, kind="stable")

    result = searcher.query(image=gallery_folder / REFERENCE, text="make it blue", k=len(searcher.index),
                            exclude_reference=False)
    assert result.mode == "composed" and result.text_weight is None  # no Combiner, no λ
    assert [hit.id for hit in result.hits] == [searcher.index.ids[i] for i in full_sort]
    np.testing.assert_allclose([hit.score for hit in result.hits], scores[full_sort], atol=1e-5)

    # by default the reference is no answer: the same order without it
    reference_position = searcher.index.ids.index(REFERENCE)
    top_5 = [searcher.index.ids[i] for i in full_sort if i != reference_position][:5]
    assert [hit.id for hit in searcher.query(image=gallery_folder / REFERENCE, text="make it blue", k=5).hits] == top_5


def test_image_only_and_text_only_queries(searcher, model_and_processor, gallery_folder):
    model, processor = model_and_processor
    image_result = searcher.query(image=gallery_folder / "angular" / "square-green.png", k=3, exclude_reference=False)
    assert image_result.mode == "image" and image_result.text_weight is None
    assert image_result.hits[0].id == "angular/square-green.png"
    assert image_result.hits[0].score == pytest.approx(1.0, abs=1e-5)

    text_result = searcher.query(text="a green square", k=4)
    with torch.no_grad():  # the merged text encoder embeds the text, without any pseudo word
        text_embeds = model.get_text_features(**processor(text=["a green square"], return_tensors="pt"))[0].numpy()
    expected = np.argsort(-(searcher.index.embeds @ text_embeds), kind="stable")[:4]
    assert text_result.mode == "text" and text_result.text_weight is None
    assert [hit.id for hit in text_result.hits] == [searcher.index.ids[i] for i in expected]


def test_changing_the_text_changes_the_composed_query(searcher, model_and_processor, gallery_folder):
    reference = gallery_folder / REFERENCE
    blue, green = (composed_query(*model_and_processor, reference, text) for text in ("make it blue", "make it green"))
    assert not np.allclose(blue, green, atol=1e-4)

    def scores(text: str) -> dict[str, float]:
        hits = searcher.query(image=reference, text=text, k=len(searcher.index), exclude_reference=False).hits
        return {hit.id: hit.score for hit in hits}

    blue_scores, green_scores = scores("make it blue"), scores("make it green")
    ids = sorted(blue_scores)
    assert np.abs(np.subtract([blue_scores[i] for i in ids], [green_scores[i] for i in ids])).max() > 1e-4
    np.testing.assert_allclose([green_scores[i] for i in ids],
                               searcher.index.embeds[[searcher.index.ids.index(i) for i in ids]] @ green, atol=1e-5)


def test_the_web_page_searches_without_a_text_weight(searcher, gallery_folder):
    """The page shows the Combiner's λ only when the composer has one: a pseudo-word search shows the top-K alone."""
    from scot_search.app import build_app, launch_app
    from tests.scot_search.test_app import api_search, api_upload, free_port

    app = build_app(searcher)
    port = free_port()
    launch_app(app, port=port, prevent_thread_lock=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        event, (gallery, table, summary) = api_search(url, api_upload(url, gallery_folder / REFERENCE), k=5)
    finally:
        app.close()
    expected = searcher.query(image=gallery_folder / REFERENCE, text="in blue", k=5)
    assert event == "complete" and summary == "top 5 of 12 gallery images"
    assert "λ" not in summary and len(gallery) == 5
    assert [row[1] for row in table["data"]] == [hit.id for hit in expected.hits]
