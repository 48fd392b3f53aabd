"""ScotModel on tiny random CLIP, BLIP-2 retrieval and VisionTextDualEncoder encoders of the real transformers
classes."""

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import (
    AutoModel,
    AutoProcessor,
    BertConfig,
    BertModel,
    Blip2Config,
    Blip2ForImageTextRetrieval,
    Blip2Model,
    CLIPModel,
    VisionTextDualEncoderModel,
)

from modeling_scot import ScotConfig, ScotModel, ScotProcessor
from tests.tiny_backbones import EMBED_DIM, save_tiny_blip2

ATOL = 1e-6
TEXTS = ["make it blue", "a red dog on the beach", "add a hat"]


def _images():
    return [
        Image.new("RGB", (40, 48), (200, 30, 30)),
        Image.new("L", (32, 32), 90),
        Image.new("RGBA", (36, 36), (20, 160, 40, 128)),
    ]


@pytest.fixture
def scot(backbone):
    name, folder = backbone
    torch.manual_seed(0)
    return name, folder, ScotModel.from_backbone(folder), ScotProcessor.from_backbone(folder)


def _inputs(processor):
    return processor(images=_images(), text=TEXTS, return_tensors="pt")


def _unit_rows(tensor, dim=EMBED_DIM):
    assert isinstance(tensor, torch.Tensor)
    assert tensor.shape == (len(TEXTS), dim)
    torch.testing.assert_close(tensor.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5, rtol=0)


def test_embeddings_have_contract_shape_and_unit_norm(scot):
    _, _, model, processor = scot
    inputs = _inputs(processor)
    assert set(inputs) == {"pixel_values", "input_ids", "attention_mask"}
    with torch.no_grad():
        image_embeds = model.get_image_features(pixel_values=inputs["pixel_values"])
        text_embeds = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        composed = model.compose(image_embeds, text_embeds)
        output = model(**inputs)
    assert model.config.embed_dim == EMBED_DIM
    for tensor in (
        image_embeds, text_embeds, composed, output.composed_embeds, output.image_embeds, output.text_embeds
    ):
        _unit_rows(tensor)
    torch.testing.assert_close(output.composed_embeds, composed, atol=ATOL, rtol=0)
    assert output.text_weight.shape == (len(TEXTS), 1)
    assert ((output.text_weight > 0) & (output.text_weight < 1)).all()
    assert output.loss is None


def _raw_embeddings(name, folder, inputs):
    """What the encoder's own transformers class gives, normalised: the reference our wrapper must reproduce."""
    with torch.no_grad():
        if name == "blip2":
            raw = Blip2ForImageTextRetrieval.from_pretrained(folder).eval()
            output = raw(**inputs, use_image_text_matching_head=False)
            return F.normalize(output.image_embeds.mean(dim=1), dim=-1), output.text_embeds
        raw_class = CLIPModel if name == "clip" else VisionTextDualEncoderModel
        raw = raw_class.from_pretrained(folder).eval()
        image = raw.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        text = raw.get_text_features(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        ).pooler_output
        return F.normalize(image, dim=-1), F.normalize(text, dim=-1)


def test_features_equal_the_encoders_own(scot):
    name, folder, model, processor = scot
    inputs = _inputs(processor)
    raw_image, raw_text = _raw_embeddings(name, folder, inputs)
    with torch.no_grad():
        image = model.get_image_features(pixel_values=inputs["pixel_values"])
        text = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    torch.testing.assert_close(image, raw_image, atol=ATOL, rtol=0)
    torch.testing.assert_close(text, raw_text, atol=ATOL, rtol=0)


