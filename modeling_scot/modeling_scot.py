"""PyTorch SCOT model.

SCOT: Self-Supervised Contrastive Pretraining for Zero-Shot Compositional Retrieval
(Jawade et al.). A frozen vision-language encoder (CLIP, BLIP-2 or any `VisionTextDualEncoderModel`)
embeds a reference image and a modification text; a CLIP4Cir Combiner (Baldrati et al., 2022) fuses the two into a
composed embedding that is compared with gallery image embeddings. Training pulls the composed embedding towards the
text embedding of an LLM-written modified caption (`scot_loss`, Eq. 4-9 of the paper).

`ScotConfig.composer="pseudo_word"` swaps the Combiner for Map-to-Compose's composer (modeling_pseudo_word.py): the
reference image becomes K pseudo-word tokens that the text encoder reads in "a photo of $ that {modification}".
Both go through the one entry point, `ScotModel.get_composed_features`.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoTokenizer, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_scot import (
    GROUNDING_GATE_STATISTICS,
    SUPPORTED_ENCODERS,
    ScotConfig,
    encoder_embed_dim,
    encoder_image_token_dim,
    encoder_text_positions,
    encoder_token_embed_dim,
)
from .modeling_pseudo_word import (
    DEFAULT_LORA_TARGET_MODULES,
    PseudoWordMapper,
    add_lora_adapters,
    build_pseudo_word_prompts,
    merge_lora_adapters,
    modification_token_ids,
    pseudo_tokens_spliced,
    pseudo_word_composing_loss,
    pseudo_word_mapping_loss,
    tokenize_pseudo_word_prompts,
)

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


def image_floor_loss(composed_embeds: torch.Tensor, reference_embeds: torch.Tensor, target_image_embeds: torch.Tensor,
                     temperature: float = 0.05) -> torch.Tensor:
    r"""Ours, not the paper's: a floor under the composed query, "never retrieve the target image worse than the
    reference image alone does", as a per-row hinge on the two retrieval losses over the batch's target images.

    With C the composed, V the reference and R the target image embeddings (row i of each is one triplet; all
    normalised) and τ the temperature:

        ℓ^C_i = −log softmax_j(S(C_i, R_j) / τ)_i,   ℓ^V_i = −log softmax_j(S(V_i, R_j) / τ)_i,
        L_floor = (1/N) Σ_i max(0, ℓ^C_i − ℓ^V_i).

    A row costs nothing once the composed query ranks its target at least as well as the reference does, so the
    term binds only where the reference is already the better query — typically where the text names a change the
    encoder does not see and the target (retrieved by caption *and* reference) is the reference's lookalike — and
    leaves the text free to move the query where it helps. ℓ^V is a constant (the encoder is frozen): no gradient.
    """
    _check_pairs("image_floor_loss", composed_embeds, target_image_embeds)
    _check_pairs("image_floor_loss", reference_embeds, target_image_embeds)
    labels = torch.arange(composed_embeds.shape[0], device=composed_embeds.device)
    composed_loss = F.cross_entropy(_cosine_matrix(composed_embeds, target_image_embeds) / temperature, labels,
                                    reduction="none")
    with torch.no_grad():
        reference_loss = F.cross_entropy(_cosine_matrix(reference_embeds, target_image_embeds) / temperature, labels,
                                         reduction="none")
    return F.relu(composed_loss - reference_loss).mean()


def compute_scot_loss(
    config: ScotConfig,
    composed_embeds: torch.Tensor,
    modified_caption_embeds: torch.Tensor,
    caption_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """The composing loss of the config's composer, with the config's settings: for the Combiner the one
    `config.loss_type` selects; for the pseudo-word composer stage 2's `pseudo_word_composing_loss`."""
    if config.composer == "pseudo_word":
        return pseudo_word_composing_loss(composed_embeds, modified_caption_embeds, caption_embeds,
                                          temperature=config.composing_temperature)
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


