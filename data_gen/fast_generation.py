"""Fast batched generation with transformers: the shared prompt prefix is computed once, finished rows stop costing.

Every prompt of a run starts with the same instruction (and in-prompt examples): for SmolLM2 3-shot, 217 of ~230
tokens. Plain batched `generate` recomputes that prefix for every row of every batch, and keeps decoding rows that
have already ended until the longest one ends. `PrefixCachedEngine` instead

1. tokenizes each prompt whole and takes the longest token prefix all prompts share (so the tokens are exactly the
   ones `generate` would see), runs it once, and keeps its KV cache (a `DynamicCache`) for later calls;
2. keeps that prefix cache once: on models that use transformers' attention interface (Llama, SmolLM2, Gemma) an
   attention function registered here (`shared_prefix_attention`) attends every row to the one stored copy, so a
   row's cache holds only its own tokens and no step reads the prefix once per row; other models (Falcon) get the
   prefix cache copied for each row;
3. decodes step by step; a row leaves the batch (and the cache) as soon as it writes an end token, and waiting
   prompts take the free slots (continuous batching: admitted in groups, shortest prompts first, their own tokens
   left-padded and masked, positions counted without the padding).

Under greedy decoding the tokens are those of one-prompt-at-a-time `generate` (same positions, same attended tokens;
floating-point sums may be ordered differently, which in bf16 can change a near-tie). Sampling draws each row from
its own seeded generator, so a row's completion does not depend on the batch size or on the other rows.
"""

import copy
from typing import TYPE_CHECKING

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.generation.logits_process import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .models import load_causal_lm

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

def generation_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on GPUs that support it, fp32 on CPUs.

    On CPUs fp32 is faster even where bf16 has hardware support: on an AMX Xeon (2 vCPUs) this engine decoded
    SmolLM2-135M at 266 tokens/s in fp32 and 115 in bf16 (batch 64); on an AMD EPYC with AVX512-BF16 the engine
    before it ran at 96 against 86 (`bench/bench_generation.py --sweep`, docs/data_gen.md).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.float32


def shared_prefix_length(token_lists: list[list[int]]) -> int:
    """Tokens every list starts with, leaving at least one token per list: the last prompt token is run with the
    row, because its logits choose the first new token."""
    shortest = min(len(tokens) for tokens in token_lists)
    length = 0
    while length < shortest - 1 and all(tokens[length] == token_lists[0][length] for tokens in token_lists):
        length += 1
    return length


SHARED_PREFIX_ATTENTION = "scot_shared_prefix"


def shared_prefix_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                            shared_prefix_cache: DynamicCache | None = None, **kwargs):
    """Attention over a prefix every row shares, its keys and values stored once (batch 1), and then over each row's
    own tokens (`key`, `value`: the row cache, without the prefix) under `attention_mask` ([batch, 1, query, keys],
    True where a row may attend). One softmax over both parts, so the result is plain attention over prefix + row.

    Registered as an attention function (transformers' `AttentionInterface`); a call without `shared_prefix_cache`
    (any other use of the model) is plain SDPA.
    """
    if shared_prefix_cache is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    prefix = shared_prefix_cache.layers[module.layer_idx]
    batch, heads, query_length, head_dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    # Heads that share a key/value head are stacked along the query axis (grouped-query attention without copies).
    grouped = query.reshape(batch, kv_heads, groups * query_length, head_dim)
    # The prefix is the same for every row: the rows are stacked too, one matmul against one copy of its keys.
    stacked = grouped.transpose(0, 1).reshape(kv_heads, batch * groups * query_length, head_dim)
    prefix_scores = torch.matmul(stacked, prefix.keys[0].transpose(1, 2))
    prefix_scores = prefix_scores.view(kv_heads, batch, groups * query_length, -1).transpose(0, 1)
    row_scores = torch.matmul(grouped, key.transpose(2, 3))
    row_scores = row_scores.masked_fill(~attention_mask.repeat(1, 1, groups, 1), float("-inf"))
    weights = (torch.cat([prefix_scores, row_scores], dim=-1) * scaling).softmax(dim=-1, dtype=torch.float32)
    weights = weights.to(query.dtype)
    prefix_length = prefix_scores.shape[-1]
    prefix_weights = weights[..., :prefix_length].transpose(0, 1).reshape(kv_heads, batch * groups * query_length,
                                                                          prefix_length)
    output = torch.matmul(prefix_weights, prefix.values[0]).view(kv_heads, batch, groups * query_length, head_dim)
    output = output.transpose(0, 1) + torch.matmul(weights[..., prefix_length:], value)
    return output.reshape(batch, heads, query_length, head_dim).transpose(1, 2).contiguous(), None


