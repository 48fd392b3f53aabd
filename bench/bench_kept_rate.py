"""Kept rate of tuned generators on held-out seed captions, with and without the `change_not_shown` filter. Each
adapter runs on the base model it was tuned on (SmolLM2, or another GGUF/hub model given to `data_gen.finetune
--model`).

The held-out captions are those `data_gen.finetune --held_out_fraction F` keeps out (same split: `split_triplets`
with seed 0 over the packaged seed triplets). `--exclude_captions FILE` drops the captions of another seed file (an
older adapter was trained on all of those), so that every adapter is measured on captions it never saw. Each adapter
is prompted as it was tuned (its `data_gen_prompt.json`: prompt style, in-prompt examples, kinds); where it asks for
kinds, they are drawn as generation draws them. Greedy decoding through the prefix-cached engine (as the demo runs).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python bench/bench_kept_rate.py --adapter before=OLD_ADAPTER \\
        --adapter after=outputs/generator-lora --held_out_fraction 0.15 --output_dir outputs/bench_kept_rate

Figures go to stdout and OUTPUT_DIR/results.json.
"""

import argparse
import json
import os
import time
from collections import Counter

import torch

from data_gen.fast_generation import load_prefix_cached_engine
from data_gen.finetune import SEED_TRIPLETS, read_triplets, split_triplets
from data_gen.generate import TripletGenerator
from data_gen.models import load_tokenizer, read_prompt_config
from data_gen.prompts import TripletFilter, change_shown, normalize
from data_gen.sources import CaptionRow


def base_model(adapter: str) -> str:
    """The base model an adapter was tuned on (peft records it: for a GGUF base, the dequantised folder), where it
    is on this machine; else the packaged SmolLM2."""
    with open(os.path.join(adapter, "adapter_config.json")) as handle:
        recorded = json.load(handle).get("base_model_name_or_path")
    return recorded if recorded and os.path.isfile(os.path.join(recorded, "config.json")) else "smollm2"


def kept_rate(name: str, adapter: str, captions: list[str], max_new_tokens: int, batch_size: int) -> dict:
    prompt_config = read_prompt_config(adapter) or {}
    model = base_model(adapter)
    tokenizer = load_tokenizer(model)
    engine = load_prefix_cached_engine(model, tokenizer, torch.device("cpu"), adapter=adapter,
                                       batch_size=batch_size, max_new_tokens=max_new_tokens)
    # The filters before `change_not_shown`: what was kept before, and which of those the new check rejects.
    generator = TripletGenerator(engine, tokenizer, prompt_config.get("prompt_style", "one_step"),
                                 prompt_config.get("num_shots", 0), name,
                                 triplet_filter=TripletFilter(require_change_shown=False),
                                 kinds=bool(prompt_config.get("kinds", False)))
    rows = [CaptionRow(str(i), caption, i) for i, caption in enumerate(captions)]
    started = time.perf_counter()
    kept, rejections = generator.generate(rows)
    seconds = time.perf_counter() - started
    shown = [triplet for triplet in kept if change_shown(triplet.row.caption, triplet.modification,
                                                         triplet.modified_caption)]
    return {
        "generator": name,
        "base_model": model,
        "adapter": adapter,
        "prompt_config": prompt_config,
        "captions": len(rows),
        "kept_without_change_shown": len(kept),
        "kept": len(shown),
        "acceptance_without_change_shown": round(len(kept) / len(rows), 3),
        "acceptance": round(len(shown) / len(rows), 3),
        "rejections": {**rejections.as_dict(), "change_not_shown": len(kept) - len(shown)},
        "kept_by_kind_asked": dict(Counter(triplet.kind or "none" for triplet in shown)),
        "seconds": round(seconds, 1),
        "examples": [
            {"caption": t.row.caption, "kind": t.kind, "modification": t.modification,
             "modified_caption": t.modified_caption, "change_shown": t in shown}
            for t in kept[:12]
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", action="append", required=True, help="NAME=FOLDER of a tuned LoRA adapter.")
    parser.add_argument("--held_out_fraction", type=float, default=0.15)
    parser.add_argument("--exclude_captions", default=None, help="Seed file whose captions are left out.")
    parser.add_argument("--max_captions", type=int, default=None)
    parser.add_argument("--max_new_tokens", type=int, default=40)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--output_dir", default="outputs/bench_kept_rate")
    args = parser.parse_args()

    _, held_out = split_triplets(read_triplets([SEED_TRIPLETS]), args.held_out_fraction, seed=0)
    excluded = set()
    if args.exclude_captions:
        excluded = {normalize(triplet["caption"]) for triplet in read_triplets([args.exclude_captions])}
    captions = [triplet["caption"] for triplet in held_out if normalize(triplet["caption"]) not in excluded]
    captions = captions[: args.max_captions]
    results = {"torch_threads": torch.get_num_threads(), "held_out_fraction": args.held_out_fraction,
               "excluded_captions_of": args.exclude_captions, "runs": []}
    for entry in args.adapter:
        name, _, folder = entry.partition("=")
        run = kept_rate(name, folder, captions, args.max_new_tokens, args.batch_size)
        results["runs"].append(run)
        print(f"{name}: kept {run['kept']}/{run['captions']} ({run['acceptance']:.1%}); without change_not_shown "
              f"{run['kept_without_change_shown']} ({run['acceptance_without_change_shown']:.1%}); "
              f"rejections {run['rejections']}; {run['seconds']} s", flush=True)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "results.json"), "w") as handle:
        json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
