"""SCOT model configuration.

SCOT (Jawade et al., "SCOT: Self-Supervised Contrastive Pretraining for Zero-Shot Compositional Retrieval")
composes a frozen vision-language encoder's image and text embeddings with a CLIP4Cir Combiner.
`ScotConfig` holds the encoder's own config as a sub-config plus the Combiner and loss settings.
"""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

# model_type of the encoder config -> transformers class that ScotModel wraps
SUPPORTED_ENCODERS = {
    "clip": "CLIPModel",
    "blip-2": "Blip2ForImageTextRetrieval",
    "vision-text-dual-encoder": "VisionTextDualEncoderModel",
}
BLIP2_QUERY_POOLINGS = ("mean", "first")
TEXT_POOLINGS = ("pooler", "mean")
LOSS_TYPES = ("scot", "scot_split", "infonce", "infonce_captions")


def encoder_embed_dim(encoder_config: PreTrainedConfig) -> int:
    """Size of the joint image-text space of a supported encoder (what the Combiner reads and writes)."""
    model_type = getattr(encoder_config, "model_type", None)
    if model_type not in SUPPORTED_ENCODERS:
        raise ValueError(
            f"Unsupported encoder model_type {model_type!r}: SCOT wraps one of {sorted(SUPPORTED_ENCODERS)} "
            f"({', '.join(SUPPORTED_ENCODERS.values())})."
        )
    if model_type == "blip-2":
        return encoder_config.image_text_hidden_size
    return encoder_config.projection_dim


def encoder_text_positions(encoder_config: PreTrainedConfig) -> int | None:
    """How many token positions the encoder's text side has (CLIP: 77), or None when its config does not say: texts
    longer than this must be truncated, or the position embeddings run out."""
    model_type = getattr(encoder_config, "model_type", None)
    if model_type == "blip-2":
        text_config = encoder_config.qformer_config
    else:
        text_config = getattr(encoder_config, "text_config", None)
    return getattr(text_config, "max_position_embeddings", None)


