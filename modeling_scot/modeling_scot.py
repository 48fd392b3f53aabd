"""PyTorch SCOT model.

SCOT: Self-Supervised Contrastive Pretraining for Zero-Shot Compositional Retrieval
(Jawade et al.). A frozen vision-language encoder (CLIP, BLIP-2 or any `VisionTextDualEncoderModel`)
embeds a reference image and a modification text; a CLIP4Cir Combiner (Baldrati et al., 2022) fuses the two into a
composed embedding that is compared with gallery image embeddings. Training pulls the composed embedding towards the
text embedding of an LLM-written modified caption (`scot_loss`, Eq. 4-9 of the paper).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_scot import SUPPORTED_ENCODERS, ScotConfig, encoder_embed_dim

# Weights a supported checkpoint may lack without harming SCOT (heads SCOT never calls).
_UNUSED_ENCODER_WEIGHTS = ("itm_head.", "logit_scale")


# ----------------------------------------------------------------------------------------------------------------
# Losses: plain functions so that the trainer, the benchmarks and the tests share one definition.
# ----------------------------------------------------------------------------------------------------------------


def _cosine_matrix(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """S(x, y) for every pair: `[len(queries), len(keys)]` cosine similarities."""
    return F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).T


def _margin_masked(similarity: torch.Tensor, margin: float) -> torch.Tensor:
    """S_λ(x, y) = S(x, y) · Θ(S(x, y) > λ), Eq. 6. The step function passes no gradient."""
    return similarity * (similarity > margin).to(similarity.dtype)


def _check_pairs(loss_name: str, composed_embeds: torch.Tensor, modified_caption_embeds: torch.Tensor) -> None:
    """Row i of the composed embeddings is the query of row i of the modified captions."""
    if composed_embeds.shape != modified_caption_embeds.shape:
        raise ValueError(
            f"{loss_name} expects composed_embeds and modified_caption_embeds of the same shape [N, d], got "
            f"{tuple(composed_embeds.shape)} and {tuple(modified_caption_embeds.shape)}."
        )


def scot_loss(
    composed_embeds: torch.Tensor,
    modified_caption_embeds: torch.Tensor,
    caption_embeds: torch.Tensor | None = None,
    alpha_pos: float = 10.0,
    alpha_neg: float = 0.1,
    margin: float = 0.2,
) -> torch.Tensor:
    r"""The SCOT loss, Eq. 4-9 of the paper, implemented exactly as written.

    Args:
        composed_embeds: `[N, d]` composed embeddings V_c (Combiner outputs).
        modified_caption_embeds: `[N, d]` text embeddings T_u of the modified captions; row i is the positive of
            composed row i, every other row a negative.
        caption_embeds: `[M, d]` text embeddings T of the original captions, all used as negatives of every row
            (Eq. 8). `None` drops that term (Eq. 7 only).
        alpha_pos, alpha_neg: α_pos and α_neg of Eq. 9.
        margin: λ of Eq. 6.

    Returns:
        The scalar loss L = α_pos · L_pos + α_neg · L''_neg.

    Where the literal reading is surprising (kept on purpose, so results match the paper's equations):
    - L_pos = -log Σ_i exp S(V_c^i, T_u^i) takes one log over the *sum* across the batch, not a mean of per-row logs,
      and no term is divided by N: the loss grows with the batch size.
    - In Eq. 5/7 the factor (1 - δ_ij) sits *inside* the exponent, so a diagonal pair adds exp(0) = 1 to the sum
      rather than nothing; likewise S_λ zeroes the similarity, not the term, so every negative at or below the
      margin also adds exp(0) = 1. These constants carry no gradient but damp the others.
    - Eq. 8 sums over all (i, j) including i = j: a row's own original caption is one of its negatives (the point of
      the term: move away from what the reference image already shows).
    """
    _check_pairs("scot_loss", composed_embeds, modified_caption_embeds)
    similarity = _cosine_matrix(composed_embeds, modified_caption_embeds)  # S(V_c^i, T_u^j)
    positive_loss = -torch.logsumexp(similarity.diagonal(), dim=0)  # Eq. 4

    off_diagonal = 1.0 - torch.eye(similarity.shape[0], device=similarity.device, dtype=similarity.dtype)
    negative_loss = torch.logsumexp((_margin_masked(similarity, margin) * off_diagonal).flatten(), dim=0)  # Eq. 7
    if caption_embeds is not None:
        caption_similarity = _cosine_matrix(composed_embeds, caption_embeds)  # S(V_c^i, T^j)
        negative_loss = negative_loss + torch.logsumexp(_margin_masked(caption_similarity, margin).flatten(), dim=0)
    return alpha_pos * positive_loss + alpha_neg * negative_loss  # Eq. 9


def _logsumexp_where(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """log Σ exp(values) over the kept entries only; 0 (no term, no gradient) when none is kept."""
    if not keep.any():
        return values.sum() * 0.0
    return torch.logsumexp(values[keep], dim=0)


def scot_split_loss(composed_embeds: torch.Tensor, modified_caption_embeds: torch.Tensor,
                    caption_embeds: torch.Tensor | None = None, alpha_pos: float = 10.0, alpha_neg: float = 0.1,
                    margin: float = 0.2) -> torch.Tensor:
    r"""A *reading* of the SCOT loss, not the paper's equations: Eq. 4-9 with the two surprises of the literal form
    removed (see `scot_loss`). Offered so that the literal form can be compared with what it plausibly means.

    - L_pos = −(1/N) Σ_i S(V_c^i, T_u^i): the mean positive similarity (no log over a batch sum).
    - L'_neg = log Σ_{i≠j, S(V_c^i, T_u^j) > λ} exp S(V_c^i, T_u^j): hard negatives only — the diagonal and the
      negatives at or below the margin contribute nothing (in the literal form each adds exp(0) = 1).
    - L''_neg = L'_neg + log Σ_{i,j: S(V_c^i, T^j) > λ} exp S(V_c^i, T^j) (original captions, when given).
    - L = α_pos · L_pos + α_neg · L''_neg. An empty set of hard negatives contributes 0.
    """
    _check_pairs("scot_split_loss", composed_embeds, modified_caption_embeds)
    similarity = _cosine_matrix(composed_embeds, modified_caption_embeds)
    positive_loss = -similarity.diagonal().mean()
    off_diagonal = ~torch.eye(similarity.shape[0], dtype=torch.bool, device=similarity.device)
    negative_loss = _logsumexp_where(similarity, off_diagonal & (similarity > margin))
    if caption_embeds is not None:
        caption_similarity = _cosine_matrix(composed_embeds, caption_embeds)
        negative_loss = negative_loss + _logsumexp_where(caption_similarity, caption_similarity > margin)
    return alpha_pos * positive_loss + alpha_neg * negative_loss


def infonce_loss(
    composed_embeds: torch.Tensor,
    modified_caption_embeds: torch.Tensor,
    temperature: float = 0.01,
    caption_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """Standard InfoNCE as CLIP4Cir trains its Combiner: cross-entropy over cos / temperature (100 · cos by default),
    row i's positive being modified caption i and the other rows of the batch its negatives. Mean over rows.

    With `caption_embeds` (`[M, d]`), the original captions are extra negatives of every row (Eq. 8's idea in
    InfoNCE form): the logits are `[S(V_c, T_u) | S(V_c, T)] / temperature`, the label still modified caption i."""
    _check_pairs("infonce_loss", composed_embeds, modified_caption_embeds)
    logits = _cosine_matrix(composed_embeds, modified_caption_embeds)
    if caption_embeds is not None:
        logits = torch.cat([logits, _cosine_matrix(composed_embeds, caption_embeds)], dim=1)
    labels = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits / temperature, labels)


def compute_scot_loss(
    config: ScotConfig,
    composed_embeds: torch.Tensor,
    modified_caption_embeds: torch.Tensor,
    caption_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss `config.loss_type` selects, with the config's settings."""
    if config.loss_type == "infonce":
        return infonce_loss(composed_embeds, modified_caption_embeds, temperature=config.infonce_temperature)
    if config.loss_type == "infonce_captions":
        return infonce_loss(composed_embeds, modified_caption_embeds, config.infonce_temperature, caption_embeds)
    scot_loss_function = scot_split_loss if config.loss_type == "scot_split" else scot_loss
    return scot_loss_function(
        composed_embeds,
        modified_caption_embeds,
        caption_embeds,
        alpha_pos=config.alpha_pos,
        alpha_neg=config.alpha_neg,
        margin=config.margin,
    )


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ScotOutput(ModelOutput):
    r"""
    Output of [`ScotModel.forward`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            The `config.loss_type` loss, returned when `modified_caption_embeds` is given.
        composed_embeds (`torch.FloatTensor` of shape `(batch_size, embed_dim)`):
            L2-normalised composed query embeddings V_c, to compare with gallery image embeddings.
        image_embeds (`torch.FloatTensor` of shape `(batch_size, embed_dim)`):
            L2-normalised reference image embeddings V.
        text_embeds (`torch.FloatTensor` of shape `(batch_size, embed_dim)`):
            L2-normalised modification text embeddings T_m.
        text_weight (`torch.FloatTensor` of shape `(batch_size, 1)`):
            The Combiner's dynamic scalar λ: the weight of the text embedding in the residual mix (the image gets
            1 - λ).
    """

    loss: torch.FloatTensor | None = None
    composed_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    text_weight: torch.FloatTensor | None = None


