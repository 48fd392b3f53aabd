"""SCOT: zero-shot composed image retrieval on a frozen vision-language encoder.

Importing this package registers model_type "scot" with `AutoConfig`, `AutoModel` and `AutoProcessor`, and marks
the classes for the Hub route: every `save_pretrained` folder also carries a copy of these three files, so it loads
with `trust_remote_code=True` where this package is not installed (and without it, from the package, where it is).
"""

from transformers import AutoConfig, AutoModel, AutoProcessor

from .configuration_scot import ScotConfig
from .modeling_pseudo_word import PseudoWordMapper, pseudo_word_composing_loss, pseudo_word_mapping_loss
from .modeling_scot import (
    Combiner,
    GalleryStatistics,
    ScotModel,
    ScotOutput,
    ScotPreTrainedModel,
    compute_pseudo_word_mapping_loss,
    compute_scot_loss,
    image_floor_loss,
    infonce_loss,
    nearest_gallery_images,
    scot_loss,
    scot_split_loss,
    text_familiarity,
    text_grounding,
)
from .processing_scot import ScotProcessor

__version__ = "0.1.0"

AutoConfig.register(ScotConfig.model_type, ScotConfig, exist_ok=True)
AutoModel.register(ScotConfig, ScotModel, exist_ok=True)
AutoProcessor.register(ScotConfig, ScotProcessor, exist_ok=True)

ScotConfig.register_for_auto_class()
ScotModel.register_for_auto_class("AutoModel")
ScotProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "Combiner",
    "GalleryStatistics",
    "PseudoWordMapper",
    "ScotConfig",
    "ScotModel",
    "ScotOutput",
    "ScotPreTrainedModel",
    "ScotProcessor",
    "compute_pseudo_word_mapping_loss",
    "compute_scot_loss",
    "image_floor_loss",
    "infonce_loss",
    "nearest_gallery_images",
    "pseudo_word_composing_loss",
    "pseudo_word_mapping_loss",
    "scot_loss",
    "scot_split_loss",
    "text_familiarity",
    "text_grounding",
]