AttentionInterface.register(SHARED_PREFIX_ATTENTION, shared_prefix_attention)
# Masks for other calls are SDPA's; the engine passes its own 4D mask, which transformers hands over as it is.
AttentionMaskInterface.register(SHARED_PREFIX_ATTENTION, sdpa_mask)


class PrefixCachedEngine:
    """Prompts in, completions out (the interface of `generate.TransformersEngine`), with the prefix computed once,
    finished rows leaving the batch and, with `refill`, new prompts taking their slots. Greedy when temperature is 0.

    `shared_prefix_attention` (models on transformers' attention interface): the prefix's keys and values are kept
    once and every row attends to that one copy, so a row's cache holds only its own tokens; otherwise (or when
    False) the prefix cache is copied for every row. `refill` False fills a batch only once the last one has ended
    (static batching); both switches exist to measure what each saves.
    """

    def __init__(self, model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", batch_size: int = 32,
                 max_new_tokens: int = 48, temperature: float = 0.0, top_p: float = 0.9, refill: bool = True,
                 shared_prefix_attention: bool = True) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.refill = refill
        self.shared_prefix_attention = shared_prefix_attention and model._supports_attention_backend
        if self.shared_prefix_attention and model.config._attn_implementation != SHARED_PREFIX_ATTENTION:
            model.set_attn_implementation(SHARED_PREFIX_ATTENTION)  # SDPA for every call that passes no prefix
        eos = model.generation_config.eos_token_id
        eos = tokenizer.eos_token_id if eos is None else eos
        self.end_token_ids = torch.tensor(eos if isinstance(eos, list) else [eos], device=model.device)
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(self.end_token_ids[0]) if pad is None else pad  # any id: padding is masked out
        self.warpers = LogitsProcessorList(
            [TemperatureLogitsWarper(temperature), TopPLogitsWarper(top_p)] if temperature > 0 else []
        )
        self.generated_tokens = 0  # new tokens written (end tokens not counted), for tokens/s
        self._prefix: tuple[tuple[int, ...], DynamicCache | None] = ((), None)  # the last prefix and its cache

    def complete(self, prompts: list[str], seed: int = 0) -> list[str]:
        return self.tokenizer.batch_decode(self.complete_tokens(prompts, seed), skip_special_tokens=True)

    @torch.no_grad()
    def complete_tokens(self, prompts: list[str], seed: int = 0) -> list[list[int]]:
        """The new token ids of each prompt's completion, without the end token."""
        if not prompts:
            return []
        token_lists = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        prefix_length = shared_prefix_length(token_lists)
        prefix_cache = self._prefix_cache(tuple(token_lists[0][:prefix_length]))
        # Prompts of similar length enter together: less padding in each admission's first step.
        pending = sorted(range(len(prompts)), key=lambda i: len(token_lists[i]))
        suffixes = [tokens[prefix_length:] for tokens in token_lists]
        completions: list[list[int]] = [[] for _ in prompts]
        # One generator per prompt, seeded by (call seed, prompt index): sampling is independent of batching.
        generators = {}
        if self.temperature > 0:
            generators = {row: torch.Generator(self.model.device).manual_seed(seed * 1_000_003 + row)
                          for row in range(len(prompts))}
        batch = _Batch()
        # Slots are refilled in groups: each admission is a forward pass that reads all the weights once.
        refill_at = max(1, self.batch_size // 4)
        while pending or batch.rows:
            free = self.batch_size - len(batch.rows)
            if pending and (not batch.rows or (self.refill and free >= refill_at)):
                admitted, pending = pending[:free], pending[free:]
                batch.merge(self._admit([suffixes[row] for row in admitted], admitted, prefix_cache, prefix_length))
            tokens = self._next_tokens(batch.logits, [generators[row] for row in batch.rows] if generators else None)
            ended = torch.isin(tokens, self.end_token_ids).tolist()
            for index, (row, token) in enumerate(zip(batch.rows, tokens.tolist())):
                if not ended[index]:
                    completions[row].append(token)
                    ended[index] = len(completions[row]) == self.max_new_tokens
            if any(ended):  # they leave the batch and the cache: no more cost
                batch.select([index for index, row_ended in enumerate(ended) if not row_ended])
                tokens = tokens[[index for index, row_ended in enumerate(ended) if not row_ended]]
            if batch.rows:
                batch.key_mask = torch.cat([batch.key_mask, batch.key_mask.new_ones((len(batch.rows), 1))], dim=1)
                batch.logits = self._forward(tokens[:, None], batch.positions[:, None], batch.key_mask, batch.cache,
                                             prefix_cache)
                batch.positions = batch.positions + 1
        self.generated_tokens += sum(len(tokens) for tokens in completions)
        return completions

    def _prefix_cache(self, prefix: tuple[int, ...]) -> DynamicCache | None:
        """The KV cache of `prefix` for one row (None for an empty prefix), computed once per distinct prefix."""
        if prefix != self._prefix[0]:
            cache = None
            if prefix:
                cache = DynamicCache(config=self.model.config)
                self.model(input_ids=torch.tensor([prefix], device=self.model.device), cache=cache, use_cache=True,
                           logits_to_keep=1)
            self._prefix = (prefix, cache)
        return self._prefix[1]

    def _next_tokens(self, logits: torch.Tensor, generators: list[torch.Generator] | None) -> torch.Tensor:
        if generators is None:
            return logits.argmax(dim=-1)
        probabilities = self.warpers(None, logits).softmax(dim=-1)
        return torch.cat([
            torch.multinomial(row_probabilities, 1, generator=generator)
            for row_probabilities, generator in zip(probabilities, generators)
        ])

    def _forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, key_mask: torch.Tensor,
                 cache: DynamicCache, prefix_cache: DynamicCache | None) -> torch.Tensor:
        """Last-position logits of `input_ids` (at `position_ids`) over `cache`; `key_mask` marks the real tokens of
        the cache plus the input, without the prefix when it is shared."""
        if not (self.shared_prefix_attention and prefix_cache is not None):
            return self.model(input_ids=input_ids, attention_mask=key_mask.long(), position_ids=position_ids,
                              cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1].float()
        query_length, key_length = input_ids.shape[1], key_mask.shape[1]
        causal = torch.ones(query_length, key_length, dtype=torch.bool, device=key_mask.device).tril(
            key_length - query_length)
        mask = key_mask[:, None, None, :] & causal  # [batch, 1, query, keys]: a 4D mask goes to attention as is
        return self.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, cache=cache,
                          use_cache=True, logits_to_keep=1, shared_prefix_cache=prefix_cache).logits[:, -1].float()

    def _admit(self, suffixes: list[list[int]], rows: list[int], prefix_cache: DynamicCache | None,
               prefix_length: int) -> "_Batch":
        """Prompts `prefix + suffix` run up to their first new token's logits, as a batch of their own."""
        device, batch = self.model.device, len(suffixes)
        width = max(len(suffix) for suffix in suffixes)
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        suffix_mask = torch.zeros((batch, width), dtype=torch.bool)
        for index, suffix in enumerate(suffixes):  # left padding: every row's last token is the last column
            input_ids[index, width - len(suffix) :] = torch.tensor(suffix)
            suffix_mask[index, width - len(suffix) :] = True
        input_ids, suffix_mask = input_ids.to(device), suffix_mask.to(device)
        # Positions count real tokens only, as with plain left padding; padding slots are masked, any position will do.
        position_ids = prefix_length + (suffix_mask.long().cumsum(-1) - 1).clamp(min=0)
        cache, key_mask = DynamicCache(config=self.model.config), suffix_mask
        if prefix_cache is not None and not self.shared_prefix_attention:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(batch)
            key_mask = torch.cat([suffix_mask.new_ones((batch, prefix_length)), suffix_mask], dim=1)
        logits = self._forward(input_ids, position_ids, key_mask, cache, prefix_cache)
        return _Batch(list(rows), cache, key_mask, position_ids[:, -1] + 1, logits)


