"""Tiny random causal LMs and a tokenizer trained on the spot: real models for tests, built offline in a second.

`build_tiny_llm` is a llama (the family of the packaged SmolLM2); `build_tiny_falcon` is the paper's generator
family (Falcon-7B-instruct, §4.2) with the same layout choices: multi-query attention, parallel attention + MLP,
rotary positions, no biases, tied embeddings."""

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    FalconConfig,
    FalconForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedConfig,
    PreTrainedTokenizerFast,
)

from data_gen.prompts import FEW_SHOT_EXAMPLES, INSTRUCTION


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE (512 tokens) trained on the prompt text, with <pad>, <s> and </s>."""
    corpus = [INSTRUCTION, "### System ### User ### Assistant Caption: Modification: Modified caption:"]
    corpus += [" ".join(example) for example in FEW_SHOT_EXAMPLES]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        corpus * 4,
        trainers.BpeTrainer(
            vocab_size=512,
            special_tokens=["<pad>", "<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def _save(folder, model_class: type, config: PreTrainedConfig, tokenizer: PreTrainedTokenizerFast, seed: int) -> str:
    torch.manual_seed(seed)
    model_class(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def build_tiny_llm(folder, seed=0):
    """Save a 2-layer llama (hidden 64) and a byte-level BPE tokenizer to `folder`; return the folder."""
    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return _save(folder, LlamaForCausalLM, config, tokenizer, seed)


def build_tiny_falcon(folder, seed=0):
    """Save a 2-layer Falcon (hidden 64, Falcon-7B's architecture flags) and the same tokenizer to `folder`."""
    tokenizer = build_tiny_tokenizer()
    config = FalconConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        ffn_hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        multi_query=True,
        parallel_attn=True,
        new_decoder_architecture=False,
        alibi=False,
        bias=False,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return _save(folder, FalconForCausalLM, config, tokenizer, seed)