class Combiner(nn.Module):
    """CLIP4Cir's Combiner (Baldrati et al., 2022), as SCOT uses it for f_c.

    Both inputs go through their own Linear(d -> P) + ReLU + Dropout; the concatenation (2P) feeds a fusion
    MLP (2P -> H -> d) and a head giving the dynamic scalar λ = sigmoid(MLP(2P -> H -> 1)). The output is
    normalize(fusion + λ · text + (1 - λ) · image): a learned residual around a learned convex mix of the inputs.
    """

    def __init__(self, embed_dim: int, projection_dim: int, hidden_dim: int, dropout: float = 0.5):
        super().__init__()
        self.text_projection = nn.Sequential(nn.Linear(embed_dim, projection_dim), nn.ReLU(), nn.Dropout(dropout))
        self.image_projection = nn.Sequential(nn.Linear(embed_dim, projection_dim), nn.ReLU(), nn.Dropout(dropout))
        self.fusion = nn.Sequential(
            nn.Linear(2 * projection_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden_dim, embed_dim)
        )
        self.text_weight_head = nn.Sequential(
            nn.Linear(2 * projection_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden_dim, 1)
        )

    def forward(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the L2-normalised composed embeddings `[B, d]` and λ `[B, 1]`."""
        joint = torch.cat([self.text_projection(text_embeds), self.image_projection(image_embeds)], dim=-1)
        text_weight = torch.sigmoid(self.text_weight_head(joint))
        composed = self.fusion(joint) + text_weight * text_embeds + (1 - text_weight) * image_embeds
        return F.normalize(composed, dim=-1), text_weight


def _encoder_class(encoder_config: PreTrainedConfig) -> type[PreTrainedModel]:
    import transformers

    encoder_embed_dim(encoder_config)  # raises a clear error for an unsupported encoder
    return getattr(transformers, SUPPORTED_ENCODERS[encoder_config.model_type])


def _check_same_batch(what: str, first: torch.Tensor, second: torch.Tensor, names: tuple[str, str]) -> None:
    if first.shape[0] != second.shape[0]:
        raise ValueError(
            f"{what} needs one {names[0]} per {names[1]}: got {first.shape[0]} {names[0]}(s) and "
            f"{second.shape[0]} {names[1]}(s). Pass batches of the same size."
        )


class ScotPreTrainedModel(PreTrainedModel):
    config: ScotConfig
    base_model_prefix = "scot"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = False
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module):
        # The Combiner keeps PyTorch's default Linear init, as in CLIP4Cir (the encoder inits itself).
        if isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1 / math.sqrt(module.in_features)
                init.uniform_(module.bias, -bound, bound)


class ScotModel(ScotPreTrainedModel):
    r"""
    A frozen vision-language encoder plus a trainable Combiner.

    Build one around a pretrained encoder with [`ScotModel.from_backbone`]; load a trained one with
    `AutoModel.from_pretrained(folder)`. All embeddings it returns are L2-normalised `[batch, config.embed_dim]`.

    Example:

    ```python
    >>> import modeling_scot  # registers the Auto classes
    >>> from transformers import AutoModel, AutoProcessor
    >>> model = AutoModel.from_pretrained("scot-demo")
    >>> processor = AutoProcessor.from_pretrained("scot-demo")
    >>> inputs = processor(images=[reference_image], text=["make it blue"], return_tensors="pt")
    >>> query = model(**inputs).composed_embeds  # compare with model.get_image_features(...) of the gallery
    ```
    """

    def __init__(self, config: ScotConfig, encoder: PreTrainedModel | None = None):
        r"""
        encoder (`PreTrainedModel`, *optional*):
            An already-built encoder (for example a pretrained one) matching `config.encoder_config`; built from
            the config (random weights) when not given.
        """
        super().__init__(config)
        if encoder is None:
            encoder = _encoder_class(config.encoder_config)._from_config(config.encoder_config)
        elif encoder.config.model_type != config.encoder_config.model_type:
            raise ValueError(
                f"The encoder is a {encoder.config.model_type!r} model but config.encoder_config is "
                f"{config.encoder_config.model_type!r}."
            )
        self.encoder = encoder
        # keep one config object, so a change through either is seen by both
        self.encoder.config = self.config.encoder_config = encoder.config
        self.combiner = Combiner(
            config.embed_dim, config.combiner_projection_dim, config.combiner_hidden_dim, config.combiner_dropout
        )
        self.post_init()
        if config.freeze_encoder:
            self.freeze_encoder()

    # -- freezing ---------------------------------------------------------------------------------------------------

    def freeze_encoder(self) -> None:
        """No gradients and eval mode (no dropout) for the encoder: only the Combiner trains."""
        self.encoder.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.config.freeze_encoder:
            self.encoder.eval()  # a frozen encoder must give the embeddings it gives at inference
        return self

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        # transformers 5 re-creates parameters as trainable while loading: freeze again
        if model.config.freeze_encoder:
            model.freeze_encoder()
        return loaded

    @classmethod
    def from_backbone(
        cls, backbone: "str | PreTrainedModel", *, encoder_kwargs: dict | None = None, **config_overrides
    ) -> "ScotModel":
        r"""
        Build a SCOT model around a pretrained encoder, with a new Combiner and the encoder frozen.

        Args:
            backbone (`str`, `os.PathLike` or `PreTrainedModel`):
                A folder or hub id holding a `CLIPModel`, a BLIP-2 retrieval checkpoint (`Blip2ForImageTextRetrieval`,
                whose weights also serve the `Blip2{Vision,Text}ModelWithProjection` pair) or a
                `VisionTextDualEncoderModel`; or such a model already loaded.
            encoder_kwargs (`dict`, *optional*):
                Passed to the encoder's `from_pretrained` (`dtype`, `revision`, `attn_implementation`, ...).
            config_overrides:
                [`ScotConfig`] fields (Combiner sizes, pooling, loss settings).
        """
        if isinstance(backbone, PreTrainedModel):
            encoder = backbone
            _encoder_class(encoder.config)
        else:
            encoder_config = AutoConfig.from_pretrained(backbone)
            if encoder_config.model_type == ScotConfig.model_type:
                raise ValueError(
                    f"{backbone!r} already holds a SCOT model: load it with ScotModel.from_pretrained({backbone!r}); "
                    "from_backbone expects a CLIP, BLIP-2 or VisionTextDualEncoder checkpoint."
                )
            encoder, loading_info = _encoder_class(encoder_config).from_pretrained(
                backbone, output_loading_info=True, **(encoder_kwargs or {})
            )
            missing = [k for k in loading_info["missing_keys"] if not k.startswith(_UNUSED_ENCODER_WEIGHTS)]
            if missing:
                raise ValueError(
                    f"{backbone!r} lacks weights SCOT needs for its {type(encoder).__name__} encoder "
                    f"(for example {sorted(missing)[:5]}). BLIP-2 needs a retrieval checkpoint with "
                    "vision_projection and text_projection (e.g. Salesforce/blip2-itm-vit-g)."
                )
        # A copy: building a config resets its sub-configs' attention implementation, and the loaded encoder must
        # keep its own (the model re-attaches encoder.config itself in __init__).
        config = ScotConfig(encoder_config=encoder.config.to_dict(), **config_overrides)
        return cls(config, encoder=encoder).eval()  # like from_pretrained; Trainer switches to train mode

    # -- embeddings -------------------------------------------------------------------------------------------------

    @property
    def _encoder_type(self) -> str:
        return self.config.encoder_config.model_type

    def get_image_features(self, pixel_values: torch.Tensor, *, normalize: bool = True, **kwargs) -> torch.Tensor:
        r"""L2-normalised image embeddings V = f_θ(image), `[batch, embed_dim]`.

        With `normalize=False`, the projected features before that last normalisation (CLIP and dual encoders: the
        visual projection's output; BLIP-2: the mean of the per-query ITC embeddings): what CLIP4Cir's
        `element_wise_sum` baseline adds. Everything else in the package uses the normalised default."""
        if pixel_values is None or pixel_values.ndim != 4:
            raise ValueError(
                "get_image_features expects pixel_values of shape [batch, channels, height, width] (from "
                f"ScotProcessor(images=...)), got {None if pixel_values is None else tuple(pixel_values.shape)}."
            )
        if self._encoder_type == "blip-2":
            image_embeds = self._blip2_image_features(pixel_values, **kwargs)
        else:
            image_embeds = self.encoder.get_image_features(pixel_values=pixel_values, **kwargs).pooler_output
        return F.normalize(image_embeds, dim=-1) if normalize else image_embeds

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        *,
        normalize: bool = True,
        **kwargs,
    ) -> torch.Tensor:
        r"""L2-normalised text embeddings T = f_φ(text), `[batch, embed_dim]`; with `normalize=False`, the text
        projection's output before that normalisation (see `get_image_features`)."""
        if input_ids is None or input_ids.ndim != 2 or input_ids.shape[0] == 0:
            raise ValueError(
                "get_text_features expects input_ids of shape [batch >= 1, sequence] (from ScotProcessor(text=...)), "
                f"got {None if input_ids is None else tuple(input_ids.shape)}."
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if self._encoder_type == "blip-2":
            text_embeds = self._blip2_text_features(input_ids, attention_mask)
        elif self._encoder_type == "vision-text-dual-encoder":
            text_embeds = self._dual_encoder_text_features(input_ids, attention_mask, token_type_ids, **kwargs)
        else:
            text_embeds = self.encoder.get_text_features(
                input_ids=input_ids, attention_mask=attention_mask, **kwargs
            ).pooler_output
        return F.normalize(text_embeds, dim=-1) if normalize else text_embeds

    def _blip2_image_features(self, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
        # The image side of Blip2ForImageTextRetrieval's contrastive (ITC) path, pooled over the query tokens.
        blip2 = self.encoder
        patch_embeds = blip2.vision_model(pixel_values=pixel_values, **kwargs).last_hidden_state
        patch_mask = torch.ones(patch_embeds.shape[:-1], dtype=torch.long, device=patch_embeds.device)
        query_tokens = blip2.query_tokens.expand(patch_embeds.shape[0], -1, -1)
        query_states = blip2.qformer(
            query_embeds=query_tokens, encoder_hidden_states=patch_embeds, encoder_attention_mask=patch_mask
        ).last_hidden_state
        projection = blip2.vision_projection
        query_embeds = F.normalize(projection(query_states.to(projection.weight.dtype)), dim=-1)
        if self.config.blip2_query_pooling == "first":
            return query_embeds[:, 0]
        return query_embeds.mean(dim=1)

    def _blip2_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        blip2 = self.encoder
        image_token_index = blip2.config.image_token_index
        num_query_tokens = blip2.config.num_query_tokens
        # Blip2Processor may prepend the query placeholders; the text-only ITC path drops them as BLIP-2 does
        if image_token_index is not None and input_ids.shape[1] > num_query_tokens:
            if bool((input_ids[:, :num_query_tokens] == image_token_index).all()):
                input_ids = input_ids[:, num_query_tokens:]
                attention_mask = attention_mask[:, num_query_tokens:]
        token_embeds = blip2.embeddings(input_ids=input_ids)
        text_states = blip2.qformer(query_embeds=token_embeds, query_length=0, attention_mask=attention_mask)
        cls_state = text_states.last_hidden_state[:, 0, :].to(blip2.text_projection.weight.dtype)
        return blip2.text_projection(cls_state)

    def _dual_encoder_text_features(self, input_ids, attention_mask, token_type_ids, **kwargs) -> torch.Tensor:
        dual_encoder = self.encoder
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        if self.config.text_pooling == "pooler":
            return dual_encoder.get_text_features(input_ids=input_ids, attention_mask=attention_mask,
                                                  **kwargs).pooler_output
        hidden = dual_encoder.text_model(input_ids=input_ids, attention_mask=attention_mask,
                                         **kwargs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        mean_pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return dual_encoder.text_projection(mean_pooled)

    # -- composition --------------------------------------------------------------------------------------------------

    def _combine(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for name, embeds in (("image_embeds", image_embeds), ("text_embeds", text_embeds)):
            if embeds.ndim != 2 or embeds.shape[-1] != self.config.embed_dim:
                raise ValueError(
                    f"compose expects {name} of shape [batch, {self.config.embed_dim}] (embed_dim), "
                    f"got {tuple(embeds.shape)}."
                )
        _check_same_batch("compose", image_embeds, text_embeds, ("image embedding", "text embedding"))
        dtype = self.combiner.fusion[0].weight.dtype
        return self.combiner(image_embeds.to(dtype), text_embeds.to(dtype))

    def compose(
        self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, return_text_weight: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        r"""V_c = f_c(V, T_m): L2-normalised composed embeddings `[batch, embed_dim]` from reference image embeddings
        and modification text embeddings (both as returned by `get_image_features` / `get_text_features`).
        With `return_text_weight=True`, also the Combiner's weight λ `[batch, 1]` on the text embedding (1 − λ on
        the image), which search front ends show to explain a result."""
        composed_embeds, text_weight = self._combine(image_embeds, text_embeds)
        return (composed_embeds, text_weight) if return_text_weight else composed_embeds

    def _query_inputs(self, image_embeds, pixel_values, text_embeds, input_ids, attention_mask, token_type_ids,
                      **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference image and modification text embeddings of a query: given, or encoded from pixels / tokens."""
        if image_embeds is None:
            if pixel_values is None:
                raise ValueError("A composed query needs the reference images: pass pixel_values or image_embeds.")
            image_embeds = self.get_image_features(pixel_values=pixel_values, **kwargs)
        if text_embeds is None:
            if input_ids is None:
                raise ValueError("A composed query needs the modification texts: pass input_ids or text_embeds.")
            text_embeds = self.get_text_features(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
        return image_embeds, text_embeds

    # The Combiner composes *embeddings*: a precomputed (cached) text embedding of the modification is as good an
    # input as its tokens. A composer that reads the tokens themselves (pseudo-word tokens injected into the text
    # encoder) sets this to False, and callers then pass `input_ids` instead of cached `text_embeds`.
    composer_accepts_text_embeds = True

    def get_composed_features(
        self,
        image_embeds: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        pixel_values: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
        text_embeds: torch.Tensor | None = None, return_text_weight: bool = False, **kwargs,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        r"""The composed query V_c for reference images and modification texts: the one entry point evaluation,
        search and training use, whatever the composer.

        Args:
            image_embeds (`torch.Tensor` of shape `(batch_size, embed_dim)`, *optional*):
                Reference image embeddings from `get_image_features` (e.g. a cached gallery); else `pixel_values`.
            input_ids, attention_mask, token_type_ids:
                The modification texts as `ScotProcessor` tokenises them.
            pixel_values (`torch.Tensor`, *optional*): the reference images, when `image_embeds` is not given.
            text_embeds (`torch.Tensor` of shape `(batch_size, embed_dim)`, *optional*):
                Precomputed modification text embeddings, accepted when `composer_accepts_text_embeds` is True (the
                Combiner); used instead of `input_ids`.
            return_text_weight (`bool`): also return the composer's weight on the text, λ `[batch, 1]` (None for
                a composer without one).

        Returns:
            L2-normalised `[batch, embed_dim]` composed embeddings (and λ when asked).
        """
        if text_embeds is not None and not self.composer_accepts_text_embeds:
            raise ValueError(f"{type(self).__name__}'s composer reads the modification's tokens: pass input_ids and "
                             "attention_mask, not text_embeds.")
        image_embeds, text_embeds = self._query_inputs(
            image_embeds, pixel_values, text_embeds, input_ids, attention_mask, token_type_ids, **kwargs
        )
        _check_same_batch("get_composed_features", image_embeds, text_embeds, ("reference image", "modification text"))
        composed_embeds, text_weight = self._combine(image_embeds, text_embeds)
        return (composed_embeds, text_weight) if return_text_weight else composed_embeds

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        text_embeds: torch.Tensor | None = None,
        modified_caption_embeds: torch.Tensor | None = None,
        caption_embeds: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ScotOutput | tuple:
        r"""
        Compose reference images with modification texts.

        Args:
            pixel_values, input_ids, attention_mask, token_type_ids:
                The reference images and modification texts, as `ScotProcessor` returns them.
            image_embeds, text_embeds (`torch.Tensor` of shape `(batch_size, embed_dim)`, *optional*):
                Precomputed normalised embeddings, used instead of `pixel_values` / `input_ids` (cached training).
            modified_caption_embeds (`torch.Tensor` of shape `(batch_size, embed_dim)`, *optional*):
                Text embeddings of the modified captions (the targets); when given, the loss is returned.
            caption_embeds (`torch.Tensor` of shape `(batch_size, embed_dim)`, *optional*):
                Text embeddings of the original captions: extra negatives of the SCOT loss (Eq. 8).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        image_embeds, text_embeds = self._query_inputs(
            image_embeds, pixel_values, text_embeds, input_ids, attention_mask, token_type_ids, **kwargs
        )
        composed_embeds, text_weight = self.get_composed_features(
            image_embeds, text_embeds=text_embeds, return_text_weight=True
        )

        loss = None
        if modified_caption_embeds is not None:
            loss = compute_scot_loss(self.config, composed_embeds, modified_caption_embeds, caption_embeds)

        output = ScotOutput(loss=loss, composed_embeds=composed_embeds, image_embeds=image_embeds,
                            text_embeds=text_embeds, text_weight=text_weight)
        return output if return_dict else output.to_tuple()


__all__ = [
    "Combiner",
    "ScotModel",
    "ScotOutput",
    "ScotPreTrainedModel",
    "compute_scot_loss",
    "infonce_loss",
    "scot_loss",
    "scot_split_loss",
]
