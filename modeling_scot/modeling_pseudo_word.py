"""Map-to-Compose's composer: reference image → K pseudo-word tokens, read by the text encoder in a prompt.

Map-to-Compose (Wang et al., "From Mapping to Composing: A Two-Stage Framework for Zero-shot Composed Image
Retrieval", arXiv 2504.17990). Only the abstract is available offline; every choice it leaves open is our reading,
built from Pic2Word (image → one pseudo word), SEARLE's and LinCIR's φ, and MoTaDual's two stages. See
docs/map_to_compose.md for what the abstract fixes and what we chose.

- `PseudoWordMapper` ("visual semantic injection"): K learnable queries, offset by the pooled image embedding,
  cross-attend over the frozen image encoder's token states (patches, or BLIP-2's Q-Former queries) plus that pooled
  embedding, and come out as K vectors in the text encoder's *input* (token) embedding space.
- `tokenize_pseudo_word_prompts` / `build_pseudo_word_prompts` / `pseudo_tokens_spliced`: the prompt "a photo of $
  that {modification}" is assembled at the token level (the modification arrives as the processor tokenised it) with K
  placeholder positions for `$`, and the real text tower runs on it with the pseudo tokens written over the
  placeholders' token embeddings. Why a hook on the token-embedding layer rather than `inputs_embeds`:
  transformers 5's `CLIPTextModel.forward` takes no `inputs_embeds`, and it pools at the EOS position it finds in
  `input_ids`; the hook keeps `input_ids` (so pooling, padding and masks are the model's own) and swaps only the
  vectors, the same way for CLIP, a BERT tower and BLIP-2's Q-Former.
- The two stages' losses (`pseudo_word_mapping_loss`, `pseudo_word_composing_loss`) and the LoRA helpers of stage 2
  (`add_lora_adapters`, `merge_lora_adapters`; peft is imported only there).

This module imports only torch (and transformers' tokenizer objects are passed in), so the Hub copy carries it.
"""

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

# Markers in a tokenised prompt template (token ids are never negative).
PSEUDO_WORD_SLOT = -1
MODIFICATION_SLOT = -2
PSEUDO_WORD_MARKER = "$"
MODIFICATION_MARKER = "{modification}"

# Default LoRA targets of stage 2, per encoder: the text tower's attention projections. BLIP-2's Q-Former shares its
# self-attention between the image queries and the text, so there only the text-only feed-forward (`intermediate`,
# `output`; the queries have their own `*_query` copies) is adapted, and the image embeddings stay frozen.
DEFAULT_LORA_TARGET_MODULES = {
    "clip": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "vision-text-dual-encoder": ["query", "key", "value", "attention.output.dense"],
    "blip-2": r".*layer\.\d+\.(intermediate|output)\.dense",
}


# ----------------------------------------------------------------------------------------------------------------
# The mapping network
# ----------------------------------------------------------------------------------------------------------------