def test_unnormalised_features_are_the_encoders_projections(scot):
    # `normalize=False` (what CLIP4Cir's element_wise_sum baseline adds): the projected features before the last
    # normalisation; the default stays the contract's L2-normalised embeddings
    name, folder, model, processor = scot
    inputs = _inputs(processor)
    with torch.no_grad():
        image = model.get_image_features(pixel_values=inputs["pixel_values"], normalize=False)
        text = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                       normalize=False)
        if name == "blip2":  # the mean of the per-query ITC embeddings (each normalised, as BLIP-2 does)
            output = Blip2ForImageTextRetrieval.from_pretrained(folder).eval()(
                **inputs, use_image_text_matching_head=False)
            expected_image, expected_text = output.image_embeds.mean(dim=1), output.text_embeds
        else:
            encoder = (CLIPModel if name == "clip" else VisionTextDualEncoderModel).from_pretrained(folder).eval()
            expected_image = encoder.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
            expected_text = encoder.get_text_features(input_ids=inputs["input_ids"],
                                                      attention_mask=inputs["attention_mask"]).pooler_output
        normalised = model.get_image_features(pixel_values=inputs["pixel_values"])
    torch.testing.assert_close(image, expected_image, atol=ATOL, rtol=0)
    # BLIP-2's retrieval output holds only the normalised text embedding
    torch.testing.assert_close(F.normalize(text, dim=-1) if name == "blip2" else text, expected_text, atol=ATOL,
                               rtol=0)
    torch.testing.assert_close(F.normalize(image, dim=-1), normalised, atol=ATOL, rtol=0)
    assert not torch.allclose(text.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-3)


def test_save_and_auto_reload_give_identical_outputs(scot, tmp_path):
    _, _, model, processor = scot
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    files = {path.name for path in tmp_path.iterdir()}
    assert "model.safetensors" in files and "config.json" in files
    assert not {f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))}

    reloaded = AutoModel.from_pretrained(tmp_path)
    reloaded_processor = AutoProcessor.from_pretrained(tmp_path)
    assert type(reloaded) is ScotModel and type(reloaded.config) is ScotConfig
    assert type(reloaded_processor) is ScotProcessor

    inputs = _inputs(processor)
    reloaded_inputs = _inputs(reloaded_processor)
    for key in inputs:
        torch.testing.assert_close(reloaded_inputs[key], inputs[key], atol=0, rtol=0)
    with torch.no_grad():
        before, after = model(**inputs), reloaded(**reloaded_inputs)
        for field in ("composed_embeds", "image_embeds", "text_embeds", "text_weight"):
            torch.testing.assert_close(getattr(after, field), getattr(before, field), atol=ATOL, rtol=0)
        embeds = model.get_image_features(pixel_values=inputs["pixel_values"]), model.get_text_features(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        )
        torch.testing.assert_close(reloaded.compose(*embeds), model.compose(*embeds), atol=ATOL, rtol=0)


def _trainable(model):
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


def test_only_the_combiner_is_trainable_after_from_backbone_and_after_reload(scot, tmp_path):
    _, _, model, _ = scot
    combiner = {name for name, _ in model.named_parameters() if name.startswith("combiner.")}
    assert combiner and _trainable(model) == combiner
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert _trainable(reloaded) == combiner
    reloaded.train()
    assert reloaded.combiner.training and not reloaded.encoder.training
    assert not any(module.training for module in reloaded.encoder.modules())


def test_gradients_reach_only_the_combiner(scot):
    _, _, model, processor = scot
    model.train()
    inputs = _inputs(processor)
    with torch.no_grad():
        modified = model.get_text_features(
            **processor(text=["a blue thing", "a red cat", "a hat"], return_tensors="pt")
        )
        captions = model.get_text_features(
            **processor(text=["a red thing", "a red dog", "a man"], return_tensors="pt")
        )
    output = model(**inputs, modified_caption_embeds=modified, caption_embeds=captions)
    assert output.loss.ndim == 0 and torch.isfinite(output.loss)
    output.loss.backward()
    for name, parameter in model.named_parameters():
        if name.startswith("combiner."):
            assert parameter.grad is not None, name
        else:
            assert parameter.grad is None, name
    assert any(p.grad.abs().sum() > 0 for p in model.combiner.parameters())


