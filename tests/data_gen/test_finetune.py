"""QLoRA on CPU: a tiny random llama loaded in 4-bit NF4, LoRA-tuned with TRL for a few steps, then used to
generate."""

import json
import os

import pytest
from datasets import load_dataset
from PIL import Image as PILImage

from data_gen.finetune import main as finetune_main
from data_gen.finetune import sft_examples
from data_gen.generate import main as generate_main
from data_gen.models import load_causal_lm, load_tokenizer


def test_sft_examples_are_prompt_completion_pairs(tiny_llm):
    tokenizer = load_tokenizer(tiny_llm)
    triplet = {"caption": "a red car", "modification": "make the car blue", "modified_caption": "a blue car"}
    (one_step,) = sft_examples([triplet], tokenizer)
    assert one_step["prompt"].endswith("Caption: a red car\n\n### Assistant\n")
    assert one_step["completion"] == "Modification: make the car blue\nModified caption: a blue car"
    first, second = sft_examples([triplet], tokenizer, prompt_style="two_step")
    assert first["completion"] == "Modification: make the car blue"
    assert (
        "Modification: make the car blue" in second["prompt"]
        and second["completion"] == "Modified caption: a blue car"
    )


def test_sft_examples_ask_for_the_triplets_kind_unless_told_not_to(tiny_llm):
    tokenizer = load_tokenizer(tiny_llm)
    triplet = {"caption": "a red car", "modification": "make the car blue", "modified_caption": "a blue car",
               "kind": "colour"}
    (with_kind,) = sft_examples([triplet], tokenizer)
    assert with_kind["prompt"].endswith("Caption: a red car\nKind of change: colour\n\n### Assistant\n")
    (without,) = sft_examples([triplet], tokenizer, kinds=False)
    assert "Kind of change" not in without["prompt"]
    first, second = sft_examples([triplet], tokenizer, prompt_style="two_step")
    assert "Kind of change: colour" in first["prompt"] and "Kind of change" not in second["prompt"]


def test_read_triplets_rejects_an_unknown_kind(tmp_path):
    from data_gen.finetune import read_triplets

    path = tmp_path / "kinds.jsonl"
    path.write_text('{"caption": "a cat", "modification": "make it red", "modified_caption": "a red cat", '
                    '"kind": "hue"}\n')
    with pytest.raises(ValueError, match="kinds.jsonl:1: kind of change must be one of"):
        read_triplets([str(path)])


def test_qlora_finetune_then_generate_then_load_dataset(tiny_llm, image_folder, tmp_path):
    adapter = tmp_path / "adapter"
    train_file = tmp_path / "train.jsonl"
    seeds = open(os.path.join(os.path.dirname(__file__), "..", "..", "data_gen", "seed_triplets.jsonl")).readlines()
    train_file.write_text("".join(seeds[:40]))
    finetune_main([
        "--model", tiny_llm, "--train_file", str(train_file), "--output_dir", str(adapter),
        "--max_steps", "3", "--per_device_train_batch_size", "4", "--logging_steps", "1",
        "--prompt_style", "two_step", "--held_out_fraction", "0.1", "--merge", "--load_in_4bit",
    ])  # fmt: skip
    assert {
        "adapter_config.json", "adapter_model.safetensors", "data_gen_prompt.json", "held_out.jsonl",
        "training_args.json", "tokenizer_config.json",
    } <= set(os.listdir(adapter))
    assert not [name for name in os.listdir(adapter) if name.endswith((".bin", ".pt", ".pkl"))]  # nothing pickled
    prompt_config = json.load(open(adapter / "data_gen_prompt.json"))
    assert prompt_config["prompt_style"] == "two_step" and prompt_config["kinds"] is True  # the seeds have kinds
    assert len(open(adapter / "held_out.jsonl").readlines()) == 4

    # The base really was 4-bit, and LoRA weights moved: the adapter's B matrices start at zero.
    base = load_causal_lm(tiny_llm, load_in_4bit=True, adapter=str(adapter))
    assert type(base.base_model.model.model.layers[0].mlp.up_proj.base_layer).__name__ == "Linear4bit"
    lora_b = [p for name, p in base.named_parameters() if "lora_B" in name]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)

    # Merged checkpoint (full precision base + adapter) loads as a plain model.
    merged = load_causal_lm(str(adapter / "merged"))
    assert not any("lora" in name for name, _ in merged.named_parameters())

    output_dir = tmp_path / "triplets"
    generate_main([
        "--image_folder", image_folder, "--output_dir", str(output_dir), "--model", tiny_llm,
        "--adapter", str(adapter), "--load_in_4bit", "--max_new_tokens", "12", "--fallback", "templates",
    ])  # fmt: skip
    triplets = load_dataset(str(output_dir), split="train")
    assert list(triplets.features) == [
        "id", "image", "caption", "modification", "modified_caption", "source", "generator", "kind"
    ]
    assert len(triplets) == 24 and isinstance(triplets[0]["image"], PILImage.Image)
    card = open(output_dir / "README.md").read()
    assert "with LoRA adapter" in card and "`two_step`" in card  # prompt settings came from the adapter
    assert "Kind of change:" in card  # and so did asking for kinds


def test_finetune_rejects_an_unknown_prompt_style(tiny_llm, tmp_path):
    with pytest.raises(ValueError, match="--prompt_style must be one of"):
        finetune_main(["--model", tiny_llm, "--output_dir", str(tmp_path), "--prompt_style", "three_step"])
