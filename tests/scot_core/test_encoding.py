"""Batched encoding, eval-mode switching and model loading on the tiny random backbones."""

import pytest
import torch
from PIL import Image

from scot_core import (
    encode_images,
    encode_in_chunks,
    encode_texts,
    encoder_fingerprint,
    eval_mode,
    load_scot_or_backbone,
    text_batch_encoder,
)


def test_eval_mode_restores_the_mode_even_on_error():
    module = torch.nn.Dropout()
    module.train()
    with pytest.raises(RuntimeError):
        with eval_mode(module):
            assert not module.training
            raise RuntimeError
    assert module.training


def test_encoding_matches_the_model_and_marks_unreadable_images(backbone, tmp_path):
    _, folder = backbone
    model, processor, trained = load_scot_or_backbone(folder)
    assert not trained and not model.training
    good = tmp_path / "good.png"
    Image.new("RGB", (20, 20), (200, 30, 30)).save(good)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"no")
    embeds, readable = encode_images(model, processor, [good, broken, good], batch_size=2, show_progress=False)
    assert readable.tolist() == [True, False, True]
    assert torch.all(embeds[1] == 0)
    expected = model.get_image_features(**processor(images=[str(good)], return_tensors="pt"))
    torch.testing.assert_close(embeds[0], expected[0], atol=1e-5, rtol=1e-4)

    texts = ["make it blue", "a red fedora", "add a hat"]
    text_embeds = encode_texts(model, processor, texts, batch_size=2, show_progress=False)
    tokens = processor(text=texts, return_tensors="pt")
    torch.testing.assert_close(text_embeds, model.get_text_features(**tokens), atol=1e-5, rtol=1e-4)


def test_chunked_encoding_resumes_at_the_first_missing_chunk(backbone_folders, tmp_path):
    model, processor, _ = load_scot_or_backbone(backbone_folders["clip"])
    texts = [f"text number {index}" for index in range(7)]
    encode = text_batch_encoder(model, processor)
    calls = []

    def counting(batch):
        calls.append(len(batch))
        return encode(batch)

    names = encode_in_chunks("texts", texts, counting, tmp_path, batch_size=2, chunk_size=3, show_progress=False)
    assert names == ["texts-00000.safetensors", "texts-00001.safetensors", "texts-00002.safetensors"]
    (tmp_path / names[1]).unlink()  # as if killed while writing the second chunk
    calls.clear()
    encode_in_chunks("texts", texts, counting, tmp_path, batch_size=2, chunk_size=3, show_progress=False)
    assert calls == [2, 1]  # only the missing chunk's three texts


def test_saved_scot_model_loads_as_trained_and_fingerprint_follows_the_encoder(scot_folder):
    model, processor, trained = load_scot_or_backbone(scot_folder)
    assert trained
    again, again_processor, _ = load_scot_or_backbone(scot_folder)
    assert encoder_fingerprint(model, processor) == encoder_fingerprint(again, again_processor)
    with torch.no_grad():
        again.combiner.fusion[0].weight.add_(1.0)  # the Combiner trains: cached embeddings stay valid
    assert encoder_fingerprint(model, processor) == encoder_fingerprint(again, again_processor)
    with torch.no_grad():
        next(again.encoder.parameters()).add_(1.0)  # another encoder: they do not
    assert encoder_fingerprint(model, processor) != encoder_fingerprint(again, again_processor)
    with pytest.raises(ValueError, match="architecture"):
        load_scot_or_backbone(scot_folder, config_overrides={"combiner_hidden_dim": 8})


def test_loading_refuses_what_is_not_a_model(tmp_path):
    with pytest.raises(ValueError, match="not a model this package can load"):
        load_scot_or_backbone(tmp_path)