def test_combiner_dropout_only_in_train_mode(scot):
    _, _, model, processor = scot
    inputs = _inputs(processor)
    with torch.no_grad():
        model.eval()
        first, second = model(**inputs).composed_embeds, model(**inputs).composed_embeds
        torch.testing.assert_close(first, second, atol=0, rtol=0)
        model.train()
        assert not torch.allclose(model(**inputs).composed_embeds, model(**inputs).composed_embeds)


def test_precomputed_embeddings_give_the_same_composition(scot):
    _, _, model, processor = scot
    inputs = _inputs(processor)
    with torch.no_grad():
        output = model(**inputs)
        from_embeds = model(image_embeds=output.image_embeds, text_embeds=output.text_embeds)
    torch.testing.assert_close(from_embeds.composed_embeds, output.composed_embeds, atol=ATOL, rtol=0)


def test_image_anchor_fuses_the_composed_and_the_image_rankings(scot):
    _, _, model, processor = scot
    model.eval()
    inputs = _inputs(processor)
    gallery = F.normalize(torch.randn(7, EMBED_DIM, generator=torch.Generator().manual_seed(1)), dim=-1)
    with torch.no_grad():
        output = model(**inputs)
        plain, plain_weight = model.compose(output.image_embeds, output.text_embeds, return_text_weight=True)
        model.config.image_anchor_weight = 0.5
        anchored, anchored_weight = model.compose(output.image_embeds, output.text_embeds, return_text_weight=True)
    torch.testing.assert_close(plain, output.composed_embeds, atol=ATOL, rtol=0)  # β = 0 (the default): unchanged
    torch.testing.assert_close(anchored_weight, plain_weight, atol=0, rtol=0)
    _unit_rows(anchored)
    # each gallery item scores cos(c, g) + β cos(image, g), up to one positive factor per query
    fused = plain @ gallery.T + 0.5 * F.normalize(output.image_embeds, dim=-1) @ gallery.T
    scale = (fused / (anchored @ gallery.T))[:, :1]
    torch.testing.assert_close(anchored @ gallery.T * scale, fused, atol=1e-5, rtol=0)
    assert (scale > 0).all() and not torch.allclose(anchored, plain)


def test_combiner_sizes_follow_clip4cir_defaults_and_overrides(backbone_folders):
    model = ScotModel.from_backbone(backbone_folders["clip"])
    assert model.config.combiner_projection_dim == 4 * EMBED_DIM
    assert model.config.combiner_hidden_dim == 8 * EMBED_DIM
    assert model.combiner.text_projection[0].out_features == 4 * EMBED_DIM
    assert model.combiner.fusion[0].out_features == 8 * EMBED_DIM
    assert model.combiner.text_projection[2].p == 0.5
    custom = ScotModel.from_backbone(backbone_folders["clip"], combiner_projection_dim=8, combiner_hidden_dim=12,
                                     combiner_dropout=0.1, loss_type="infonce")
    assert custom.combiner.image_projection[0].out_features == 8 and custom.combiner.fusion[0].out_features == 12
    assert custom.config.loss_type == "infonce"


def test_blip2_query_pooling_switch(backbone_folders):
    folder = backbone_folders["blip2"]
    processor = ScotProcessor.from_backbone(folder)
    pixel_values = processor(images=_images(), return_tensors="pt")["pixel_values"]
    raw = Blip2ForImageTextRetrieval.from_pretrained(folder).eval()
    input_ids = processor(text=TEXTS, return_tensors="pt")
    with torch.no_grad():
        queries = raw(pixel_values=pixel_values, **input_ids).image_embeds  # [B, 8, d], each normalised
        first = ScotModel.from_backbone(folder, blip2_query_pooling="first").get_image_features(pixel_values)
        mean = ScotModel.from_backbone(folder).get_image_features(pixel_values)
    assert queries.shape[1] == 8
    torch.testing.assert_close(first, queries[:, 0], atol=ATOL, rtol=0)
    torch.testing.assert_close(mean, F.normalize(queries.mean(dim=1), dim=-1), atol=ATOL, rtol=0)