class PseudoWordInjectionLayer(nn.Module):
    """One pre-norm block: the pseudo-word queries cross-attend over the image memory, then attend to each other, then
    an MLP (4x). Residual around each."""

    def __init__(self, width: int, num_heads: int, dropout: float):
        super().__init__()
        self.cross_attention_norm = nn.LayerNorm(width)
        self.cross_attention = nn.MultiheadAttention(width, num_heads, dropout=dropout, batch_first=True)
        self.self_attention_norm = nn.LayerNorm(width)
        self.self_attention = nn.MultiheadAttention(width, num_heads, dropout=dropout, batch_first=True)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(4 * width, width), nn.Dropout(dropout),
        )

    def forward(self, queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        normed = self.cross_attention_norm(queries)
        queries = queries + self.cross_attention(normed, memory, memory, need_weights=False)[0]
        normed = self.self_attention_norm(queries)
        queries = queries + self.self_attention(normed, normed, normed, need_weights=False)[0]
        return queries + self.mlp(self.mlp_norm(queries))


class PseudoWordMapper(nn.Module):
    r"""Stage 1's mapping network φ: (pooled image embedding V `[B, d]`, image token states `[B, N, h]`) → K
    pseudo-word token embeddings `[B, K, w]` in the text encoder's input embedding space (w = its hidden size).

    - The pooled embedding gives every query a start: q_k = e_k + MLP(V)_k (Pic2Word's φ, one output per query), so
      with depth 0 this is Pic2Word / SEARLE's MLP with K outputs.
    - "Visual semantic injection": `depth` blocks in which the queries cross-attend over the memory
      [Linear(V); Linear(token states)] (the pooled embedding as one more memory token), so detail that pooling
      drops can still reach the pseudo words; then self-attention among the K queries and an MLP.
    - Output: Linear(LayerNorm(q)).

    Token states of a convolutional tower (`[B, C, H, W]`) are read as H·W tokens of width C.
    """

    def __init__(self, embed_dim: int, image_token_dim: int, token_embed_dim: int, num_pseudo_tokens: int,
                 depth: int = 2, num_heads: int = 8, dropout: float = 0.1):
        super().__init__()
        if token_embed_dim % num_heads:
            raise ValueError(f"pseudo_word_mapping_heads ({num_heads}) must divide the text encoder's token "
                             f"embedding width ({token_embed_dim}).")
        self.num_pseudo_tokens = num_pseudo_tokens
        self.token_embed_dim = token_embed_dim
        self.queries = nn.Parameter(torch.zeros(num_pseudo_tokens, token_embed_dim))
        self.pooled_projection = nn.Sequential(
            nn.Linear(embed_dim, token_embed_dim), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(token_embed_dim, num_pseudo_tokens * token_embed_dim),
        )
        self.pooled_memory_projection = nn.Linear(embed_dim, token_embed_dim)
        self.image_token_projection = nn.Linear(image_token_dim, token_embed_dim)
        self.memory_norm = nn.LayerNorm(token_embed_dim)
        self.layers = nn.ModuleList(
            PseudoWordInjectionLayer(token_embed_dim, num_heads, dropout) for _ in range(depth))
        self.output_norm = nn.LayerNorm(token_embed_dim)
        self.output_projection = nn.Linear(token_embed_dim, token_embed_dim)

    def forward(self, image_embeds: torch.Tensor, image_token_embeds: torch.Tensor) -> torch.Tensor:
        if image_token_embeds.ndim == 4:  # a CNN's feature map [B, C, H, W] → H·W tokens
            image_token_embeds = image_token_embeds.flatten(2).transpose(1, 2)
        dtype = self.queries.dtype
        image_embeds, image_token_embeds = image_embeds.to(dtype), image_token_embeds.to(dtype)
        batch_size = image_embeds.shape[0]
        queries = self.queries + self.pooled_projection(image_embeds).view(
            batch_size, self.num_pseudo_tokens, self.token_embed_dim)
        memory = torch.cat([self.pooled_memory_projection(image_embeds)[:, None],
                            self.image_token_projection(image_token_embeds)], dim=1)
        memory = self.memory_norm(memory)
        for layer in self.layers:
            queries = layer(queries, memory)
        return self.output_projection(self.output_norm(queries))


# ----------------------------------------------------------------------------------------------------------------
# Prompts with pseudo words, at the token level
# ----------------------------------------------------------------------------------------------------------------


def _special_token_counts(tokenizer) -> tuple[int, int]:
    """How many special tokens the tokenizer puts before and after a text (CLIP: BOS/EOS; BERT: [CLS]/[SEP])."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return start, len(full) - start - len(plain)
    raise ValueError(f"Cannot tell where {type(tokenizer).__name__} puts its special tokens: the tokens of 'a' "
                     f"({plain}) do not appear in those with special tokens ({full}).")


def tokenize_prompt_template(tokenizer, template: str) -> list[int]:
    """The template's token ids with its special tokens, `PSEUDO_WORD_SLOT` where `$` stands and `MODIFICATION_SLOT`
    where `{modification}` stands. Text pieces are tokenised one by one, which equals tokenising the whole sentence for
    tokenizers that split on whitespace first (CLIP's BPE, BERT's WordPiece)."""
    body = []
    for piece in re.split(r"(\$|\{modification\})", template):
        if piece == PSEUDO_WORD_MARKER:
            body.append(PSEUDO_WORD_SLOT)
        elif piece == MODIFICATION_MARKER:
            body.append(MODIFICATION_SLOT)
        elif piece.strip():
            body.extend(tokenizer(piece.strip(), add_special_tokens=False)["input_ids"])
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    leading, trailing = _special_token_counts(tokenizer)
    return full[:leading] + body + full[len(full) - trailing:]


def tokenize_pseudo_word_prompts(tokenizer, prompt: str, image_prompt: str) -> dict:
    """What a pseudo-word model needs from its tokenizer, as plain JSON for `ScotConfig.pseudo_word_prompt_token_ids`:
    both templates tokenised (see `tokenize_prompt_template`), how many special tokens to strip from each side of a
    tokenised modification, the id written at the pseudo-word positions (that of `$`: an ordinary token, so the text
    tower's EOS pooling, which looks for EOS or the highest id, is not fooled) and the padding id."""
    leading, trailing = _special_token_counts(tokenizer)
    dollar_ids = tokenizer(PSEUDO_WORD_MARKER, add_special_tokens=False)["input_ids"]
    placeholder = dollar_ids[0] if dollar_ids else tokenizer.unk_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if placeholder is None or pad is None:
        raise ValueError(f"{type(tokenizer).__name__} has no token for '$' (nor an unknown token) or no padding / EOS "
                         "token: a pseudo-word prompt needs both.")
    return {
        "prompt": tokenize_prompt_template(tokenizer, prompt),
        "image_prompt": tokenize_prompt_template(tokenizer, image_prompt),
        "special_tokens_before": leading,
        "special_tokens_after": trailing,
        "placeholder_token_id": int(placeholder),
        "pad_token_id": int(pad),
    }


def modification_token_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor, special_tokens_before: int,
                           special_tokens_after: int) -> list[list[int]]:
    """The modification texts' own tokens, as the processor tokenised them: padding and the special tokens around
    each text removed."""
    rows = []
    for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
        kept = [token for token, keep in zip(ids, mask) if keep]
        rows.append(kept[special_tokens_before:len(kept) - special_tokens_after])
    return rows


def build_pseudo_word_prompts(template_ids: Sequence[int], num_pseudo_tokens: int,
                              modifications: Sequence[Sequence[int]] | None, batch_size: int, *,
                              placeholder_token_id: int, pad_token_id: int, max_length: int | None,
                              device: torch.device | str | None = None) -> tuple[torch.Tensor, ...]:
    """Fill a tokenised template (`tokenize_prompt_template`) for a batch: `$` becomes `num_pseudo_tokens` placeholder
    positions, `{modification}` the row's modification tokens (cut at the end when the prompt would exceed
    `max_length`, the text tower's positions). Right-padded.

    Returns `input_ids`, `attention_mask` and `pseudo_token_mask` (True at the K placeholder positions), each
    `[batch, length]`."""
    if modifications is not None and len(modifications) != batch_size:
        raise ValueError(f"build_pseudo_word_prompts got {len(modifications)} modifications for {batch_size} images.")
    if modifications is None and MODIFICATION_SLOT in template_ids:
        raise ValueError("This prompt template has a {modification} slot: pass the modification tokens.")
    fixed_length = sum(num_pseudo_tokens if token == PSEUDO_WORD_SLOT else 1
                       for token in template_ids if token != MODIFICATION_SLOT)
    budget = None if max_length is None else max_length - fixed_length
    if budget is not None and budget < 0:
        raise ValueError(f"The pseudo-word prompt takes {fixed_length} token positions (K={num_pseudo_tokens}) but "
                         f"the text encoder has only {max_length}: shorten the template or lower num_pseudo_tokens.")
    rows, masks = [], []
    for row in range(batch_size):
        ids, is_pseudo = [], []
        for token in template_ids:
            if token == PSEUDO_WORD_SLOT:
                ids += [placeholder_token_id] * num_pseudo_tokens
                is_pseudo += [True] * num_pseudo_tokens
            elif token == MODIFICATION_SLOT:
                text = list(modifications[row])[:budget]
                ids += text
                is_pseudo += [False] * len(text)
            else:
                ids.append(token)
                is_pseudo.append(False)
        rows.append(ids)
        masks.append(is_pseudo)
    length = max(len(ids) for ids in rows)
    input_ids = torch.full((batch_size, length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((batch_size, length), dtype=torch.long)
    pseudo_token_mask = torch.zeros((batch_size, length), dtype=torch.bool)
    for row, (ids, is_pseudo) in enumerate(zip(rows, masks)):
        input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, :len(ids)] = 1
        pseudo_token_mask[row, :len(ids)] = torch.tensor(is_pseudo, dtype=torch.bool)
    return input_ids.to(device), attention_mask.to(device), pseudo_token_mask.to(device)


@contextmanager
def pseudo_tokens_spliced(token_embedding: nn.Module, pseudo_token_mask: torch.Tensor,
                          pseudo_tokens: torch.Tensor) -> Iterator[None]:
    """While active, the token-embedding layer's output has `pseudo_tokens` (`[batch, K, width]`, in order) written at
    the True positions of `pseudo_token_mask` (`[batch, length]`, K per row); gradients flow into `pseudo_tokens`.
    Every other position keeps the embedding of its token id, so a prompt without pseudo words is unchanged."""
    if not pseudo_token_mask.any():  # a prompt without `$`: nothing to write
        yield
        return
    if pseudo_tokens.shape[0] != pseudo_token_mask.shape[0] or \
            pseudo_tokens.shape[0] * pseudo_tokens.shape[1] != int(pseudo_token_mask.sum()):
        raise ValueError(f"pseudo_tokens of shape {tuple(pseudo_tokens.shape)} do not fill the "
                         f"{int(pseudo_token_mask.sum())} pseudo-word positions of {pseudo_token_mask.shape[0]} rows.")

    def splice(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if output.shape[:2] != pseudo_token_mask.shape:
            raise ValueError(f"The text tower embedded {tuple(output.shape[:2])} tokens while the pseudo-word mask is "
                             f"{tuple(pseudo_token_mask.shape)}: only the prompt built with it may run inside "
                             "pseudo_tokens_spliced.")
        return output.masked_scatter(pseudo_token_mask[..., None], pseudo_tokens.to(output.dtype))

    handle = token_embedding.register_forward_hook(splice)
    try:
        yield
    finally:
        handle.remove()


# ----------------------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------------------


def _check_rows(loss_name: str, **tensors: torch.Tensor) -> None:
    shapes = {name: tuple(tensor.shape) for name, tensor in tensors.items()}
    if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 2:
        raise ValueError(f"{loss_name} expects {', '.join(shapes)} of one shape [N, d] (row i of each is the same "
                         f"sample), got {shapes}.")


def pseudo_word_mapping_loss(prompt_embeds: torch.Tensor, image_embeds: torch.Tensor,
                             caption_embeds: torch.Tensor | None = None, temperature: float = 0.01,
                             soft_alignment_temperature: float = 0.01,
                             soft_alignment_weight: float = 1.0) -> torch.Tensor:
    r"""Stage 1 (mapping; image-caption pairs, no triplets): L₁ = L_con + w_soft · L_soft.

    With t_i the normalised text embedding of the image prompt "a photo of $" carrying image i's pseudo words,
    v_i the normalised (frozen) image embedding and c_j the normalised (frozen) text embedding of caption j, all over
    the batch of N pairs:

    - L_con (Pic2Word's symmetric InfoNCE, τ = `temperature`, default 0.01, i.e. CLIP's trained logit scale 100):
      L_con = ½ · [ −(1/N) Σ_i log softmax_j(t_i·v_j / τ)_i  −(1/N) Σ_i log softmax_j(v_i·t_j / τ)_i ].
    - L_soft ("soft text alignment", our reading of the abstract; τ_s = `soft_alignment_temperature`, default 0.01):
      p_i = softmax_j(v_i·c_j / τ_s) is how image i itself spreads over the batch's captions (its own caption
      usually, but not only, on top), q_i = softmax_j(t_i·c_j / τ_s) the same for its prompt; the prompt is pulled
      to that *distribution* rather than onto one caption: L_soft = (1/N) Σ_i KL(p_i ‖ q_i)
      = (1/N) Σ_i Σ_j p_ij (log p_ij − log q_ij). p carries no gradient (the image side is frozen anyway).
    - w_soft = `soft_alignment_weight` (default 1.0). Without `caption_embeds`, L₁ = L_con.
    """
    _check_rows("pseudo_word_mapping_loss", prompt_embeds=prompt_embeds, image_embeds=image_embeds)
    prompts, images = F.normalize(prompt_embeds, dim=-1), F.normalize(image_embeds, dim=-1)
    logits = prompts @ images.T / temperature
    labels = torch.arange(logits.shape[0], device=logits.device)
    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    if caption_embeds is None:
        return loss
    _check_rows("pseudo_word_mapping_loss", prompt_embeds=prompt_embeds, caption_embeds=caption_embeds)
    captions = F.normalize(caption_embeds, dim=-1)
    image_log_p = F.log_softmax(images @ captions.T / soft_alignment_temperature, dim=-1).detach()
    prompt_log_q = F.log_softmax(prompts @ captions.T / soft_alignment_temperature, dim=-1)
    soft_alignment = F.kl_div(prompt_log_q, image_log_p, reduction="batchmean", log_target=True)
    return loss + soft_alignment_weight * soft_alignment


def pseudo_word_composing_loss(composed_embeds: torch.Tensor, modified_caption_embeds: torch.Tensor,
                               caption_embeds: torch.Tensor | None = None,
                               temperature: float = 0.01) -> torch.Tensor:
    r"""Stage 2 (composing; a small set of triplets): contrastive, composed query → modified caption.

    With c_i the normalised text embedding of "a photo of $ that {modification_i}" carrying reference image i's pseudo
    words (text encoder with LoRA), u_j the normalised target embedding of modified caption j and o_i that of
    reference i's own original caption (both from the *frozen* text encoder, so cacheable, as SCOT's text targets):

        L₂ = −(1/N) Σ_i log [ exp(c_i·u_i/τ) / ( Σ_j exp(c_i·u_j/τ) + exp(c_i·o_i/τ) ) ]

    in-batch negatives u_{j≠i} plus the original caption as the hard negative (what the reference already shows,
    which an unchanged query would match); τ = `temperature`, default 0.01. Without `caption_embeds`, the plain
    in-batch InfoNCE.
    """
    _check_rows("pseudo_word_composing_loss", composed_embeds=composed_embeds,
                modified_caption_embeds=modified_caption_embeds)
    composed = F.normalize(composed_embeds, dim=-1)
    logits = composed @ F.normalize(modified_caption_embeds, dim=-1).T
    if caption_embeds is not None:
        _check_rows("pseudo_word_composing_loss", composed_embeds=composed_embeds, caption_embeds=caption_embeds)
        own_caption = (composed * F.normalize(caption_embeds, dim=-1)).sum(dim=-1, keepdim=True)
        logits = torch.cat([logits, own_caption], dim=1)
    labels = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits / temperature, labels)


# ----------------------------------------------------------------------------------------------------------------
# Stage 2's LoRA adapters
# ----------------------------------------------------------------------------------------------------------------


def _import_peft():
    try:  # peft is needed only to train stage 2; inside `try` the Hub copy does not list it as a requirement
        import peft
    except ImportError as error:
        raise ImportError("Adding or merging Map-to-Compose's LoRA adapters needs peft: pip install peft. A saved "
                          "model (adapters merged) needs no peft.") from error
    return peft


def add_lora_adapters(text_tower: nn.Module, *, rank: int, alpha: float, dropout: float,
                      target_modules: list[str] | str) -> nn.Module:
    """Inject LoRA adapters (peft) in place into `text_tower`; only the adapters' weights stay trainable in it."""
    peft = _import_peft()
    lora_config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                                  bias="none")
    return peft.inject_adapter_in_model(lora_config, text_tower)


def merge_lora_adapters(module: nn.Module) -> int:
    """Merge every LoRA layer under `module` into its base layer and put the plain base layer back, so that the
    state dict has the original names and no peft class remains. Returns how many layers were merged."""
    peft = _import_peft()
    adapted = [(name, layer) for name, layer in module.named_modules()
               if isinstance(layer, peft.tuners.tuners_utils.BaseTunerLayer)]
    for name, layer in adapted:
        layer.merge()
        parent_name, _, child_name = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, child_name, layer.get_base_layer())
    return len(adapted)


__all__ = [
    "DEFAULT_LORA_TARGET_MODULES",
    "PseudoWordMapper",
    "add_lora_adapters",
    "build_pseudo_word_prompts",
    "merge_lora_adapters",
    "modification_token_ids",
    "pseudo_tokens_spliced",
    "pseudo_word_composing_loss",
    "pseudo_word_mapping_loss",
    "tokenize_pseudo_word_prompts",
]
