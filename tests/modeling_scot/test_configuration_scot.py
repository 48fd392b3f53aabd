"""ScotConfig: defaults from the paper and CLIP4Cir, derived sizes, serialisation, and refusals."""

import pytest
from transformers import AutoConfig, Blip2Config, CLIPConfig, VisionTextDualEncoderConfig

from modeling_scot import ScotConfig


def test_defaults_are_the_papers():
    config = ScotConfig()
    assert isinstance(config.encoder_config, CLIPConfig)
    assert config.embed_dim == 512
    assert (config.combiner_projection_dim, config.combiner_hidden_dim, config.combiner_dropout) == (2048, 4096, 0.5)
    assert (config.alpha_pos, config.alpha_neg, config.margin) == (10.0, 0.1, 0.2)
    assert config.loss_type == "scot" and config.infonce_temperature == 0.01
    assert config.blip2_query_pooling == "mean" and config.freeze_encoder is True


@pytest.mark.parametrize(
    "encoder_config, embed_dim",
    [
        (CLIPConfig(projection_dim=768), 768),
        (Blip2Config(image_text_hidden_size=256, qformer_config={"use_qformer_text_input": True}), 256),
        (VisionTextDualEncoderConfig(vision_config={"model_type": "vit"}, text_config={"model_type": "bert"},
                                     projection_dim=384), 384),
    ],
)
def test_embed_dim_comes_from_the_encoder(encoder_config, embed_dim):
    config = ScotConfig(encoder_config=encoder_config.to_dict())
    assert config.embed_dim == embed_dim
    assert config.combiner_projection_dim == 4 * embed_dim and config.combiner_hidden_dim == 8 * embed_dim


def test_round_trip_through_auto_config(tmp_path):
    blip2 = Blip2Config(qformer_config={"use_qformer_text_input": True})
    config = ScotConfig(encoder_config=blip2.to_dict(), margin=0.3, loss_type="infonce")
    config.save_pretrained(tmp_path)
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert type(reloaded) is ScotConfig and isinstance(reloaded.encoder_config, Blip2Config)
    saved, loaded = config.to_dict(), reloaded.to_dict()
    loaded.pop("_name_or_path"), saved.pop("_name_or_path")  # the folder it came from
    assert loaded == saved


@pytest.mark.parametrize(
    "field, value", [("loss_type", "triplet"), ("blip2_query_pooling", "max"), ("text_pooling", "cls"),
                     ("combiner_dropout", 1.5), ("infonce_temperature", 0.0),
                     ("image_anchor_weight", -1.0)]
)
def test_invalid_settings_are_refused(field, value):
    with pytest.raises(Exception, match=f"ScotConfig.{field} must be"):
        ScotConfig(**{field: value})


def test_unsupported_encoder_is_named():
    with pytest.raises(ValueError, match="Unsupported encoder model_type 'bert'"):
        ScotConfig(encoder_config={"model_type": "bert"})


def test_non_scot_config_file_is_refused(tmp_path):
    CLIPConfig().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="holds a 'clip' config, not a SCOT config"):
        ScotConfig.from_pretrained(tmp_path)


def test_blip2_without_text_qformer_is_refused():
    with pytest.raises(Exception, match="use_qformer_text_input=False"):
        ScotConfig(encoder_config=Blip2Config().to_dict())
