"""SCOT model configuration.

SCOT (Jawade et al., "SCOT: Self-Supervised Contrastive Pretraining for Zero-Shot Compositional Retrieval")
composes a frozen vision-language encoder's image and text embeddings with a CLIP4Cir Combiner.
`ScotConfig` holds the encoder's own config as a sub-config plus the Combiner and loss settings.
"""

import math

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
# "combiner": SCOT's Combiner on the two embeddings; "pseudo_word": Map-to-Compose, the image as pseudo-word tokens
# inside the text encoder's prompt (modeling_pseudo_word.py)
COMPOSERS = ("combiner", "pseudo_word")
# where stage 2's LoRA adapters are: none added, in the text encoder (training), or merged into its weights (saved)
LORA_STATES = ("none", "active", "merged")
# What the grounding gate measures: the sixth ablation round's "lookalike" (how well the text fits one of the
# reference's look-alikes) or the seventh's "change" (how much better it fits one than the reference itself)
GROUNDING_GATE_STATISTICS = ("lookalike", "change")


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


def encoder_token_embed_dim(encoder_config: PreTrainedConfig) -> int:
    """Width of the text tower's input (token) embeddings: where pseudo-word tokens live."""
    if encoder_config.model_type == "blip-2":
        return encoder_config.qformer_config.hidden_size
    return encoder_config.text_config.hidden_size


