"""One answer to "is this a SCOT model or a backbone to wrap?", for training, evaluation, search and the web demo."""

from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger(__name__)

# ScotConfig fields that fix the architecture: a trained SCOT model cannot change them.
ARCHITECTURE_FIELDS = ("combiner_projection_dim", "combiner_hidden_dim", "combiner_dropout", "blip2_query_pooling",
                       "text_pooling", "freeze_encoder")


def is_scot_model(name_or_path: str | os.PathLike, **hub_kwargs) -> bool:
    """Whether `name_or_path` (a folder or hub id) holds a SCOT model, read from its config with `AutoConfig`; never
    runs code from the folder."""
    from transformers import AutoConfig

    import modeling_scot  # registers model_type "scot"

    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=False, **hub_kwargs)
    except (OSError, ValueError) as error:
        raise ValueError(f"{str(name_or_path)!r} is not a model this package can load (expected a saved SCOT model, "
                         f"or a CLIP / BLIP-2 retrieval / VisionTextDualEncoder folder or hub id): {error}") from None
    return config.model_type == modeling_scot.ScotConfig.model_type


def load_scot_or_backbone(name_or_path: str | os.PathLike, *, device: str | torch.device | None = None,
                          config_overrides: dict | None = None, **hub_kwargs):
    """`(model, processor, is_trained)`: a saved SCOT model (its non-architecture settings, such as the loss, may be
    overridden), or a backbone wrapped by `ScotModel.from_backbone` with a new, untrained Combiner.

    Hub ids work like folders (through `AutoConfig`); `trust_remote_code` is always False. The model is returned in
    eval mode, on `device` when given."""
    from modeling_scot import ScotModel, ScotProcessor

    overrides = {name: value for name, value in (config_overrides or {}).items() if value is not None}
    hub_kwargs.pop("trust_remote_code", None)
    if is_scot_model(name_or_path, **hub_kwargs):
        fixed = sorted(set(overrides) & set(ARCHITECTURE_FIELDS))
        if fixed:
            raise ValueError(f"{name_or_path} is a trained SCOT model: its architecture ({fixed}) cannot change; "
                             "start from its backbone instead.")
        model = ScotModel.from_pretrained(name_or_path, trust_remote_code=False, **hub_kwargs)
        for name, value in overrides.items():
            setattr(model.config, name, value)
        processor = ScotProcessor.from_pretrained(name_or_path, trust_remote_code=False, **hub_kwargs)
        trained = True
    else:
        model = ScotModel.from_backbone(name_or_path, **overrides)
        processor = ScotProcessor.from_backbone(name_or_path, **hub_kwargs)
        trained = False
    if device is not None:
        model.to(device)
    return model.eval(), processor, trained
