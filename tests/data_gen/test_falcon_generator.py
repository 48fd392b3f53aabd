"""The paper's generator family (§4.2: LoRA on a 4-bit Falcon-7B-instruct), shrunk: a tiny random
`FalconForCausalLM` loaded in 4-bit NF4, LoRA-tuned with TRL's SFTTrainer for a few steps on CPU through
`data_gen.finetune`, then generating triplets through `data_gen.generate` (as test_finetune.py does for the llama)."""

import json
import os

import pytest
import torch
from bitsandbytes.nn import Linear4bit
from datasets import load_dataset

from data_gen.finetune import FinetuneArguments, finetune
from data_gen.generate import GenerationArguments, build_generator
from data_gen.generate import main as generate_main
from data_gen.models import load_causal_lm, load_tokenizer
from data_gen.prompts import build_messages, render_prompt
from data_gen.sources import CaptionRow

from .tiny_llm import build_tiny_falcon

SEED_TRIPLETS = os.path.join(os.path.dirname(__file__), "..", "..", "data_gen", "seed_triplets.jsonl")
TRAIN_TRIPLETS = 8  # one batch: every step sees the same examples, so the loss curve is not batch-to-batch noise
STEPS = 6


@pytest.fixture(scope="module")
def tiny_falcon(tmp_path_factory):
    return build_tiny_falcon(tmp_path_factory.mktemp("tiny-falcon"))


@pytest.fixture(scope="module")
def tuned_falcon(tiny_falcon, tmp_path_factory):
    """(trainer, adapter folder) after a few QLoRA steps on 8 seed triplets, through `data_gen.finetune`."""
    folder = tmp_path_factory.mktemp("falcon-qlora")
    train_file = folder / "train.jsonl"
    with open(SEED_TRIPLETS, encoding="utf-8") as handle:
        train_file.write_text("".join(handle.readlines()[:TRAIN_TRIPLETS]), encoding="utf-8")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: a second OpenMP thread only costs (see conftest.one_torch_thread)
    try:
        trainer = finetune(FinetuneArguments(
            output_dir=str(folder / "adapter"), model=tiny_falcon, train_file=[str(train_file)], max_steps=STEPS,
            per_device_train_batch_size=TRAIN_TRIPLETS, learning_rate=1e-2, lora_dropout=0.0, logging_steps=1,
            load_in_4bit=True,  # QLoRA, as the paper (the CPU default is full precision)
        ))  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return trainer, folder / "adapter"


def _base_name(name: str) -> str:
    """A LoRA-wrapped model's parameter name as the plain model names it."""
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def test_falcon_loads_in_4bit_nf4_and_only_lora_weights_train(tiny_falcon, tuned_falcon):
    trainer, adapter = tuned_falcon
    model = trainer.model
    assert type(model.get_base_model()).__name__ == "FalconForCausalLM"
    # Every linear layer of the blocks is a bitsandbytes 4-bit NF4 layer under its LoRA wrapper.
    block = model.get_base_model().transformer.h[0]
    for name in ("self_attention.query_key_value", "self_attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"):
        layer = block.get_submodule(name)
        assert isinstance(layer.base_layer, Linear4bit), name
        assert layer.base_layer.weight.quant_type == "nf4" and layer.base_layer.weight.dtype == torch.uint8

    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    assert trainable and all("lora_A" in name or "lora_B" in name for name in trainable)
    assert len(trainable) == 2 * 4 * 2  # A and B of 4 linear layers in each of the 2 blocks

    # A backward pass reaches the LoRA weights and nothing else.
    tokenizer = load_tokenizer(tiny_falcon, padding_side="right")
    batch = tokenizer([render_prompt(tokenizer, build_messages("a red car", num_shots=0))], return_tensors="pt")
    model.zero_grad(set_to_none=True)
    model(**batch, labels=batch["input_ids"]).loss.backward()
    with_grad = {name for name, parameter in model.named_parameters() if parameter.grad is not None}
    assert with_grad == set(trainable)
    assert all(parameter.grad.abs().sum() > 0 for name, parameter in model.named_parameters() if name in with_grad)
    model.zero_grad(set_to_none=True)

    # The LoRA weights moved (B starts at zero), the quantised base, embeddings and norms did not.
    lora_b = [parameter for name, parameter in model.named_parameters() if "lora_B" in name]
    assert lora_b and all(parameter.abs().sum() > 0 for parameter in lora_b)
    fresh = dict(load_causal_lm(tiny_falcon, load_in_4bit=True, dtype=torch.float32).named_parameters())
    base = {_base_name(name): parameter for name, parameter in model.named_parameters() if "lora_" not in name}
    assert base.keys() == fresh.keys()
    changed = [name for name, parameter in base.items() if not torch.equal(parameter.data, fresh[name].data)]
    assert not changed

    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == tiny_falcon


def test_falcon_sft_loss_decreases(tuned_falcon):
    trainer, _ = tuned_falcon
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == STEPS
    # the same batch every step: after the warm-up step (learning rate 0) each step lowers the loss
    assert all(later < earlier for earlier, later in zip(losses[1:], losses[2:])), losses
    assert losses[-1] < losses[0] - 0.2, losses


@pytest.mark.parametrize("engine", ["transformers", "prefix_cache"])
def test_tuned_falcon_generates_through_data_gen(tiny_falcon, tuned_falcon, image_folder, tmp_path, engine):
    _, adapter = tuned_falcon
    arguments = dict(image_folder=image_folder, model=tiny_falcon, adapter=str(adapter), load_in_4bit=True,
                     max_new_tokens=12, fallback="templates", engine=engine)

    # The Falcon answers every caption: each answer is either kept or counted as a model rejection.
    generator, prompt_style, _ = build_generator(GenerationArguments(output_dir=str(tmp_path / "unused"),
                                                                     **arguments), torch.device("cpu"))
    assert prompt_style == "one_step"  # read from the adapter's data_gen_prompt.json
    assert type(generator.engine.model.get_base_model()).__name__ == "FalconForCausalLM"
    rows = [CaptionRow(id=str(i), caption=caption, key=i) for i, caption in
            enumerate(["a red car parked on a street", "two cats sleeping on a sofa", "a man wearing a blue shirt"])]
    kept, rejections = generator.generate(rows)
    assert generator.engine.generated_tokens > 0
    model_kept = sum(triplet[3] != "templates" for triplet in kept)  # (row, modification, modified, generator, ...)
    model_rejected = sum(count for reason, count in rejections.items() if not reason.startswith("templates_"))
    assert model_kept + model_rejected == len(rows)

    # The whole command: a dataset of triplets (the templates fill in for what the random model got wrong).
    output_dir = tmp_path / "triplets"
    assert generate_main(["--output_dir", str(output_dir)]
                         + [f"--{key}={value}" for key, value in arguments.items() if key != "load_in_4bit"]
                         + ["--load_in_4bit"]) == 0
    triplets = load_dataset(str(output_dir), split="train")
    assert len(triplets) == 24 and set(triplets["generator"]) <= {"templates", f"{os.path.basename(tiny_falcon)}"
                                                                  f"+{adapter.name}"}
    card = (output_dir / "README.md").read_text()
    assert "with LoRA adapter" in card and os.path.basename(tiny_falcon) in card