def test_dual_encoder_mean_text_pooling(backbone_folders):
    folder = backbone_folders["dual_encoder"]
    processor = ScotProcessor.from_backbone(folder)
    tokens = processor(text=TEXTS, return_tensors="pt")
    model = ScotModel.from_backbone(folder, text_pooling="mean")
    with torch.no_grad():
        hidden = model.encoder.text_model(**tokens).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).float()
        expected = F.normalize(model.encoder.text_projection((hidden * mask).sum(1) / mask.sum(1)), dim=-1)
        torch.testing.assert_close(model.get_text_features(**tokens), expected, atol=ATOL, rtol=0)


def test_from_backbone_accepts_a_loaded_model(backbone_folders):
    encoder = CLIPModel.from_pretrained(backbone_folders["clip"])
    model = ScotModel.from_backbone(encoder)
    assert model.encoder is encoder and not any(p.requires_grad for p in encoder.parameters())


# -- bad input -------------------------------------------------------------------------------------------------------


def test_mismatched_batch_sizes_are_refused(scot):
    _, _, model, processor = scot
    pixel_values = processor(images=_images()[:2], return_tensors="pt")["pixel_values"]
    tokens = processor(text=TEXTS, return_tensors="pt")
    with pytest.raises(ValueError, match="2 reference image.*3 modification text"):
        model(pixel_values=pixel_values, **tokens)
    with pytest.raises(ValueError, match="one image embedding per text embedding"):
        model.compose(torch.randn(2, EMBED_DIM), torch.randn(3, EMBED_DIM))
    with pytest.raises(ValueError, match=rf"\[batch, {EMBED_DIM}\]"):
        model.compose(torch.randn(3, EMBED_DIM + 1), torch.randn(3, EMBED_DIM + 1))


def test_missing_inputs_are_named(scot):
    _, _, model, processor = scot
    tokens = processor(text=TEXTS, return_tensors="pt")
    with pytest.raises(ValueError, match="pixel_values or image_embeds"):
        model(**tokens)
    with pytest.raises(ValueError, match=r"input_ids of shape \[batch >= 1, sequence\]"):
        model.get_text_features(input_ids=torch.zeros(0, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"pixel_values of shape \[batch, channels, height, width\]"):
        model.get_image_features(pixel_values=torch.zeros(3, 32, 32))


def test_a_non_scot_folder_is_refused_by_from_pretrained(backbone_folders):
    with pytest.raises(ValueError, match="holds a 'clip' config, not a SCOT config.*from_backbone"):
        ScotModel.from_pretrained(backbone_folders["clip"])


def test_from_backbone_refuses_a_scot_folder(backbone_folders, tmp_path):
    ScotModel.from_backbone(backbone_folders["clip"]).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="already holds a SCOT model"):
        ScotModel.from_backbone(tmp_path)


def test_unsupported_backbone_type_is_named(tmp_path):
    BertModel(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=20)).save_pretrained(tmp_path)
    with pytest.raises(
        ValueError, match="Unsupported encoder model_type 'bert'.*CLIPModel, Blip2ForImageTextRetrieval"
    ):
        ScotModel.from_backbone(tmp_path)
    with pytest.raises(ValueError, match="Unsupported encoder model_type 'bert'"):
        ScotModel.from_backbone(BertModel.from_pretrained(tmp_path))


def test_blip2_checkpoint_without_retrieval_heads_is_refused(tmp_path):
    # A BLIP-2 captioning checkpoint (Blip2Model: no text embeddings, no projections) cannot serve retrieval.
    save_tiny_blip2(tmp_path / "reference")
    config = Blip2Config.from_pretrained(tmp_path / "reference")
    Blip2Model(config).save_pretrained(tmp_path / "captioning")
    with pytest.raises(ValueError, match="lacks weights SCOT needs.*vision_projection and text_projection"):
        ScotModel.from_backbone(tmp_path / "captioning")