def encoder_image_token_dim(encoder_config: PreTrainedConfig) -> int:
    """Width of the image side's token states that pseudo words attend to: the vision tower's patch tokens (CLIP, dual
    encoders; a CNN's channels) or BLIP-2's Q-Former query states."""
    if encoder_config.model_type == "blip-2":
        return encoder_config.qformer_config.hidden_size
    vision_config = encoder_config.vision_config
    hidden_size = getattr(vision_config, "hidden_size", None)
    return hidden_size if hidden_size is not None else vision_config.hidden_sizes[-1]


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
        image_anchor_weight (`float`, *optional*, defaults to 0.0):
            β of the image anchor (ours, not the paper's): the Combiner's output c becomes normalize(c + β ·
            image), so that every gallery item scores cos(c, g) + β · cos(image, g) — the composed ranking fused
            with the image-only one. 0 is the paper's Combiner.
        grounding_gate_neighbours (`int`, *optional*, defaults to 0):
            k of the grounding gate (ours, not the paper's; inference only, any composer): at retrieval, a query
            whose modification text does not pick out one of the reference's k nearest gallery images
            (`text_grounding` below `grounding_gate_threshold`) is answered with the reference image alone. It needs
            the gallery, so it applies where the caller passes it (`get_composed_features(...,
            gallery_neighbour_embeds=..., gallery_statistics=...)`: the evaluation and the search do). 0 is off.
        grounding_gate_threshold (`float`, *optional*, defaults to 0.0):
            θ of the grounding gate, in z-units of the text's cosines over the gallery; `trainers` calibrates it on
            the validation slice (`ScotTrainingArguments.grounding_gate_alpha`).
        grounding_gate_statistic (`str`, *optional*, defaults to `"lookalike"`):
            What the gate compares with θ (`text_grounding`): `"lookalike"`, the largest z-scored cosine between
            the text and one of the reference's look-alikes (docs/ablations.md, sixth round); `"change"`, the
            largest z-score of a look-alike minus the reference's own — how much better the text fits some
            look-alike than the reference itself (seventh round).
        novelty_gate_neighbours (`int`, *optional*, defaults to 0):
            k of the text novelty gate (ours, not the paper's; inference only, any composer): a query whose
            modification embedding is less similar than `novelty_gate_threshold` (a cosine) to its k-th nearest
            text of the model's bank of training modifications (`text_familiarity`) is answered with the reference
            image alone: nothing in the training data vouches for what the composer does with such a text. Needs no
            gallery, but the bank (`novelty_gate_bank_size` > 0); never applies in training mode. 0 is off.
        novelty_gate_threshold (`float`, *optional*, defaults to 0.0):
            θ of the text novelty gate, a cosine; `trainers` calibrates it on the validation slice
            (`ScotTrainingArguments.novelty_gate_alpha`).
        novelty_gate_bank_size (`int`, *optional*, defaults to 0):
            How many training modification embeddings the model holds for the novelty gate (the buffer
            `novelty_gate_text_embeds`, saved with the weights); set by `ScotModel.set_novelty_gate`.
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
        composer (`str`, *optional*, defaults to `"combiner"`):
            `"combiner"`: SCOT's Combiner fuses the image and text embeddings (the fields above). `"pseudo_word"`:
            Map-to-Compose (docs/map_to_compose.md): a mapping network turns the reference image into K pseudo-word
            tokens that the text encoder reads in `pseudo_word_prompt`; the fields below. Saved configs without this
            key are Combiner models.
        num_pseudo_tokens (`int`, *optional*, defaults to 4):
            K, the pseudo-word tokens `$` stands for.
        pseudo_word_prompt (`str`, *optional*, defaults to `"a photo of $ that {modification}"`):
            The composed query's prompt (stage 2 and inference): `$` (at most once) is replaced by the K pseudo
            tokens, `{modification}` (exactly once) by the modification text's tokens.
        pseudo_word_image_prompt (`str`, *optional*, defaults to `"a photo of $"`):
            The image-only prompt of stage 1 (`ScotModel.get_image_prompt_features`).
        pseudo_word_prompt_token_ids (`dict`, *optional*):
            Both prompts tokenised with the backbone's tokenizer (`tokenize_pseudo_word_prompts`); filled by
            `ScotModel.from_backbone` or `ScotModel.set_prompt_tokenizer`, so the model composes from token ids alone.
        pseudo_word_mapping_depth (`int`, *optional*, defaults to 2):
            Visual-semantic-injection blocks of the mapping network (0: an MLP on the pooled embedding only).
        pseudo_word_mapping_heads (`int`, *optional*, defaults to 8):
            Attention heads of those blocks; must divide the text encoder's token embedding width.
        pseudo_word_mapping_dropout (`float`, *optional*, defaults to 0.1):
            Dropout inside the mapping network.
        pseudo_word_temperature (`float`, *optional*, defaults to 0.01):
            τ of stage 1's symmetric InfoNCE between image prompts and images.
        soft_alignment_temperature (`float`, *optional*, defaults to 0.01):
            τ_s of stage 1's soft text alignment (the softmax over the batch's captions).
        soft_alignment_weight (`float`, *optional*, defaults to 1.0):
            Weight of the soft text alignment KL in stage 1's loss.
        composing_temperature (`float`, *optional*, defaults to 0.01):
            τ of stage 2's contrastive loss.
        pseudo_word_lora_rank (`int`, *optional*, defaults to 8):
            Rank r of stage 2's LoRA adapters on the text encoder (kept after merging, for the card).
        pseudo_word_lora_alpha (`float`, *optional*, defaults to 16.0):
            LoRA α (the update is scaled by α / r).
        pseudo_word_lora_dropout (`float`, *optional*, defaults to 0.0):
            Dropout on the LoRA input, active in train mode (the rest of the frozen encoder stays in eval mode).
        pseudo_word_lora_target_modules (`list[str]` or `str`, *optional*):
            peft `target_modules` in the text tower; defaults to the encoder's attention projections (BLIP-2:
            the Q-Former's text-only feed-forward, so the image side stays frozen).
        pseudo_word_lora_state (`str`, *optional*, defaults to `"none"`):
            `"none"`, `"active"` (adapters in the text encoder: a training checkpoint; loading it re-adds them and
            needs peft) or `"merged"` (folded into the text encoder's weights: loads without peft).

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
    image_anchor_weight: float = 0.0
    grounding_gate_neighbours: int = 0
    grounding_gate_threshold: float = 0.0
    grounding_gate_statistic: str = "lookalike"
    novelty_gate_neighbours: int = 0
    novelty_gate_threshold: float = 0.0
    novelty_gate_bank_size: int = 0
    blip2_query_pooling: str = "mean"
    text_pooling: str = "pooler"
    freeze_encoder: bool = True
    loss_type: str = "scot"
    alpha_pos: float = 10.0
    alpha_neg: float = 0.1
    margin: float = 0.2
    infonce_temperature: float = 0.01
    composer: str = "combiner"
    num_pseudo_tokens: int = 4
    pseudo_word_prompt: str = "a photo of $ that {modification}"
    pseudo_word_image_prompt: str = "a photo of $"
    pseudo_word_prompt_token_ids: dict | None = None
    pseudo_word_mapping_depth: int = 2
    pseudo_word_mapping_heads: int = 8
    pseudo_word_mapping_dropout: float = 0.1
    pseudo_word_temperature: float = 0.01
    soft_alignment_temperature: float = 0.01
    soft_alignment_weight: float = 1.0
    composing_temperature: float = 0.01
    pseudo_word_lora_rank: int = 8
    pseudo_word_lora_alpha: float = 16.0
    pseudo_word_lora_dropout: float = 0.0
    pseudo_word_lora_target_modules: list[str] | str | None = None
    pseudo_word_lora_state: str = "none"

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
            ("composer", COMPOSERS),
            ("pseudo_word_lora_state", LORA_STATES),
            ("grounding_gate_statistic", GROUNDING_GATE_STATISTICS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"ScotConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        if not self.image_anchor_weight >= 0.0:
            raise ValueError(f"ScotConfig.image_anchor_weight must be >= 0, got {self.image_anchor_weight}.")
        if isinstance(self.grounding_gate_neighbours, bool) or not (
                isinstance(self.grounding_gate_neighbours, int) and self.grounding_gate_neighbours >= 0):
            raise ValueError("ScotConfig.grounding_gate_neighbours must be an integer >= 0 (0: no gate), got "
                             f"{self.grounding_gate_neighbours!r}.")
        for name in ("novelty_gate_neighbours", "novelty_gate_bank_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, int) and value >= 0):
                raise ValueError(f"ScotConfig.{name} must be an integer >= 0 (0: no gate), got {value!r}.")
        if self.novelty_gate_bank_size and self.novelty_gate_neighbours > self.novelty_gate_bank_size:
            raise ValueError(f"ScotConfig.novelty_gate_neighbours ({self.novelty_gate_neighbours}) needs a bank of at "
                             f"least as many training texts, got novelty_gate_bank_size "
                             f"{self.novelty_gate_bank_size}.")
        if not -1.0 <= self.novelty_gate_threshold <= 1.0:
            raise ValueError(f"ScotConfig.novelty_gate_threshold is a cosine, in [-1, 1]; got "
                             f"{self.novelty_gate_threshold}.")
        if not math.isfinite(self.grounding_gate_threshold):
            raise ValueError(f"ScotConfig.grounding_gate_threshold must be finite, got "
                             f"{self.grounding_gate_threshold}.")
        if not 0.0 <= self.combiner_dropout < 1.0:
            raise ValueError(f"ScotConfig.combiner_dropout must be in [0, 1), got {self.combiner_dropout}.")
        for name in ("infonce_temperature", "pseudo_word_temperature", "soft_alignment_temperature",
                     "composing_temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ScotConfig.{name} must be > 0, got {getattr(self, name)}.")
        self._validate_pseudo_word_settings()

    def _validate_pseudo_word_settings(self):
        for name, minimum in (("num_pseudo_tokens", 1), ("pseudo_word_mapping_depth", 0),
                              ("pseudo_word_mapping_heads", 1), ("pseudo_word_lora_rank", 1)):
            if getattr(self, name) < minimum:
                raise ValueError(f"ScotConfig.{name} must be an integer >= {minimum}, got {getattr(self, name)!r}.")
        for name in ("pseudo_word_mapping_dropout", "pseudo_word_lora_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"ScotConfig.{name} must be in [0, 1), got {getattr(self, name)}.")
        if self.soft_alignment_weight < 0:
            raise ValueError(f"ScotConfig.soft_alignment_weight must be >= 0, got {self.soft_alignment_weight}.")
        for name, modification_count in (("pseudo_word_prompt", 1), ("pseudo_word_image_prompt", 0)):
            template = getattr(self, name)
            if template.count("{modification}") != modification_count or template.count("$") > 1:
                raise ValueError(
                    f"ScotConfig.{name} must hold '$' (the pseudo words) at most once and '{{modification}}' "
                    f"{'exactly once' if modification_count else 'not at all'}, got {template!r}.")
        token_ids = self.pseudo_word_prompt_token_ids
        expected_keys = {"prompt", "image_prompt", "special_tokens_before", "special_tokens_after",
                         "placeholder_token_id", "pad_token_id"}
        if token_ids is not None and set(token_ids) != expected_keys:
            raise ValueError(f"ScotConfig.pseudo_word_prompt_token_ids must have the keys {sorted(expected_keys)} "
                             f"(from tokenize_pseudo_word_prompts), got {sorted(token_ids)}.")


__all__ = ["ScotConfig"]