class _Batch:
    """The rows being decoded: their ids, KV cache (right-aligned: every row's newest token is the last column),
    which cache columns are real tokens, the position and the logits of each row's next token."""

    def __init__(self, rows: list[int] | None = None, cache: DynamicCache | None = None,
                 key_mask: torch.Tensor | None = None, positions: torch.Tensor | None = None,
                 logits: torch.Tensor | None = None) -> None:
        self.rows, self.cache, self.key_mask = rows or [], cache, key_mask
        self.positions, self.logits = positions, logits

    def merge(self, other: "_Batch") -> None:
        """Append `other`'s rows; the shorter cache is padded on the left (masked) to the longer's length."""
        if not self.rows:
            self.rows, self.cache, self.key_mask = other.rows, other.cache, other.key_mask
            self.positions, self.logits = other.positions, other.logits
            return
        length = max(self.key_mask.shape[1], other.key_mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([_pad_left(mine.keys, length, 2), _pad_left(theirs.keys, length, 2)])
            mine.values = torch.cat([_pad_left(mine.values, length, 2), _pad_left(theirs.values, length, 2)])
        self.key_mask = torch.cat([_pad_left(self.key_mask, length, 1), _pad_left(other.key_mask, length, 1)])
        self.rows = self.rows + other.rows
        self.positions = torch.cat([self.positions, other.positions])
        self.logits = torch.cat([self.logits, other.logits])

    def select(self, kept: list[int]) -> None:
        """Keep the rows at indices `kept`, and drop cache columns no kept row attends to (padding on the left)."""
        self.rows = [self.rows[index] for index in kept]
        if not kept:
            return
        index = torch.tensor(kept, device=self.key_mask.device)
        self.cache.batch_select_indices(index)
        self.key_mask, self.positions = self.key_mask[index], self.positions[index]
        first = int(self.key_mask.any(dim=0).long().argmax())
        if first:
            self.key_mask = self.key_mask[:, first:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]


def _pad_left(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if not missing:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def load_prefix_cached_engine(model: str, tokenizer: "PreTrainedTokenizerBase", device: torch.device, *,
                              gguf_file: str | None = None, adapter: str | None = None, load_in_4bit: bool = False,
                              dtype: torch.dtype | None = None, **engine_kwargs) -> PrefixCachedEngine:
    """The generator LLM loaded for fast generation on `device` and its engine.

    `dtype` defaults to `generation_dtype(device)`. A LoRA adapter on full-precision weights is merged into them (in
    fp32, before any cast): an unmerged LoRA adds two small matmuls to every linear layer of every decoding step.
    On 4-bit weights it stays separate, as merging would round it into the NF4 blocks.
    """
    dtype = dtype or generation_dtype(device)
    if load_in_4bit:
        device_map = {"": device} if device.type != "cpu" else None
        language_model = load_causal_lm(model, gguf_file, True, dtype=dtype, adapter=adapter, device_map=device_map)
    else:
        # Loaded in fp32 and cast: GGUF weights are dequantised either way, and loading one in bf16 prints a
        # warning about packed kernels that does not apply to these dequantised weights.
        language_model = load_causal_lm(model, gguf_file, dtype=torch.float32, adapter=adapter)
        if adapter:
            language_model = language_model.merge_and_unload()
        language_model.to(device=device, dtype=dtype)
    return PrefixCachedEngine(language_model, tokenizer, **engine_kwargs)
