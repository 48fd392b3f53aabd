"""Fixtures of the modeling tests."""

import pytest
import torch

from modeling_scot import ScotConfig, ScotModel
from tests.tiny_backbones import EMBED_DIM


@pytest.fixture
def anchored_scot_model():
    """A tiny random CLIP-backed SCOT model with the image anchor β 0.5, in eval mode: the gates' tests compose with
    it."""
    torch.manual_seed(0)
    config = ScotConfig(encoder_config={"model_type": "clip", "projection_dim": EMBED_DIM,
                                        "text_config": {"hidden_size": 16, "intermediate_size": 32,
                                                        "num_hidden_layers": 1, "num_attention_heads": 2,
                                                        "vocab_size": 64},
                                        "vision_config": {"hidden_size": 16, "intermediate_size": 32,
                                                          "num_hidden_layers": 1, "num_attention_heads": 2,
                                                          "image_size": 32, "patch_size": 16}},
                        image_anchor_weight=0.5)
    return ScotModel(config).eval()
