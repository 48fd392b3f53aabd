import pytest
import torch

from data_gen import fast_generation
from data_gen.fast_generation import PrefixCachedEngine, load_prefix_cached_engine, shared_prefix_length
from data_gen.models import load_causal_lm, load_tokenizer
from data_gen.prompts import build_messages, render_prompt

# Captions of different lengths: the prompts share the instruction and examples, then differ in length.
CAPTIONS = [
    "a dog",
    "a brown dog running on the beach with a red ball in its mouth",
    "two cats",
    "a man wearing a blue shirt and a straw hat",
    "an old bicycle",
]
MAX_NEW_TOKENS = 16


def _prompts(tokenizer):
    return [render_prompt(tokenizer, build_messages(caption, num_shots=2)) for caption in CAPTIONS]


def _plain_generate(model, tokenizer, prompts):
    """One prompt at a time through `generate` (no padding at all): the reference tokens, end token dropped."""
    end_tokens = model.generation_config.eos_token_id
    end_tokens = set(end_tokens if isinstance(end_tokens, list) else [end_tokens])
    outputs = []
    for prompt in prompts:
        input_ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        generated = model.generate(input_ids, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                   pad_token_id=tokenizer.pad_token_id)[0, input_ids.shape[1] :].tolist()
        end = next((i for i, token in enumerate(generated) if token in end_tokens), len(generated))
        outputs.append(generated[:end])
    return outputs


def _end_rows_early(model, tokenizer):
    """More end tokens, chosen so that rows end at different steps and the first never does (a random model never
    writes its real end token): each other row's first token no other row writes."""
    model.generation_config.eos_token_id = [tokenizer.eos_token_id]
    free_running = _plain_generate(model, tokenizer, _prompts(tokenizer))
    end_tokens = [tokenizer.eos_token_id]
    for row, tokens in enumerate(free_running[1:], 1):
        others = {token for other, other_tokens in enumerate(free_running) if other != row for token in other_tokens}
        end_tokens += [token for token in tokens if token not in others][:1]
    model.generation_config.eos_token_id = end_tokens
    return model, tokenizer


@pytest.fixture
def early_ending_llm(tiny_llm):
    """The tiny random llama in fp32, its rows ending at different steps."""
    return _end_rows_early(load_causal_lm(tiny_llm, dtype=torch.float32), load_tokenizer(tiny_llm))


def test_shared_prefix_leaves_every_prompt_a_token_of_its_own():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert shared_prefix_length([[1, 2], [1, 2, 3]]) == 1  # the shorter prompt keeps its last token
    assert shared_prefix_length([[7, 8, 9]]) == 2
    assert shared_prefix_length([[1, 2], [3, 4]]) == 0


@pytest.mark.parametrize("refill", [True, False])
@pytest.mark.parametrize("shared_prefix_attention", [True, False])
def test_prefix_cached_greedy_tokens_are_plain_generate_tokens(early_ending_llm, refill, shared_prefix_attention):
    model, tokenizer = early_ending_llm
    prompts = _prompts(tokenizer)
    expected = _plain_generate(model, tokenizer, prompts)
    lengths = [len(tokens) for tokens in expected]
    assert len(set(lengths)) >= 3 and max(lengths) == MAX_NEW_TOKENS  # rows end at different steps, some never
    assert len({len(tokenizer(prompt)["input_ids"]) for prompt in prompts}) == len(prompts)

    # Batches of 3 for 5 prompts: rows end at different steps and (with refill) new prompts take their slots.
    engine = PrefixCachedEngine(model, tokenizer, batch_size=3, max_new_tokens=MAX_NEW_TOKENS, refill=refill,
                                shared_prefix_attention=shared_prefix_attention)
    calls = _count_shared_prefix_calls(model)
    assert engine.complete_tokens(prompts) == expected
    # The rows did attend to the one stored prefix (one call per layer and step), or never did when switched off.
    assert (calls.count > 0) == shared_prefix_attention
    assert engine.generated_tokens == sum(lengths)
    assert engine._prefix[0] and len(engine._prefix[0]) > len(tokenizer(prompts[0])["input_ids"]) // 2
    # A second call reuses the cached prefix and gives the same texts plain decoding gives.
    assert engine.complete(prompts) == tokenizer.batch_decode(expected, skip_special_tokens=True)


