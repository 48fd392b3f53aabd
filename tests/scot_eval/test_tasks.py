"""Prepared tasks: usable images and queries only (the rest counted), the phrasings kept, the embedding cache."""

import logging

import pytest
import torch

from scot_core import encoder_fingerprint, load_scot_or_backbone
from scot_eval import tasks
from scot_eval.evaluation import evaluate_benchmark, prepare_benchmark
from tests.trainers.cir_fixtures import FASHIONIQ_MISSING


@pytest.fixture(scope="module")
def model_and_processor(scot_folder):
    model, processor, _ = load_scot_or_backbone(scot_folder, device="cpu")
    return model, processor


def test_missing_images_and_their_queries_are_skipped_and_counted(model_and_processor, cir_data, tmp_path):
    model, processor = model_and_processor
    dress, shirt, _ = prepare_benchmark(model, processor, "fashioniq", cir_data["fashioniq"], "val",
                                        fashioniq_captions="searle", cache_dir=tmp_path, show_progress=False)
    assert FASHIONIQ_MISSING not in dress.gallery_names and len(dress.gallery_names) == 6
    counts = dress.counts
    assert (counts.queries, counts.queries_evaluated, counts.missing_images, counts.gallery_images) == (4, 3, 1, 7)
    assert counts.skipped_by_reason == {"target image missing, unreadable or not in the gallery": 1}
    assert shirt.counts.queries_evaluated == 4 and shirt.counts.skipped_by_reason == {}
    # both caption orders kept as texts and embedded: [queries, 2, dim]
    assert dress.query_texts[0] == ["is red and Has Short Sleeves", "Has Short Sleeves and is red"]
    assert dress.text_embeds.shape == (3, 2, model.config.embed_dim)
    assert dress.fashioniq_captions == "searle" and dress.has_targets


def test_gallery_embeddings_are_cached_as_safetensors_and_reused(model_and_processor, cir_data, tmp_path, monkeypatch):
    model, processor = model_and_processor
    first = evaluate_benchmark(model, processor, "cirr", cir_data["cirr"], "val", "image", cache_dir=tmp_path,
                               show_progress=False)
    cached = sorted(path.name for path in tmp_path.iterdir())
    assert cached and all(name.endswith(".safetensors") for name in cached)
    assert any(name.startswith("images-cirr-val-cirr-") for name in cached)

    def fail(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(tasks, "encode_images", fail)
    monkeypatch.setattr(tasks, "encode_texts", fail)
    assert evaluate_benchmark(model, processor, "cirr", cir_data["cirr"], "val", "image", cache_dir=tmp_path,
                              show_progress=False).metrics == first.metrics
    # changed encoder weights change the fingerprint: the stale cache is not used
    fingerprint = encoder_fingerprint(model, processor)
    with torch.no_grad():
        parameter = next(model.encoder.parameters())
        parameter.add_(1.0)
        try:
            assert encoder_fingerprint(model, processor) != fingerprint
            with pytest.raises(AssertionError, match="the cache should have been used"):
                evaluate_benchmark(model, processor, "cirr", cir_data["cirr"], "val", "image", cache_dir=tmp_path,
                                   show_progress=False)
        finally:
            parameter.sub_(1.0)
    assert encoder_fingerprint(model, processor) == fingerprint


def test_a_damaged_cache_file_is_recomputed(model_and_processor, cir_data, tmp_path, caplog):
    model, processor = model_and_processor
    first = evaluate_benchmark(model, processor, "circo", cir_data["circo"], "val", "text", cache_dir=tmp_path,
                               show_progress=False)
    (gallery_file,) = tmp_path.glob("images-circo-unlabeled2017-*.safetensors")
    size = gallery_file.stat().st_size
    for damage in (b"not a safetensors file", gallery_file.read_bytes()[: size // 2]):  # garbage, then truncated
        gallery_file.write_bytes(damage)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="scot_eval.tasks"):
            again = evaluate_benchmark(model, processor, "circo", cir_data["circo"], "val", "text",
                                       cache_dir=tmp_path, show_progress=False)
        assert again.metrics == first.metrics and "Ignoring unreadable embedding cache" in caplog.text
        assert gallery_file.stat().st_size == size  # rewritten


def test_the_cache_keeps_the_feature_norms_and_refreshes_a_file_written_without_them(model_and_processor, cir_data,
                                                                                     tmp_path):
    from safetensors.torch import load_file, save_file

    model, processor = model_and_processor
    first = evaluate_benchmark(model, processor, "cirr", cir_data["cirr"], "val", "raw_sum", cache_dir=tmp_path,
                               show_progress=False)
    (gallery_file,) = tmp_path.glob("images-cirr-val-cirr-*.safetensors")
    cached = load_file(gallery_file)
    torch.testing.assert_close(cached["embeddings"].norm(dim=-1), torch.ones(12))  # normalised, as before
    assert cached["norms"].shape == (12,) and not torch.allclose(cached["norms"], torch.ones(12), atol=1e-3)
    # a file from before the norms were cached: recomputed (raw_sum needs them), not a KeyError
    save_file({"embeddings": cached["embeddings"], "readable": cached["readable"]}, gallery_file)
    again = evaluate_benchmark(model, processor, "cirr", cir_data["cirr"], "val", "raw_sum", cache_dir=tmp_path,
                               show_progress=False)
    assert again.metrics == first.metrics and "norms" in load_file(gallery_file)
