"""Fast batched generation with transformers: the shared prompt prefix is computed once, finished rows stop costing.

Every prompt of a run starts with the same instruction (and in-prompt examples): for SmolLM2 3-shot, 217 of ~230
tokens. Plain batched `generate` recomputes that prefix for every row of every batch, and keeps decoding rows that
have already ended until the longest one ends. `PrefixCachedEngine` instead

1. tokenizes each prompt whole and takes the longest token prefix all prompts share (so the tokens are exactly the
   ones `generate` would see), runs it once, and keeps its KV cache (a `DynamicCache`) for later calls;
2. per batch, copies that cache, repeats it for every row and runs only the rows' own tokens (left-padded between
   the prefix and the row, with the padding masked out and positions counted without it);
3. decodes step by step and drops a row from the batch (and the cache) as soon as it writes an end token.

Under greedy decoding the tokens are those of one-prompt-at-a-time `generate` (same positions, same attended tokens;
floating-point sums may be ordered differently, which in bf16 can change a near-tie). Sampling draws each row from
its own seeded generator, so a row's completion does not depend on the batch size or on the other rows.
"""

import copy
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache
from transformers.generation.logits_process import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from .models import load_causal_lm

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# /proc/cpuinfo flag of CPUs whose bf16 matmuls beat fp32 for SmolLM2's generation: AMX tiles. AVX512-BF16 alone is
# not enough: on an AMD EPYC (Zen 4) with it and without AMX, bf16 decoded 86 tokens/s against fp32's 96
# (bench/bench_generation.py --speed_only, 32 captions, batch 32), while on an AMX Xeon bf16 was twice fp32.
CPU_BF16_FLAGS = ("amx_bf16",)


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 fast enough to pay (AMX) and torch can use it (oneDNN)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        with open("/proc/cpuinfo") as handle:
            flags = {flag for line in handle if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    except OSError:  # not Linux: no flags to read, so no claim of bf16 either
        return False
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def generation_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on GPUs that support it and on CPUs with AMX (2x fp32's speed for SmolLM2 there), else fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_bf16() else torch.float32
    return torch.float32


def shared_prefix_length(token_lists: list[list[int]]) -> int:
    """Tokens every list starts with, leaving at least one token per list: the last prompt token is run with the
    row, because its logits choose the first new token."""
    shortest = min(len(tokens) for tokens in token_lists)
    length = 0
    while length < shortest - 1 and all(tokens[length] == token_lists[0][length] for tokens in token_lists):
        length += 1
    return length


class PrefixCachedEngine:
    """Prompts in, completions out (the interface of `generate.TransformersEngine`), with the prefix KV cache reused,
    finished rows dropped between steps and prompts batched by length. Greedy when temperature is 0."""

    def __init__(self, model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", batch_size: int = 32,
                 max_new_tokens: int = 48, temperature: float = 0.0, top_p: float = 0.9,
                 drop_finished_rows: bool = True) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.drop_finished_rows = drop_finished_rows  # False only to measure what dropping them saves
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
        # Rows of similar length together: less padding in each batch's first step.
        order = sorted(range(len(prompts)), key=lambda i: len(token_lists[i]))
        completions: list[list[int]] = [[] for _ in prompts]
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            # One generator per prompt, seeded by (call seed, prompt index): sampling is independent of batching.
            generators = None
            if self.temperature > 0:
                generators = [
                    torch.Generator(self.model.device).manual_seed(seed * 1_000_003 + row) for row in rows
                ]
            new_tokens = self._generate_batch([token_lists[row][prefix_length:] for row in rows], prefix_cache,
                                              prefix_length, generators)
            for row, tokens in zip(rows, new_tokens):
                completions[row] = tokens
            self.generated_tokens += sum(len(tokens) for tokens in new_tokens)
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

    def _generate_batch(self, suffixes: list[list[int]], prefix_cache: DynamicCache | None, prefix_length: int,
                        generators: list[torch.Generator] | None) -> list[list[int]]:
        """New tokens per row (without the end token) for prompts `prefix + suffix`, the prefix already cached."""
        device, batch = self.model.device, len(suffixes)
        width = max(len(suffix) for suffix in suffixes)
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, prefix_length + width), dtype=torch.long)
        attention_mask[:, :prefix_length] = 1
        for row, suffix in enumerate(suffixes):
            input_ids[row, width - len(suffix) :] = torch.tensor(suffix)
            attention_mask[row, prefix_length + width - len(suffix) :] = 1
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        # Positions count real tokens only, as with plain left padding; padding slots are masked, any position will do.
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, prefix_length:]
        cache = DynamicCache(config=self.model.config)
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(batch)
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1].float()
        positions = position_ids[:, -1:] + 1
        active = torch.arange(batch, device=device)  # rows in the batch, as indices into `suffixes`
        finished = torch.zeros(batch, dtype=torch.bool, device=device)  # rows kept in the batch after their end
        new_tokens: list[list[int]] = [[] for _ in suffixes]
        for step in range(self.max_new_tokens):
            step_generators = None if generators is None else [generators[row] for row in active.tolist()]
            tokens = self._next_tokens(logits, step_generators)
            finished = finished | torch.isin(tokens, self.end_token_ids)
            for row, token, row_finished in zip(active.tolist(), tokens.tolist(), finished.tolist()):
                if not row_finished:
                    new_tokens[row].append(token)
            if step == self.max_new_tokens - 1 or bool(finished.all()):
                break
            if self.drop_finished_rows and bool(finished.any()):  # they leave the batch and the cache: no more cost
                keep = (~finished).nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                active, tokens, positions, finished = active[keep], tokens[keep], positions[keep], finished[keep]
                attention_mask = attention_mask[keep]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(active), 1))], dim=1)
            logits = self.model(input_ids=tokens[:, None], attention_mask=attention_mask, position_ids=positions,
                                cache=cache, use_cache=True).logits[:, -1].float()
            positions = positions + 1
        return new_tokens


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