def _count_shared_prefix_calls(model):
    """Wrap the model's registered attention function to count the calls that attend to a stored prefix."""
    from transformers import AttentionInterface

    class Counter:
        count = 0

    def counting(module, *args, shared_prefix_cache=None, **kwargs):
        Counter.count += shared_prefix_cache is not None
        return fast_generation.shared_prefix_attention(module, *args, shared_prefix_cache=shared_prefix_cache,
                                                       **kwargs)

    AttentionInterface.register("scot_test_counting", counting)
    if model.config._attn_implementation == fast_generation.SHARED_PREFIX_ATTENTION:
        model.set_attn_implementation("scot_test_counting")
    return Counter


def test_models_off_the_attention_interface_get_the_prefix_copied_per_row(tmp_path):
    """Falcon (the paper's generator family) has no attention-interface support: the engine copies the prefix cache
    for every row instead, with the same greedy tokens as plain `generate`."""
    from tests.data_gen.tiny_llm import build_tiny_falcon

    folder = build_tiny_falcon(tmp_path / "falcon")
    model, tokenizer = _end_rows_early(load_causal_lm(folder, dtype=torch.float32), load_tokenizer(folder))
    prompts = _prompts(tokenizer)
    expected = _plain_generate(model, tokenizer, prompts)
    engine = PrefixCachedEngine(model, tokenizer, batch_size=3, max_new_tokens=MAX_NEW_TOKENS)
    assert not engine.shared_prefix_attention
    assert engine.complete_tokens(prompts) == expected


def test_sampling_is_seeded_per_prompt_whatever_the_batching(tiny_llm):
    model, tokenizer = load_causal_lm(tiny_llm, dtype=torch.float32), load_tokenizer(tiny_llm)
    prompts = _prompts(tokenizer)

    def sample(batch_size, seed):
        engine = PrefixCachedEngine(model, tokenizer, batch_size, max_new_tokens=8, temperature=1.0, top_p=0.9)
        return engine.complete(prompts, seed)

    assert sample(2, seed=5) == sample(5, seed=5)
    assert sample(2, seed=5) != sample(2, seed=6)


def test_loaded_engine_merges_the_adapter_and_keeps_its_tokens(tiny_llm, tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    # init_lora_weights=False: random A and B, so the adapter does change the answers.
    lora = get_peft_model(load_causal_lm(tiny_llm, dtype=torch.float32),
                          LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    tokenizer = load_tokenizer(tiny_llm)
    prompts = _prompts(tokenizer)
    unmerged = load_causal_lm(tiny_llm, dtype=torch.float32, adapter=str(tmp_path / "adapter"))
    with_adapter = _plain_generate(unmerged, tokenizer, prompts)
    assert with_adapter != _plain_generate(load_causal_lm(tiny_llm, dtype=torch.float32), tokenizer, prompts)

    engine = load_prefix_cached_engine(tiny_llm, tokenizer, torch.device("cpu"), adapter=str(tmp_path / "adapter"),
                                       dtype=torch.float32, batch_size=4, max_new_tokens=MAX_NEW_TOKENS)
    assert not any("lora" in name for name, _ in engine.model.named_modules())  # merged into plain linear layers
    assert engine.complete_tokens(prompts) == with_adapter


def test_generation_dtype_is_fp32_on_cpus():
    # bf16 decodes slower than fp32 on the CPUs measured, AMX included (docs/data_gen.md)
    assert fast_generation.generation_dtype("cpu") == torch.float32


def test_generate_builds_the_prefix_cached_engine_from_its_arguments(tiny_llm, monkeypatch):
    from dataclasses import replace

    from data_gen.generate import GenerationArguments, build_generator

    monkeypatch.setattr(fast_generation, "generation_dtype", lambda device: torch.float32)  # as the other engine
    args = GenerationArguments(output_dir="unused", model=tiny_llm, engine="prefix_cache", batch_size=3,
                               max_new_tokens=MAX_NEW_TOKENS, prompt_style="two_step", num_shots=2)
    generator, prompt_style, num_shots = build_generator(args, torch.device("cpu"))
    engine = generator.engine
    assert isinstance(engine, PrefixCachedEngine) and (prompt_style, num_shots) == ("two_step", 2)
    assert (engine.batch_size, engine.max_new_tokens, engine.model.dtype) == (3, MAX_NEW_TOKENS, torch.float32)
    reference = build_generator(replace(args, engine="transformers"), torch.device("cpu"))[0]
    prompts = [generator.prompt(caption, "modification") for caption in CAPTIONS]
    assert engine.complete(prompts) == reference.engine.complete(prompts)