def compute_pseudo_word_mapping_loss(config: ScotConfig, prompt_embeds: torch.Tensor, image_embeds: torch.Tensor,
                                     caption_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Stage 1's loss of a pseudo-word model (`pseudo_word_mapping_loss`) with the config's settings."""
    return pseudo_word_mapping_loss(prompt_embeds, image_embeds, caption_embeds,
                                    temperature=config.pseudo_word_temperature,
                                    soft_alignment_temperature=config.soft_alignment_temperature,
                                    soft_alignment_weight=config.soft_alignment_weight)


# ----------------------------------------------------------------------------------------------------------------
# The grounding gate (ours, not the paper's): at retrieval, fall back to the reference image where the text does not
# pick out one of its look-alikes in the gallery.
# ----------------------------------------------------------------------------------------------------------------

# A gallery image this close to the reference is the reference itself (or a copy): never one of its look-alikes.
SAME_IMAGE_COSINE = 0.9999


@dataclass
class GalleryStatistics:
    """The mean `[d]` and (population) covariance `[d, d]` of a gallery's normalised image embeddings: enough to
    z-score any text's cosines over the whole gallery without a pass over it (mean t·μ, variance tᵀΣt)."""

    mean: torch.Tensor
    covariance: torch.Tensor

    @classmethod
    def from_embeds(cls, gallery_embeds: torch.Tensor, block_size: int = 65536) -> "GalleryStatistics":
        if gallery_embeds.ndim != 2 or len(gallery_embeds) < 2:
            raise ValueError(f"GalleryStatistics needs gallery embeddings [images >= 2, d], got "
                             f"{tuple(gallery_embeds.shape)}.")
        mean = gallery_embeds.float().mean(dim=0)
        covariance = torch.zeros(len(mean), len(mean))
        for start in range(0, len(gallery_embeds), block_size):  # blocks: a large gallery is not copied in float32
            centred = gallery_embeds[start:start + block_size].float() - mean
            covariance += centred.T @ centred
        return cls(mean, covariance / len(gallery_embeds))

    def text_zscores(self, text_embeds: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """`[B, k]`: cos(text_b, image_bk), z-scored over the gallery's distribution of cos(text_b, ·), for
        normalised `text_embeds` `[B, d]` and `image_embeds` `[B, k, d]`."""
        texts = text_embeds.float()
        cosines = torch.einsum("bd,bkd->bk", texts, image_embeds.float())
        spread = torch.einsum("bd,de,be->b", texts, self.covariance.to(texts.device), texts).clamp_min(1e-12).sqrt()
        return (cosines - (texts @ self.mean.to(texts.device))[:, None]) / spread[:, None]


def nearest_gallery_images(reference_embeds: torch.Tensor, gallery_embeds: torch.Tensor, k: int,
                           block_size: int = 4096) -> torch.Tensor:
    """`[B, k, d]`: each reference's k nearest gallery images (cosine, nearest first), its own copies (cosine ≥
    `SAME_IMAGE_COSINE`) left out. All normalised; the gallery must hold more than k other images."""
    if len(gallery_embeds) <= k:
        raise ValueError(f"The grounding gate looks at {k} gallery neighbours: the gallery has {len(gallery_embeds)}.")
    gallery = gallery_embeds.float()
    neighbours = []
    for start in range(0, len(reference_embeds), block_size):
        scores = reference_embeds[start:start + block_size].float().to(gallery.device) @ gallery.T
        positions = scores.masked_fill(scores >= SAME_IMAGE_COSINE, float("-inf")).topk(k, dim=1).indices
        neighbours.append(gallery[positions])
    return torch.cat(neighbours) if neighbours else gallery.new_zeros(0, k, gallery.shape[-1])


def text_grounding(text_embeds: torch.Tensor, neighbour_embeds: torch.Tensor,
                   gallery_statistics: GalleryStatistics, reference_embeds: torch.Tensor | None = None,
                   statistic: str = "lookalike") -> torch.Tensor:
    """`[B]`: how well each modification text picks out one of its reference's look-alikes, from the z-scored
    cosines (over the gallery, `GalleryStatistics.text_zscores`) between the text embedding `[B, d]` and the
    reference's nearest gallery images `[B, k, d]` (`nearest_gallery_images`); all normalised.

    `statistic` (`ScotConfig.grounding_gate_statistic`): `"lookalike"`, the largest z-score — low where the text
    names something the encoder does not see among those images; `"change"`, the largest z-score minus the
    reference's own (`reference_embeds` `[B, d]`) — low also where the text fits the reference as well as any
    look-alike, as when the encoder does not see the change it names, however well it fits the picture."""
    zscores = gallery_statistics.text_zscores(text_embeds, neighbour_embeds)
    if statistic == "lookalike":
        return zscores.max(dim=1).values
    if statistic not in GROUNDING_GATE_STATISTICS:
        raise ValueError(f"The grounding statistic must be one of {GROUNDING_GATE_STATISTICS}, got {statistic!r}.")
    if reference_embeds is None or reference_embeds.shape != text_embeds.shape:
        raise ValueError(f"The 'change' grounding statistic needs the reference image embeddings [batch, embed_dim] = "
                         f"{list(text_embeds.shape)}, got "
                         f"{None if reference_embeds is None else list(reference_embeds.shape)}.")
    own = gallery_statistics.text_zscores(text_embeds, reference_embeds[:, None, :])
    return (zscores - own).max(dim=1).values


def text_familiarity(text_embeds: torch.Tensor, bank_embeds: torch.Tensor, k: int,
                     block_size: int = 4096) -> torch.Tensor:
    """`[B]`: the cosine between each normalised modification embedding `[B, d]` and its k-th nearest text of a
    bank of (normalised) training modification embeddings `[N, d]`: high for a text like those the composer was
    trained on, low for one unlike all but a few of them (nearest-neighbour novelty, as in Sun et al., 2022)."""
    if not 0 < k <= len(bank_embeds):
        raise ValueError(f"The novelty gate looks at the {k}-th nearest training text: the bank has "
                         f"{len(bank_embeds)}.")
    bank = bank_embeds.float()
    values = [(text_embeds[start:start + block_size].float().to(bank.device) @ bank.T).topk(k, dim=1).values[:, -1]
              for start in range(0, len(text_embeds), block_size)]
    return torch.cat(values) if values else bank.new_zeros(0)


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
            L2-normalised modification text embeddings T_m (None for the pseudo-word composer, which never embeds
            the modification on its own).
        text_weight (`torch.FloatTensor` of shape `(batch_size, 1)`):
            The Combiner's dynamic scalar λ: the weight of the text embedding in the residual mix (the image gets
            1 - λ). None for the pseudo-word composer.
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

    With `image_anchor_weight` β > 0 (`ScotConfig.image_anchor_weight`, ours, not the paper's), the output c is
    anchored to the reference image: normalize(c + β · normalize(image)). Cosines are linear in the query, so a
    gallery item then scores cos(c, g) + β · cos(image, g), up to a positive factor: the composed ranking fused with
    the image-only one, which the Combiner cannot learn away (c has unit norm, whatever the fusion does).
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

    def forward(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor,
                image_anchor_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the L2-normalised composed embeddings `[B, d]` and λ `[B, 1]`."""
        joint = torch.cat([self.text_projection(text_embeds), self.image_projection(image_embeds)], dim=-1)
        text_weight = torch.sigmoid(self.text_weight_head(joint))
        composed = self.fusion(joint) + text_weight * text_embeds + (1 - text_weight) * image_embeds
        composed = F.normalize(composed, dim=-1)
        if image_anchor_weight:
            composed = F.normalize(composed + image_anchor_weight * F.normalize(image_embeds, dim=-1), dim=-1)
        return composed, text_weight


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
        # The Combiner and the mapping network keep PyTorch's default inits, as in CLIP4Cir (the encoder inits
        # itself); the pseudo-word queries start as small random token embeddings.
        if isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1 / math.sqrt(module.in_features)
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.MultiheadAttention):
            init.xavier_uniform_(module.in_proj_weight)
            init.zeros_(module.in_proj_bias)
        elif isinstance(module, PseudoWordMapper):
            init.normal_(module.queries, std=0.02)


class ScotModel(ScotPreTrainedModel):
    r"""
    A frozen vision-language encoder plus a trainable composer: SCOT's Combiner, or (`config.composer="pseudo_word"`)
    Map-to-Compose's pseudo-word mapping network, whose stage 2 tunes the text encoder with LoRA adapters.

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
        if config.composer == "pseudo_word":
            self.pseudo_word_mapper = PseudoWordMapper(
                config.embed_dim, encoder_image_token_dim(config.encoder_config),
                encoder_token_embed_dim(config.encoder_config), config.num_pseudo_tokens,
                depth=config.pseudo_word_mapping_depth, num_heads=config.pseudo_word_mapping_heads,
                dropout=config.pseudo_word_mapping_dropout,
            )
        else:
            self.combiner = Combiner(
                config.embed_dim, config.combiner_projection_dim, config.combiner_hidden_dim, config.combiner_dropout
            )
        # The Combiner composes *embeddings*: a cached text embedding of the modification is as good an input as its
        # tokens. The pseudo-word composer reads the tokens themselves (they sit in its prompt), so callers holding
        # cached text embeddings must pass `input_ids` instead. An attribute, not a switch on the composer's name.
        self.composer_accepts_text_embeds = config.composer == "combiner"
        if config.novelty_gate_bank_size:  # the novelty gate's training modifications, saved with the weights
            self.register_buffer("novelty_gate_text_embeds", torch.zeros(config.novelty_gate_bank_size,
                                                                         config.embed_dim))
        self.post_init()
        if config.pseudo_word_lora_state == "active":  # a stage-2 checkpoint: re-add the adapters its weights fill
            self._add_lora_adapters()
        if config.freeze_encoder:
            self.freeze_encoder()

    # -- freezing ---------------------------------------------------------------------------------------------------

    def freeze_encoder(self) -> None:
        """No gradients and eval mode (no dropout) for the encoder: only the composer trains (the Combiner, the
        pseudo-word mapping network, or in stage 2 the LoRA adapters inside the text encoder)."""
        self.encoder.requires_grad_(False)
        self.encoder.eval()
        if self.config.pseudo_word_lora_state == "active":
            for name, parameter in self.encoder.named_parameters():
                if ".lora_" in name:
                    parameter.requires_grad_(True)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.config.freeze_encoder:
            self.encoder.eval()  # a frozen encoder must give the embeddings it gives at inference
            if self.config.pseudo_word_lora_state == "active":  # except the LoRA adapters being trained in it
                for name, module in self.encoder.named_modules():
                    if name.endswith(".lora_dropout"):
                        module.train(mode)
        return self

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        # transformers 5 re-creates parameters as trainable while loading: freeze again
        if model.config.freeze_encoder:
            model.freeze_encoder()
        if model.config.pseudo_word_lora_state == "active":  # stage 2 trains the adapters, not the mapping
            model.pseudo_word_mapper.requires_grad_(False)
        return loaded

    @classmethod
    def from_backbone(
        cls, backbone: "str | PreTrainedModel", *, encoder_kwargs: dict | None = None, tokenizer=None,
        **config_overrides,
    ) -> "ScotModel":
        r"""
        Build a SCOT model around a pretrained encoder, with a new composer (the Combiner, or with
        `composer="pseudo_word"` Map-to-Compose's mapping network) and the encoder frozen.

        Args:
            backbone (`str`, `os.PathLike` or `PreTrainedModel`):
                A folder or hub id holding a `CLIPModel`, a BLIP-2 retrieval checkpoint (`Blip2ForImageTextRetrieval`,
                whose weights also serve the `Blip2{Vision,Text}ModelWithProjection` pair) or a
                `VisionTextDualEncoderModel`; or such a model already loaded.
            encoder_kwargs (`dict`, *optional*):
                Passed to the encoder's `from_pretrained` (`dtype`, `revision`, `attn_implementation`, ...).
            tokenizer (*optional*):
                The backbone's tokenizer, for a pseudo-word model (its prompts are stored as token ids); loaded from
                `backbone` when that is a folder or hub id.
            config_overrides:
                [`ScotConfig`] fields (composer, Combiner sizes, pooling, loss and pseudo-word settings).
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
        model = cls(config, encoder=encoder).eval()  # like from_pretrained; Trainer switches to train mode
        if config.composer == "pseudo_word" and config.pseudo_word_prompt_token_ids is None:
            if tokenizer is None and isinstance(backbone, PreTrainedModel):
                raise ValueError("A pseudo-word model stores its prompts as token ids: pass tokenizer= (the "
                                 "backbone's tokenizer) with an already-loaded backbone.")
            model.set_prompt_tokenizer(tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(backbone))
        return model

    def set_prompt_tokenizer(self, tokenizer) -> None:
        """Tokenise the pseudo-word prompts (`config.pseudo_word_prompt`, `config.pseudo_word_image_prompt`) with the
        backbone's tokenizer into `config.pseudo_word_prompt_token_ids`; call it again after changing a prompt."""
        self._require_pseudo_word("set_prompt_tokenizer")
        self.config.pseudo_word_prompt_token_ids = tokenize_pseudo_word_prompts(
            tokenizer, self.config.pseudo_word_prompt, self.config.pseudo_word_image_prompt)

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
        image_embeds, _ = self._image_features_and_tokens(pixel_values, **kwargs)
        return F.normalize(image_embeds, dim=-1) if normalize else image_embeds

    def _image_features_and_tokens(self, pixel_values: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Unnormalised image embeddings and, from the same pass, the token states the pseudo words attend to."""
        if self._encoder_type == "blip-2":
            return self._blip2_image_features(pixel_values, **kwargs)
        output = self.encoder.get_image_features(pixel_values=pixel_values, **kwargs)
        return output.pooler_output, output.last_hidden_state

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

    def _blip2_image_features(self, pixel_values: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        # The image side of Blip2ForImageTextRetrieval's contrastive (ITC) path, pooled over the query tokens; also
        # the Q-Former's query states (the pseudo words' memory).
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
            return query_embeds[:, 0], query_states
        return query_embeds.mean(dim=1), query_states

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
        if self.config.composer != "combiner":
            raise ValueError(f"This model composes with {self.config.composer!r}, not the Combiner: "
                             "use get_composed_features(...) with the modification's tokens.")
        for name, embeds in (("image_embeds", image_embeds), ("text_embeds", text_embeds)):
            if embeds.ndim != 2 or embeds.shape[-1] != self.config.embed_dim:
                raise ValueError(
                    f"compose expects {name} of shape [batch, {self.config.embed_dim}] (embed_dim), "
                    f"got {tuple(embeds.shape)}."
                )
        _check_same_batch("compose", image_embeds, text_embeds, ("image embedding", "text embedding"))
        dtype = self.combiner.fusion[0].weight.dtype
        return self.combiner(image_embeds.to(dtype), text_embeds.to(dtype), self.config.image_anchor_weight)

    def compose(
        self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, return_text_weight: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        r"""V_c = f_c(V, T_m): L2-normalised composed embeddings `[batch, embed_dim]` from reference image embeddings
        and modification text embeddings (both as returned by `get_image_features` / `get_text_features`).
        With `return_text_weight=True`, also the Combiner's weight λ `[batch, 1]` on the text embedding (1 − λ on
        the image), which search front ends show to explain a result. The Combiner's own call: a pseudo-word model
        refuses it (it composes from tokens, through `get_composed_features`)."""
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

    @property
    def composer_image_inputs(self) -> tuple[str, ...]:
        """The image-side keyword arguments of `get_composed_features` this model's composer reads: what a cache of
        reference images must hold (`get_composer_image_features` returns exactly these). The Combiner reads the
        pooled embedding only; the pseudo-word composer also the image encoder's token states."""
        if self.config.composer == "pseudo_word":
            return ("image_embeds", "image_token_embeds")
        return ("image_embeds",)

    def get_composer_image_features(self, pixel_values: torch.Tensor, **kwargs) -> dict[str, torch.Tensor]:
        r"""Everything the composer reads from reference images, in one image-encoder pass: `{"image_embeds": V}`
        (L2-normalised `[batch, embed_dim]`, as `get_image_features`) and, for the pseudo-word composer,
        `"image_token_embeds"` (the vision tower's last token states `[batch, tokens, width]`, a CNN's
        `[batch, channels, height, width]`, or BLIP-2's Q-Former query states). The image encoder is frozen, so these
        can be cached and passed back as `get_composed_features(**features, input_ids=..., attention_mask=...)`."""
        if pixel_values is None or pixel_values.ndim != 4:
            raise ValueError(
                "get_composer_image_features expects pixel_values of shape [batch, channels, height, width], got "
                f"{None if pixel_values is None else tuple(pixel_values.shape)}.")
        image_embeds, image_token_embeds = self._image_features_and_tokens(pixel_values, **kwargs)
        features = {"image_embeds": F.normalize(image_embeds, dim=-1), "image_token_embeds": image_token_embeds}
        return {name: features[name] for name in self.composer_image_inputs}

    # -- the pseudo-word composer (Map-to-Compose) ------------------------------------------------------------------

    def _require_pseudo_word(self, what: str) -> None:
        if self.config.composer != "pseudo_word":
            raise ValueError(f"{what} belongs to the pseudo-word composer; this model's composer is "
                             f"{self.config.composer!r} (ScotConfig.composer).")

    @property
    def _text_tower(self) -> nn.Module:
        """The module holding the text encoder's layers (where stage 2's adapters go)."""
        return self.encoder.qformer if self._encoder_type == "blip-2" else self.encoder.text_model

    @property
    def _text_token_embedding(self) -> nn.Module:
        """The text encoder's token-embedding layer, whose output the pseudo tokens overwrite."""
        if self._encoder_type == "blip-2":
            return self.encoder.embeddings.word_embeddings
        return self.encoder.text_model.get_input_embeddings()

    def _pseudo_word_image_inputs(self, image_embeds, image_token_embeds, pixel_values,
                                  **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if image_token_embeds is None:
            if pixel_values is None:
                raise ValueError(
                    "The pseudo-word composer reads the image encoder's token states as well as the pooled embedding: "
                    "pass pixel_values, or image_embeds and image_token_embeds from get_composer_image_features.")
            pooled, image_token_embeds = self._image_features_and_tokens(pixel_values, **kwargs)
            if image_embeds is None:
                image_embeds = F.normalize(pooled, dim=-1)
        if image_embeds is None:
            raise ValueError("image_token_embeds were given without image_embeds: pass both (from "
                             "get_composer_image_features) or pixel_values.")
        if image_embeds.ndim != 2 or image_embeds.shape[-1] != self.config.embed_dim:
            raise ValueError(f"image_embeds must be [batch, {self.config.embed_dim}] (embed_dim), got "
                             f"{tuple(image_embeds.shape)}.")
        _check_same_batch("The pseudo-word composer", image_embeds, image_token_embeds,
                          ("pooled image embedding", "set of image token states"))
        return image_embeds, image_token_embeds

    def _pseudo_word_prompt_features(self, template: str, image_embeds: torch.Tensor, image_token_embeds: torch.Tensor,
                                     input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                                     normalize: bool = True) -> torch.Tensor:
        """The text tower's embedding of prompt `template` ("prompt" or "image_prompt" of the tokenised prompts) with
        each image's K pseudo tokens in place of `$` (and each row's modification tokens in `{modification}`)."""
        token_ids = self.config.pseudo_word_prompt_token_ids
        if token_ids is None:
            raise ValueError("This pseudo-word model has no tokenised prompts (config.pseudo_word_prompt_token_ids): "
                             "build it with ScotModel.from_backbone(...) or call "
                             "model.set_prompt_tokenizer(tokenizer).")
        modifications = None
        if input_ids is not None:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            modifications = modification_token_ids(input_ids, attention_mask, token_ids["special_tokens_before"],
                                                   token_ids["special_tokens_after"])
        pseudo_tokens = self.pseudo_word_mapper(image_embeds, image_token_embeds)
        prompt_ids, prompt_mask, pseudo_token_mask = build_pseudo_word_prompts(
            token_ids[template], self.config.num_pseudo_tokens, modifications, image_embeds.shape[0],
            placeholder_token_id=token_ids["placeholder_token_id"], pad_token_id=token_ids["pad_token_id"],
            max_length=encoder_text_positions(self.config.encoder_config), device=image_embeds.device,
        )
        with pseudo_tokens_spliced(self._text_token_embedding, pseudo_token_mask, pseudo_tokens):
            return self.get_text_features(input_ids=prompt_ids, attention_mask=prompt_mask, normalize=normalize)

    def get_image_prompt_features(self, image_embeds: torch.Tensor | None = None,
                                  image_token_embeds: torch.Tensor | None = None, *,
                                  pixel_values: torch.Tensor | None = None, normalize: bool = True,
                                  **kwargs) -> torch.Tensor:
        r"""Stage 1's prompt embedding t = f_φ("a photo of $") with the image's pseudo words
        (`config.pseudo_word_image_prompt`): L2-normalised `[batch, embed_dim]`, what `pseudo_word_mapping_loss`
        aligns with the image embedding and the captions. Images as for `get_composed_features`."""
        self._require_pseudo_word("get_image_prompt_features")
        image_embeds, image_token_embeds = self._pseudo_word_image_inputs(
            image_embeds, image_token_embeds, pixel_values, **kwargs)
        return self._pseudo_word_prompt_features("image_prompt", image_embeds, image_token_embeds, normalize=normalize)

    def add_composer_adapters(self, rank: int | None = None, alpha: float | None = None, dropout: float | None = None,
                              target_modules: list[str] | str | None = None) -> None:
        r"""Start stage 2 of a pseudo-word model: LoRA adapters (peft) in the text encoder become the only trainable
        weights; the mapping network is frozen. Settings default to the config's `pseudo_word_lora_*` fields, and
        what is used is written back there (the checkpoint's config then re-adds the same adapters on loading).
        Merge them with `merge_composer_adapters()` before the final save."""
        self._require_pseudo_word("add_composer_adapters")
        if self.config.pseudo_word_lora_state == "active":
            raise ValueError("This model already has LoRA adapters in its text encoder (pseudo_word_lora_state "
                             "'active'): merge them first with merge_composer_adapters().")
        config = self.config
        config.pseudo_word_lora_rank = config.pseudo_word_lora_rank if rank is None else rank
        config.pseudo_word_lora_alpha = config.pseudo_word_lora_alpha if alpha is None else alpha
        config.pseudo_word_lora_dropout = config.pseudo_word_lora_dropout if dropout is None else dropout
        if target_modules is not None:
            config.pseudo_word_lora_target_modules = target_modules
        config.validate()
        self._add_lora_adapters()
        config.pseudo_word_lora_state = "active"
        self.pseudo_word_mapper.requires_grad_(False)

    def _add_lora_adapters(self) -> None:
        config = self.config
        target_modules = config.pseudo_word_lora_target_modules
        if target_modules is None:
            target_modules = config.pseudo_word_lora_target_modules = DEFAULT_LORA_TARGET_MODULES[self._encoder_type]
        add_lora_adapters(self._text_tower, rank=config.pseudo_word_lora_rank, alpha=config.pseudo_word_lora_alpha,
                          dropout=config.pseudo_word_lora_dropout, target_modules=target_modules)

    def merge_composer_adapters(self) -> int:
        """Fold stage 2's LoRA adapters into the text encoder's weights and remove every peft layer, so that
        `save_pretrained` writes the encoder's own parameter names and the folder loads without peft
        (`pseudo_word_lora_state` becomes "merged"; the rank stays recorded). Returns how many layers were merged;
        0, doing nothing, for a model without active adapters (a Combiner, or stage 1), so a training script may call
        it unconditionally."""
        if self.config.pseudo_word_lora_state != "active":
            return 0
        merged = merge_lora_adapters(self._text_tower)
        self.config.pseudo_word_lora_state = "merged"
        if self.config.freeze_encoder:
            self.freeze_encoder()
        return merged

    # -- the one entry point ------------------------------------------------------------------------------------------

    def get_composed_features(
        self,
        image_embeds: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        pixel_values: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
        text_embeds: torch.Tensor | None = None, image_token_embeds: torch.Tensor | None = None,
        gallery_neighbour_embeds: torch.Tensor | None = None, gallery_statistics: GalleryStatistics | None = None,
        return_text_weight: bool = False, **kwargs,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        r"""The composed query V_c for reference images and modification texts: the one entry point evaluation,
        search and training use, whatever the composer.

        Args:
            image_embeds (`torch.Tensor` of shape `(batch_size, embed_dim)`, *optional*):
                Reference image embeddings from `get_image_features` (e.g. a cached gallery); else `pixel_values`.
            input_ids, attention_mask, token_type_ids:
                The modification texts as `ScotProcessor` tokenises them.
            pixel_values (`torch.Tensor`, *optional*): the reference images, when their features are not given.
            text_embeds (`torch.Tensor` of shape `(batch_size, embed_dim)`, *optional*):
                Precomputed modification text embeddings, accepted when `composer_accepts_text_embeds` is True (the
                Combiner); used instead of `input_ids`.
            image_token_embeds (`torch.Tensor`, *optional*):
                The image encoder's token states, read by the pseudo-word composer besides `image_embeds` (see
                `composer_image_inputs` and `get_composer_image_features`); else computed from `pixel_values`.
            gallery_neighbour_embeds (`torch.Tensor` of shape `(batch_size, k, embed_dim)`, *optional*):
                Each reference's k = `config.grounding_gate_neighbours` nearest gallery images, its own copies left
                out (`nearest_gallery_images`), with `gallery_statistics` (`GalleryStatistics` of the gallery): the
                grounding gate's view of the gallery. With both, and the gate on in the config, a query whose text
                does not pick out one of them (`text_grounding` < `config.grounding_gate_threshold`) is the reference
                image embedding (its λ 0). Without them (training, a caller with no gallery) no query is gated.
            return_text_weight (`bool`): also return the composer's weight on the text, λ `[batch, 1]` (None for
                a composer without one).

        Returns:
            L2-normalised `[batch, embed_dim]` composed embeddings (and λ when asked).
        """
        if text_embeds is not None and not self.composer_accepts_text_embeds:
            raise ValueError(f"{type(self).__name__}'s composer reads the modification's tokens: pass input_ids and "
                             "attention_mask, not text_embeds.")
        if self.config.composer == "pseudo_word":
            image_embeds, image_token_embeds = self._pseudo_word_image_inputs(
                image_embeds, image_token_embeds, pixel_values, **kwargs)
            if input_ids is None or input_ids.ndim != 2:
                raise ValueError("A composed query needs the modification texts: pass input_ids [batch, sequence] "
                                 "(and attention_mask) as ScotProcessor(text=...) returns them.")
            _check_same_batch("get_composed_features", image_embeds, input_ids,
                              ("reference image", "modification text"))
            composed_embeds = self._pseudo_word_prompt_features("prompt", image_embeds, image_token_embeds,
                                                                input_ids, attention_mask)
            text_weight = None
        else:
            image_embeds, text_embeds = self._query_inputs(
                image_embeds, pixel_values, text_embeds, input_ids, attention_mask, token_type_ids, **kwargs
            )
            _check_same_batch("get_composed_features", image_embeds, text_embeds,
                              ("reference image", "modification text"))
            composed_embeds, text_weight = self._combine(image_embeds, text_embeds)
        # the novelty gate once it has its bank (a k set before training waits for `set_novelty_gate`)
        novelty_gate = bool(self.config.novelty_gate_neighbours and self.config.novelty_gate_bank_size
                            and not self.training)
        grounding_gate = bool(self.config.grounding_gate_neighbours) and (gallery_neighbour_embeds is not None
                                                                          or gallery_statistics is not None)
        if (novelty_gate or grounding_gate) and text_embeds is None:
            # the pseudo-word composer never embeds the modification on its own
            text_embeds = self.get_text_features(input_ids=input_ids, attention_mask=attention_mask,
                                                 token_type_ids=token_type_ids)
        if novelty_gate:
            composed_embeds, text_weight = self._novelty_gate(composed_embeds, text_weight, image_embeds, text_embeds)
        if grounding_gate:
            composed_embeds, text_weight = self._grounding_gate(composed_embeds, text_weight, image_embeds,
                                                                text_embeds, gallery_neighbour_embeds,
                                                                gallery_statistics)
        return (composed_embeds, text_weight) if return_text_weight else composed_embeds

    def set_novelty_gate(self, bank_embeds: torch.Tensor, neighbours: int, threshold: float) -> None:
        """Turn the text novelty gate on (`ScotConfig.novelty_gate_*`): `bank_embeds` `[N, embed_dim]` are the
        training modification embeddings it compares a query's text with (normalised here, held in the buffer
        `novelty_gate_text_embeds` and saved with the weights), `neighbours` its k, `threshold` its θ."""
        if bank_embeds.ndim != 2 or bank_embeds.shape[1] != self.config.embed_dim or len(bank_embeds) < neighbours:
            raise ValueError(f"The novelty gate's bank must be [texts >= {neighbours}, {self.config.embed_dim}], got "
                             f"{list(bank_embeds.shape)}.")
        device = next(self.parameters()).device
        self.register_buffer("novelty_gate_text_embeds", F.normalize(bank_embeds.float(), dim=-1).to(device))
        self.config.novelty_gate_neighbours = 0  # the config checks k against the bank: the bank first
        self.config.novelty_gate_bank_size = len(bank_embeds)
        self.config.novelty_gate_neighbours, self.config.novelty_gate_threshold = neighbours, float(threshold)

    def text_familiarity(self, text_embeds: torch.Tensor) -> torch.Tensor:
        """`[B]`: `text_familiarity` of modification embeddings against the model's bank (the novelty gate's
        statistic; the gate answers with the image alone where it is below `config.novelty_gate_threshold`)."""
        bank = getattr(self, "novelty_gate_text_embeds", None)
        if bank is None or not (self.config.novelty_gate_neighbours and self.config.novelty_gate_bank_size):
            raise ValueError("This model has no novelty gate: ScotModel.set_novelty_gate (or scot-train "
                             "--novelty_gate_alpha) gives it one.")
        return text_familiarity(F.normalize(text_embeds.float(), dim=-1), bank, self.config.novelty_gate_neighbours)

    def _novelty_gate(self, composed_embeds, text_weight, image_embeds,
                      text_embeds) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The composed queries with those whose modification is unlike the training texts
        (`ScotConfig.novelty_gate_neighbours`) replaced by the reference image embedding."""
        novel = (self.text_familiarity(text_embeds) < self.config.novelty_gate_threshold)[:, None]
        novel = novel.to(composed_embeds.device)
        composed_embeds = torch.where(novel, F.normalize(image_embeds, dim=-1).to(composed_embeds.dtype),
                                      composed_embeds)
        if text_weight is not None:
            text_weight = text_weight.masked_fill(novel, 0.0)
        return composed_embeds, text_weight

    def _grounding_gate(self, composed_embeds, text_weight, image_embeds, text_embeds, neighbour_embeds,
                        gallery_statistics) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The composed queries with those whose text is not grounded among the reference's look-alikes
        replaced by the reference image embedding (`ScotConfig.grounding_gate_neighbours`)."""
        k = self.config.grounding_gate_neighbours
        if neighbour_embeds is None or gallery_statistics is None:
            raise ValueError("The grounding gate needs both gallery_neighbour_embeds and gallery_statistics.")
        expected = (len(composed_embeds), k, self.config.embed_dim)
        if tuple(neighbour_embeds.shape) != expected:
            raise ValueError(f"gallery_neighbour_embeds must be [batch, grounding_gate_neighbours, embed_dim] = "
                             f"{list(expected)}, got {list(neighbour_embeds.shape)}.")
        grounding = text_grounding(F.normalize(text_embeds.float(), dim=-1), neighbour_embeds, gallery_statistics,
                                   F.normalize(image_embeds.float(), dim=-1).to(neighbour_embeds.device),
                                   self.config.grounding_gate_statistic)
        gated = (grounding < self.config.grounding_gate_threshold).to(composed_embeds.device)[:, None]
        composed_embeds = torch.where(gated, F.normalize(image_embeds, dim=-1).to(composed_embeds.dtype),
                                      composed_embeds)
        if text_weight is not None:
            text_weight = text_weight.masked_fill(gated, 0.0)
        return composed_embeds, text_weight

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
        image_token_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> ScotOutput | tuple:
        r"""
        Compose reference images with modification texts.

        Args:
            pixel_values, input_ids, attention_mask, token_type_ids:
                The reference images and modification texts, as `ScotProcessor` returns them.
            image_embeds, text_embeds (`torch.Tensor` of shape `(batch_size, embed_dim)`, *optional*):
                Precomputed normalised embeddings, used instead of `pixel_values` / `input_ids` (cached training;
                `text_embeds` only for the Combiner).
            modified_caption_embeds (`torch.Tensor` of shape `(batch_size, embed_dim)`, *optional*):
                Text embeddings of the modified captions (the targets); when given, the loss is returned
                (`compute_scot_loss`: the Combiner's `loss_type`, or stage 2's loss of the pseudo-word composer).
            caption_embeds (`torch.Tensor` of shape `(batch_size, embed_dim)`, *optional*):
                Text embeddings of the original captions: extra negatives of the SCOT loss (Eq. 8), the hard
                negatives of the pseudo-word composer's.
            image_token_embeds (`torch.Tensor`, *optional*):
                Cached image token states for the pseudo-word composer (see `get_composer_image_features`).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if self.config.composer == "pseudo_word":
            image_embeds, image_token_embeds = self._pseudo_word_image_inputs(
                image_embeds, image_token_embeds, pixel_values, **kwargs)
            composed_embeds, text_weight = self.get_composed_features(
                image_embeds, input_ids, attention_mask, token_type_ids=token_type_ids, text_embeds=text_embeds,
                image_token_embeds=image_token_embeds, return_text_weight=True)
            text_embeds = None
        else:
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
    "compute_pseudo_word_mapping_loss",
    "compute_scot_loss",
    "image_floor_loss",
    "infonce_loss",
    "scot_loss",
    "scot_split_loss",
]