@strict
class ScotConfig(PreTrainedConfig):
    r"""
    Configuration of a [`ScotModel`].

    Args:
        encoder_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the frozen vision-language encoder: a `CLIPConfig`, a `Blip2Config` (used through
            `Blip2ForImageTextRetrieval`) or a `VisionTextDualEncoderConfig`. Defaults to a default `CLIPConfig`.
        combiner_projection_dim (`int`, *optional*):
            Width P of the Combiner's image and text branches. Defaults to 4 x `embed_dim` (CLIP4Cir).
        combiner_hidden_dim (`int`, *optional*):
            Width H of the Combiner's fusion layer and of its λ head. Defaults to 8 x `embed_dim` (CLIP4Cir).
        combiner_dropout (`float`, *optional*, defaults to 0.5):
            Dropout inside the Combiner (CLIP4Cir uses 0.5).
        blip2_query_pooling (`str`, *optional*, defaults to `"mean"`):
            How BLIP-2's 32 projected, normalised query embeddings become one image vector: `"mean"` averages
            them and re-normalises (every query contributes, which is what a single-vector gallery needs);
            `"first"` keeps the first query. Only used with a BLIP-2 encoder.
        text_pooling (`str`, *optional*, defaults to `"pooler"`):
            Dual-encoder text pooling: `"pooler"` uses the text model's `pooler_output` as
            `VisionTextDualEncoderModel.get_text_features` does; `"mean"` uses the attention-masked mean of the last
            hidden state (how sentence-transformers models such as MiniLM were trained). Only used with a
            `VisionTextDualEncoderModel` encoder.
        freeze_encoder (`bool`, *optional*, defaults to `True`):
            Keep the encoder frozen (no gradients, eval mode) as in the paper. Re-applied after `from_pretrained`.
        loss_type (`str`, *optional*, defaults to `"scot"`):
            `"scot"`: the paper's loss, Eq. 4-9 as written (`scot_loss`); `"scot_split"`: a reading of it with a
            mean positive term and hard negatives only (`scot_split_loss`; ours, not the paper's); `"infonce"`:
            CLIP4Cir's cross-entropy over scaled cosines; `"infonce_captions"`: InfoNCE with the original captions
            as extra negatives (Eq. 8's idea in InfoNCE form).
        alpha_pos (`float`, *optional*, defaults to 10.0):
            α_pos, weight of the positive term (Eq. 9).
        alpha_neg (`float`, *optional*, defaults to 0.1):
            α_neg, weight of the negative terms (Eq. 9).
        margin (`float`, *optional*, defaults to 0.2):
            λ of Eq. 6: negatives with cosine similarity at or below it are masked out.
        infonce_temperature (`float`, *optional*, defaults to 0.01):
            Temperature of the InfoNCE option (CLIP4Cir multiplies cosines by 100).

    Example:

    ```python
    >>> from transformers import CLIPConfig
    >>> from modeling_scot import ScotConfig, ScotModel
    >>> config = ScotConfig(encoder_config=CLIPConfig().to_dict())
    >>> config.embed_dim
    512
    >>> model = ScotModel(config)  # random encoder; use ScotModel.from_backbone(...) for a pretrained one
    ```
    """

    model_type = "scot"
    sub_configs_defaults = {"encoder_config": SubConfigSpec(config_class=AutoConfig, model_type="clip")}

    encoder_config: PreTrainedConfig | dict | None = None
    combiner_projection_dim: int | None = None
    combiner_hidden_dim: int | None = None
    combiner_dropout: float = 0.5
    blip2_query_pooling: str = "mean"
    text_pooling: str = "pooler"
    freeze_encoder: bool = True
    loss_type: str = "scot"
    alpha_pos: float = 10.0
    alpha_neg: float = 0.1
    margin: float = 0.2
    infonce_temperature: float = 0.01

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # resolve the CLIP4Cir defaults once, so that the saved config.json states the real sizes
        if self.combiner_projection_dim is None:
            self.combiner_projection_dim = 4 * self.embed_dim
        if self.combiner_hidden_dim is None:
            self.combiner_hidden_dim = 8 * self.embed_dim

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "ScotConfig":
        # Refuse a non-SCOT config.json up front: building a ScotConfig from, say, a CLIP config would silently
        # give a default encoder and lose the real one.
        config_dict, _ = cls.get_config_dict(pretrained_model_name_or_path, **kwargs)
        model_type = config_dict.get("model_type")
        if model_type != cls.model_type:
            raise ValueError(
                f"{str(pretrained_model_name_or_path)!r} holds a {model_type!r} config, not a SCOT config "
                f"(model_type {cls.model_type!r}). To build SCOT around that encoder use "
                f"ScotModel.from_backbone({str(pretrained_model_name_or_path)!r})."
            )
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @property
    def embed_dim(self) -> int:
        """Dimension of every embedding SCOT returns: the encoder's joint image-text space."""
        return encoder_embed_dim(self.encoder_config)

    def validate_architecture(self):
        """Part of `@strict` validation: clear errors for values SCOT cannot use."""
        encoder_embed_dim(self.encoder_config)  # raises for an unsupported encoder
        encoder_config = self.encoder_config
        if encoder_config.model_type == "blip-2" and not encoder_config.qformer_config.use_qformer_text_input:
            raise ValueError(
                "This BLIP-2 config has qformer_config.use_qformer_text_input=False: its Q-Former cannot embed text. "
                "SCOT needs a BLIP-2 retrieval checkpoint (Blip2ForImageTextRetrieval, e.g. "
                "Salesforce/blip2-itm-vit-g)."
            )
        for name, allowed in (
            ("blip2_query_pooling", BLIP2_QUERY_POOLINGS),
            ("text_pooling", TEXT_POOLINGS),
            ("loss_type", LOSS_TYPES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"ScotConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        if not 0.0 <= self.combiner_dropout < 1.0:
            raise ValueError(f"ScotConfig.combiner_dropout must be in [0, 1), got {self.combiner_dropout}.")
        if self.infonce_temperature <= 0:
            raise ValueError(f"ScotConfig.infonce_temperature must be > 0, got {self.infonce_temperature}.")


__all__ = ["ScotConfig"]
